"""What the running station says about itself: the heartbeat's station part, ``status.json``,
systemd's ``STATUS=`` line and the ``diag/`` dumps.

:func:`report` is the one picture (devices, stages, clock, disk, counters) that the heartbeat,
``status.json`` (read by ``roadside-agent status``) and ``diag/dump.json`` (read by
``roadside-agent diag``) carry. Nothing here changes the station; everything reads it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.provenance import site_facts
from agent.station import sdnotify
from agent.store.files import write_file_atomically
from drivers.scale import Scale

if TYPE_CHECKING:
    from agent.station.supervisor import Station
    from agent.store.retention import Retention


STATUS_FILE = "status.json"


@dataclass
class StageBeat:
    """When a stage last showed it was alive (monotonic seconds)."""

    name: str
    last: float = 0.0
    #: why the stage waits on something a restart does not fix ("disk full"); "" when not
    blocked: str = ""
    blocked_since: str = ""
    #: the stage waits for its input (an event wait, no periodic wake-up): it is not hung
    idle: bool = False

    def age(self, now: float) -> float:
        """Seconds since the stage last showed it was alive; 0 while it waits idle."""
        return 0.0 if self.idle else max(0.0, now - self.last)


@dataclass
class Counters:
    vehicles: int = 0
    stored: int = 0
    store_errors: int = 0
    unmatched_plates: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


def report(station: Station) -> dict[str, Any]:
    """Devices, stages and counters: the heartbeat's and ``status``'s station part.

    Safe before :meth:`Station.start` has finished (what is not there yet is left out).
    """
    now = station.clock.monotonic()
    counters = station.counters
    clock_monitor = getattr(station, "clock_monitor", None)
    return {
        "station_id": station.config.station.id,
        "software_version": __version__,
        "config_hash": station.config.digest,
        "uptime_s": round(now - station.started_mono, 1),
        "devices": devices(station),
        "stages": {n: round(b.age(now), 1) for n, b in station.beats.items()},
        "blocked_stages": {
            n: {"reason": b.blocked, "since": b.blocked_since}
            for n, b in station.beats.items()
            if b.blocked
        },
        "queued_vehicles": station._work.qsize(),
        "clock": clock_monitor.report() if clock_monitor is not None else {"synchronized": None},
        "legal_id": getattr(station, "legal_id", ""),
        "site": site_facts(station.config.station.site),
        "disk": disk(station.data_dir, getattr(station, "retention", None)),
        "vehicles": {
            "seen": counters.vehicles,
            "stored": counters.stored,
            "store_errors": counters.store_errors,
            "unmatched_plates": counters.unmatched_plates,
            "by_status": dict(counters.by_status),
        },
    }


def _health(h: Any) -> dict[str, Any]:
    """A device's state, last good read and last error (scales and cameras alike)."""
    return {
        "state": h.state,
        "last_good_at": h.last_good_at.isoformat() if h.last_good_at else None,
        "last_error": h.last_error,
    }


def devices(station: Station) -> dict[str, Any]:
    """Each scale's, camera's and the plate reader's state and last good read, by device id."""
    out: dict[str, Any] = {}
    for lane_no, scale in station.scales.items():
        out[scale.id] = {
            "kind": "scale",
            "lane": lane_no,
            **_health(scale.health),
            "errors": scale.health.errors,
        }
    for lane_no, cams in station.cameras.items():
        for cam in cams:
            out[cam.id] = {"kind": "camera", "lane": lane_no, "role": cam.role}
            out[cam.id].update(_health(cam.health))
    out["plate-reader"] = {
        "kind": "plate_reader",
        "type": station.config.plate.type,
        "state": "ok" if station.plate_reader is not None else "fault",
        "last_error": station.plate_error,
    }
    return out


def disk(data_dir: Path, retention: Retention | None) -> dict[str, Any]:
    """Free and total bytes of the data directory's file system, and what retention evicted."""
    try:
        usage = shutil.disk_usage(data_dir)
    except OSError as err:
        return {"error": str(err)}
    out: dict[str, Any] = {"free_bytes": usage.free, "total_bytes": usage.total}
    if retention is not None:
        try:
            out["evicted"] = retention.stats()
        except Exception as err:
            out["evicted"] = {"error": str(err)}
    return out


def status_line(station: Station, stale: list[str], vehicles_today: int) -> str:
    """systemd's ``STATUS=``: vehicles today, the queue, the broker and what is wrong."""
    problems = [f"stage {n} hung" for n in stale]
    problems += [
        f"stage {n} BLOCKED: {b.blocked} since {b.blocked_since} ({station._work.qsize()} "
        "vehicles queued)"
        for n, b in station.beats.items()
        if b.blocked
    ]
    for dev_id, dev in devices(station).items():
        if dev.get("state") == "fault":
            problems.append(f"{dev_id} fault")
    pending, broker = 0, "not configured"
    if station.uplink is not None:
        st = station.uplink.stats()
        pending = int(st.get("pending", st.get("queue_depth", 0)) or 0)
        broker = "connected" if st.get("connected") else "NOT connected"
    return sdnotify.status_line(vehicles_today, pending, broker, problems)


def scales_without_reading(scales: Mapping[int, Scale]) -> list[str]:
    """Scales with no good reading yet (systemd READY=1 waits for them, bounded)."""
    return [
        f"scale {s.id} (lane {lane})" for lane, s in scales.items() if s.health.last_good_at is None
    ]


#: status.json is rewritten at least this often while the daemon runs (its "alive" signal for
#: ``roadside-agent status``, which calls a file older than a few of these hung); more often
#: only when something in it changed
STATUS_REFRESH_S = 30.0
#: what changes on every tick by itself: a change of these alone does not rewrite the file
_TICKING = ("written_at", "uptime_s", "stages")
_TICKING_DISK = ("free_bytes",)
_TICKING_UPLINK = ("oldest_unacked_age_s",)


def status_doc(station: Station) -> dict[str, Any]:
    """What ``status.json`` holds: :func:`report` and what ``roadside-agent status`` shows of
    the daemon (pid, running, the last vehicles, the uplink)."""
    doc = report(station)
    doc["written_at"] = station.clock.now().isoformat(timespec="seconds")
    doc["refresh_s"] = STATUS_REFRESH_S
    doc["pid"] = os.getpid()
    doc["running"] = not station.stop_event.is_set()
    doc["last_vehicles"] = station.recent
    doc["diag_dump_signal"] = "SIGUSR1"
    if station.uplink is not None:
        try:
            doc["uplink"] = station.uplink.stats()
        except Exception as err:
            doc["uplink"] = {"error": str(err)}
    return doc


def _what_changed(doc: dict[str, Any], stale_s: float) -> str:
    """``doc`` without what ticks by itself (stages only as which are slow), for comparing."""
    key = {k: v for k, v in doc.items() if k not in _TICKING}
    key["slow_stages"] = sorted(n for n, age in doc.get("stages", {}).items() if age > stale_s)
    for section, ticking in (("disk", _TICKING_DISK), ("uplink", _TICKING_UPLINK)):
        if isinstance(doc.get(section), dict):
            key[section] = {k: v for k, v in doc[section].items() if k not in ticking}
    return json.dumps(key, sort_keys=True, default=str)


class StatusFile:
    """``status.json`` in the data dir, written when its content changed, else every
    :data:`STATUS_REFRESH_S` (not on every tick of the status loop: an idle station wrote it
    every 2 s, 0.3 GB a day on an SD card), without fsync: it is not evidence; temp file and
    rename, so a reader never sees half a file."""

    def __init__(self, path: Path, refresh_s: float = STATUS_REFRESH_S) -> None:
        self.path = path
        self.refresh_s = refresh_s
        self._last = ""
        self._written_mono: float | None = None
        self.writes = 0

    def write(self, station: Station, *, force: bool = False, stale_s: float = 10.0) -> bool:
        """Write the file if it changed, is due, or ``force``; True when written."""
        doc = status_doc(station)
        now = station.clock.monotonic()
        what = _what_changed(doc, stale_s)
        due = self._written_mono is None or now - self._written_mono >= self.refresh_s
        if not force and not due and what == self._last:
            return False
        write_file_atomically(
            self.path, json.dumps(doc, ensure_ascii=False, indent=1).encode(), durable=False
        )
        self._last, self._written_mono = what, now
        self.writes += 1
        return True


def write_status(station: Station) -> None:
    """``status.json`` now, whatever changed (the last one at shutdown)."""
    StatusFile(station.data_dir / STATUS_FILE).write(station, force=True)


def dump_diag(station: Station) -> None:
    """Write ``diag/raw-{device}.log`` (raw frame tails) and ``diag/dump.json``.

    Read by ``roadside-agent diag``; written on SIGUSR1 and at shutdown.
    """
    diag = station.data_dir / "diag"
    for lane_no, scale in station.scales.items():
        h = scale.health
        lines = [
            f"# device {scale.id} lane {lane_no} type {scale.config.type} state {h.state}"
            f" errors {h.errors} last error: {h.last_error}",
            *(frame.hex(" ") for frame in list(scale.raw_tail)),
        ]
        write_file_atomically(diag / f"raw-{scale.id}.log", ("\n".join(lines) + "\n").encode())
    doc = report(station)
    doc["written_at"] = station.clock.now().isoformat(timespec="seconds")
    write_file_atomically(
        diag / "dump.json", json.dumps(doc, ensure_ascii=False, indent=1).encode()
    )
