"""``roadside-agent status``: one screen for a technician: daemon, devices, queue, disk, clock."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.commands._common import add_location_args, format_kg, location_of, open_db


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="one screen: devices, queue, last vehicles, disk, broker",
        description="Show the station's state from its data directory (works whether or not "
        "the daemon is running).",
    )
    add_location_args(p)
    p.set_defaults(func=run)
    return p


def service_state(unit: str = "roadside-agent.service") -> str | None:
    """``systemctl is-active`` of the unit (``None`` where systemd is not running)."""
    import subprocess

    if not shutil.which("systemctl") or not Path("/run/systemd/system").is_dir():
        return None
    try:
        out = subprocess.run(
            ["systemctl", "is-active", unit],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def collect(data_dir: Any) -> dict[str, Any]:
    from agent.store import outbox, readonly

    conn = open_db(data_dir, "status")
    daemon: dict[str, Any] = {}
    status_file = data_dir / "status.json"
    if status_file.exists():
        try:
            daemon = json.loads(status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            daemon = {}
    try:
        pending, oldest = outbox.pending_summary(conn)
        counts = readonly.record_counts(conn)
        last = readonly.last_vehicles(conn, 10)
    finally:
        conn.close()
    disk = shutil.disk_usage(data_dir)
    return {
        "service": service_state(),
        "data_dir": str(data_dir),
        "daemon": daemon,
        "queue": {"pending": pending, "oldest_pending": oldest},
        "records": counts,
        "last_vehicles": last,
        "disk": {"free_bytes": disk.free, "total_bytes": disk.total},
    }


def run(args: argparse.Namespace) -> int:
    doc = collect(location_of(args, "status").data_dir)
    running, state = daemon_state(
        doc["daemon"],
        datetime.now().astimezone(),
        doc["service"],
        pid_alive(doc["daemon"].get("pid")),
    )
    doc["daemon_running"], doc["daemon_state"] = running, state
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=1))
        return 0
    _print_daemon(doc["daemon"], doc["service"])
    _print_store(doc)
    return 0


STALE_AFTER_S = 30.0  # status.json of a daemon that says no "refresh_s" (every 2 s)
REFRESHES_MISSED = 3  # a daemon that says "refresh_s": hung after missing this many


def pid_alive(pid: Any) -> bool | None:
    """Whether process ``pid`` exists (``None``: no pid to ask about)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user (the service's)
    except OSError:
        return None
    return True


def daemon_state(
    d: dict[str, Any], now: datetime, service: str | None, alive: bool | None
) -> tuple[bool, str]:
    """``(running, what to say)`` from ``status.json`` ``d``, the unit's state (``service``,
    ``None`` without systemd) and whether its pid lives: a file left by a stopped or killed
    daemon must not read as a running station."""
    if not d:
        return False, "not running (no status.json: the daemon has not run here)"
    age_s: float | None = None
    with contextlib.suppress(KeyError, TypeError, ValueError):
        age_s = (now - datetime.fromisoformat(d["written_at"])).total_seconds()
    age = f"status.json written {_ago(age_s)} ago" if age_s is not None else "status.json undated"
    if service is not None and service not in ("active", "activating", "reloading"):
        return False, f"NOT running (systemd: {service}; {age})"
    if not d.get("running"):
        return False, f"NOT running (stopped; {age})"
    if alive is False:
        return False, f"NOT running (pid {d.get('pid')} is gone; {age})"
    refresh_s = d.get("refresh_s")
    limit = REFRESHES_MISSED * refresh_s if isinstance(refresh_s, int | float) else STALE_AFTER_S
    if age_s is None or age_s > limit:
        every = f"{refresh_s:g} s" if isinstance(refresh_s, int | float) else "2 s"
        return False, f"NOT running or hung ({age}, expected every {every})"
    return True, f"running (pid {d.get('pid', '?')}, {age})"


def _ago(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days"


def _print_daemon(d: dict[str, Any], service: str | None) -> None:
    """What the daemon last wrote in ``status.json``: itself, devices, broker, clock, stages."""
    running, state = daemon_state(d, datetime.now().astimezone(), service, pid_alive(d.get("pid")))
    print(
        f"station   {d.get('station_id', '?')}  software {d.get('software_version', '?')}  {state}"
    )
    as_of = "" if running else "  (when it last ran)"
    for dev_id, dev in sorted(d.get("devices", {}).items()):
        print(
            f"device    {dev_id:16} {dev.get('kind', ''):12} {dev.get('state', '?'):8} "
            f"last good {dev.get('last_good_at') or '-'}  {dev.get('last_error', '')}{as_of}"
        )
    up = d.get("uplink", {})
    if up:
        unacked = up.get("oldest_unacked_age_s")
        print(
            f"broker    {up.get('broker', '?')} "
            f"{'connected' if up.get('connected') and running else 'NOT connected'}"
            f"  {up.get('connects', 0)} connect(s), {up.get('connect_failures', 0)} failed"
            f"  in flight {up.get('in_flight', 0)}"
            + (f"  oldest unacked {unacked:.0f} s" if isinstance(unacked, (int, float)) else "")
            + (f"  last error: {up['last_error']}" if up.get("last_error") else "")
        )
    clock = d.get("clock", {})
    if clock:
        sync = clock.get("synchronized")
        step = clock.get("last_step")
        print(
            "clock     "
            + {True: "NTP-synchronised", False: "NOT synchronised (records are flagged)"}.get(
                sync, "sync state unknown"
            )
            + (
                f"; {clock.get('steps')} step(s), last stepped by {step['step_s']:+.0f} s "
                f"at {step['detected_at']} (records across it carry clock.stepped_s)"
                if step
                else ""
            )
        )
    if d.get("stages") and running:
        slow = {n: age for n, age in d["stages"].items() if age > 10}
        print(
            "stages    "
            + (
                "all beating"
                if not slow
                else ", ".join(f"{n} silent {a:.0f} s" for n, a in slow.items())
            )
        )
    elif d.get("stages"):
        print("stages    none beating: the daemon is not running")


def _print_store(doc: dict[str, Any]) -> None:
    """What the database and the disk say: queue, records, free space, the last vehicles."""
    q = doc["queue"]
    print(f"queue     {q['pending']} waiting for platform ack, oldest {q['oldest_pending'] or '-'}")
    recs = doc["records"]
    print("records   " + ", ".join(f"{k} {v}" for k, v in sorted(recs.items())) or "none")
    free_gb = doc["disk"]["free_bytes"] / 1e9
    print(f"disk      {free_gb:.1f} GB free in {doc['data_dir']}")
    print("last vehicles:")
    for v in doc["last_vehicles"]:
        print(
            f"  {v['event_id']}  lane {v['lane']}  {v['plate'] or '(no plate)':10} "
            f"{format_kg(v['gross_kg']):>9}  {v['status']:13} "
            f"{'delivered' if v['delivered'] else 'queued'}"
        )
