"""The station's side of the platform's commands (``{root}/cmd/{name}``, ``docs/uplink.md``).

``set-permits`` and ``set-watchlist`` replace the permit book's lists, ``set-vehicles`` the
vehicle registry (each validated whole first;
a list too large for one command comes in parts, :class:`_Uploads`), ``capture-test``
photographs a lane now, ``get-config`` returns the config with its secrets redacted,
``set-config`` installs a new config file (validated, protected keys refused, probed against
the broker *before* anything is written, backed up, audited) and restarts the station on it;
the restarted station proves the new file by reaching the broker within
:data:`TRIAL_CONNECT_S`, else it puts the backup back and restarts again
(:meth:`StationCommands.resume_trial`). ``ping`` and ``resend`` are the uplink's own
(:func:`agent.uplink.commands.builtin_handlers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import (
    ConfigError,
    StationConfig,
    parse_config,
    protected_changes,
    redact_config,
)
from agent.legal.registry import VehicleListError
from agent.pipeline.capture import capture_and_read
from agent.store.audit import REMOTE_CONFIG, AuditLog, flatten
from agent.store.files import write_file_atomically
from agent.store.permits import PermitBook, PermitListError, PermitStoreError
from agent.store.vehicles import VehicleRegistry
from agent.uplink.client import probe_broker
from agent.uplink.commands import CommandError, Handler, require, set_config_handler
from drivers.camera import Camera
from drivers.clock import Clock
from drivers.plate import PlateReader

log = logging.getLogger(__name__)

#: Seconds between the ``set-config`` reply and the restart on the new file.
RESTART_DELAY_S = 2.0
#: Seconds a station restarted on a pushed config has to reach the broker with it before it
#: falls back to the config it ran before (below the unit's watchdog and start timeouts).
TRIAL_CONNECT_S = 120.0
#: The pending proof of a pushed config, beside its backups: ``{"config_sha256", "backup"}``.
TRIAL_FILE = "trial.json"
#: Most parts of one chunked list upload, and most entries staged across its parts.
MAX_UPLOAD_PARTS = 1000
MAX_UPLOAD_ENTRIES = 1_000_000


class StationCommands:
    """The handlers of one running station.

    ``cameras`` maps lane numbers to their cameras (the station's own dict, filled as lanes
    start); ``restart`` stops the station so that ``run`` exits for systemd to start it again;
    ``audit`` (the station's audit log) gets an entry for every accepted ``set-config`` and
    every fall-back.
    """

    def __init__(
        self,
        config: StationConfig,
        clock: Clock,
        permits: PermitBook,
        cameras: Mapping[int, Sequence[Camera]],
        plate_reader: PlateReader | None,
        restart: Callable[[], None],
        vehicles: VehicleRegistry | None = None,
        audit: AuditLog | None = None,
        trial_timeout_s: float = TRIAL_CONNECT_S,
    ) -> None:
        self.config = config
        self.clock = clock
        self.permits = permits
        self.cameras = cameras
        self.plate_reader = plate_reader
        self.restart = restart
        self.vehicles = vehicles
        self.audit = audit
        self.trial_timeout_s = trial_timeout_s
        self.trial_thread: threading.Thread | None = None
        self._uploads = _Uploads()

    def handlers(self) -> dict[str, Handler]:
        """By command name; ``set-config`` only when the config came from a file (whose
        pending trial, if any, is resumed now)."""
        handlers: dict[str, Handler] = {
            "set-permits": self.set_permits,
            "set-watchlist": self.set_watchlist,
            "capture-test": self.capture_test,
            "get-config": self.get_config,
        }
        if self.vehicles is not None:
            handlers["set-vehicles"] = self.set_vehicles
        if self.config.path is not None:
            handlers["set-config"] = self._set_config(self.config.path)
            self.resume_trial()
        return handlers

    def set_permits(self, args: dict[str, Any]) -> dict[str, Any]:
        entries = self._uploads.take(args, "permits", require(args, "permits", list))
        if entries is None:
            return self._uploads.progress("permits")
        return _replace_list(entries, "permits", self.permits.replace_permits, "permit(s)")

    def set_watchlist(self, args: dict[str, Any]) -> dict[str, Any]:
        """``plates`` as docs/uplink.md says; ``watchlist`` (the old name) still works."""
        key = "plates" if "plates" in args or "watchlist" not in args else "watchlist"
        if key == "watchlist":
            log.warning("set-watchlist: argument 'watchlist' is deprecated; send 'plates'")
        entries = self._uploads.take(args, "plates", require(args, key, list))
        if entries is None:
            return self._uploads.progress("plates")
        return _replace_list(entries, "watchlist", self.permits.replace_watchlist, "plate(s)")

    def set_vehicles(self, args: dict[str, Any]) -> dict[str, Any]:
        """The vehicle registry: ``{"version": V, "vehicles": [...]}``, the complete list."""
        assert self.vehicles is not None
        version = require(args, "version", str)
        registry = self.vehicles
        return _replace_list(
            require(args, "vehicles", list),
            "vehicles",
            lambda entries: registry.replace(entries, version),
            "vehicle(s)",
        )

    def capture_test(self, args: dict[str, Any]) -> dict[str, Any]:
        """Photograph a lane now and read its plates (a technician checks aim and focus)."""
        lane_no = args.get("lane", self.config.lanes[0].number)
        # bool is an int in Python: {"lane": true} must not mean lane 1
        if isinstance(lane_no, bool) or not isinstance(lane_no, int):
            raise CommandError(
                "bad-argument", f"argument 'lane' must be a lane number: {lane_no!r}"
            )
        if lane_no not in self.cameras:
            raise CommandError("invalid", f"no lane {lane_no!r} on this station")
        result = capture_and_read(self.cameras[lane_no], self.plate_reader, self.clock.now(), 1)
        return {
            "lane": lane_no,
            "frames": [
                {
                    "camera_id": f.camera_id,
                    "role": f.role,
                    "bytes": len(f.jpeg),
                    "sha256": hashlib.sha256(f.jpeg).hexdigest(),
                    "captured_at": f.captured_at.isoformat(),
                }
                for f in result.frames
            ],
            "plates": [r.to_dict("camera_id") for r in result.reads],
            "faults": result.faults,
        }

    def get_config(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"config": redact_config(self.config.text), "config_hash": self.config.digest}

    # -- set-config -------------------------------------------------------------------------

    def _set_config(self, path: Path) -> Handler:
        backups = path.parent / "backups"
        apply_config = set_config_handler(
            read_current=lambda: path.read_text(encoding="utf-8"),
            validate=config_problems,
            protected=lambda text: protected_changes(self.config, parse_config(text, path)),
            can_connect=lambda text, timeout_s: probe_broker(
                parse_config(text, path).uplink, self.config.station.id, timeout_s
            ),
            apply=lambda text: write_file_atomically(path, text.encode("utf-8")),
            backup_dir=backups,
            now=self.clock.now,
            before_apply=lambda text, backup: _write_trial(backups, text, backup),
        )

        def set_config(args: dict[str, Any]) -> dict[str, Any]:
            result = apply_config(args)  # validated, protected keys kept, probed, backed up
            new_text = path.read_text(encoding="utf-8")
            self._audit(
                old={"config_sha256": self.config.digest},
                new={
                    "config_sha256": _sha256(new_text),
                    "changed": _changed_keys(self.config.text, new_text),
                    "backup": result["backup"],
                },
                actor="platform set-config",
            )
            # restart once the reply has gone out, to run on the new file
            timer = threading.Timer(RESTART_DELAY_S, self.restart)
            timer.daemon = True
            timer.start()
            return {**result, "restart_in_s": RESTART_DELAY_S}

        return set_config

    def resume_trial(self) -> None:
        """If this run's config was pushed and not yet proven, prove it in the background:
        reach the broker within ``trial_timeout_s``, else put the backup back and restart."""
        path = self.config.path
        if path is None:
            return
        trial = _read_trial(path.parent / "backups")
        if trial is None:
            return
        if trial.get("config_sha256") != self.config.digest:
            log.warning("set-config: a pending trial names another config; this one is kept")
            (path.parent / "backups" / TRIAL_FILE).unlink(missing_ok=True)
            return
        self.trial_thread = threading.Thread(
            target=self._prove, args=(path, trial), name="config-trial", daemon=True
        )
        self.trial_thread.start()

    def _prove(self, path: Path, trial: dict[str, Any]) -> None:
        backups = path.parent / "backups"
        try:
            if probe_broker(self.config.uplink, self.config.station.id, self.trial_timeout_s):
                (backups / TRIAL_FILE).unlink(missing_ok=True)
                log.warning("set-config: the new config reached the broker; it is kept")
                return
            backup = backups / str(trial.get("backup", ""))
            old_text = backup.read_text(encoding="utf-8")
            write_file_atomically(path, old_text.encode("utf-8"))
            (backups / TRIAL_FILE).unlink(missing_ok=True)
        except Exception:
            log.exception("set-config: the trial of the new config failed")
            return
        log.error(
            "set-config: the new config could not reach the broker %s:%d within %g s;"
            " the previous config (%s) is back in %s, restarting on it",
            self.config.uplink.host,
            self.config.uplink.port,
            self.trial_timeout_s,
            backup.name,
            path,
        )
        self._audit(
            old={"config_sha256": self.config.digest},
            new={"config_sha256": _sha256(old_text), "fallback_to": backup.name},
            actor="start-up fall-back",
        )
        self.restart()

    def _audit(self, *, old: dict[str, Any], new: dict[str, Any], actor: str) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record_change(
                REMOTE_CONFIG, REMOTE_CONFIG, old, new, self.clock.now(), actor
            )
        except Exception:
            log.exception("set-config: the audit entry could not be written")


def config_problems(text: str) -> list[str]:
    """Every problem of a pushed config, as ``check-config`` words them (empty: valid)."""
    try:
        parse_config(text)
    except ConfigError as err:
        return [p.format("station.toml") for p in err.problems]
    return []


def _replace_list(
    entries: list[Any], key: str, replace: Callable[[list[Any]], int], what: str
) -> dict[str, Any]:
    """A platform-pushed list replaces the station's whole list, or (invalid) changes nothing."""
    try:
        count = replace(entries)
    except (PermitListError, VehicleListError) as err:
        raise CommandError("invalid", str(err)) from err
    except PermitStoreError as err:
        raise CommandError("store-failed", str(err)) from err
    log.warning("%s replaced by the platform: %d %s", key, count, what)
    return {key: count}


class _Uploads:
    """Lists too large for one command (1 MiB) arrive in parts::

        {"permits": [...], "upload": {"id": "u-20261126-1", "part": 1, "parts": 3}}

    Parts come in order (1, 2, …); part 1 starts an upload (dropping any unfinished one of
    that list), the last replaces the list with all parts at once. Until then nothing
    changes. A part out of order, of another upload or beyond the bounds is refused and the
    upload starts again at part 1.
    """

    def __init__(self) -> None:
        self._staged: dict[str, tuple[str, int, int, list[Any]]] = {}  # list → id, part, parts

    def take(self, args: dict[str, Any], name: str, entries: list[Any]) -> list[Any] | None:
        """The whole list when ``args`` is a single command or the last part; ``None`` while
        parts are still missing."""
        upload = args.get("upload")
        if upload is None:
            return entries
        upload_id, part, parts = _upload_header(upload)
        staged = self._staged.pop(name, None)
        if part == 1:
            so_far: list[Any] = []
        elif (
            staged is None or staged[0] != upload_id or staged[1] != part - 1 or staged[2] != parts
        ):
            expected = f"part {staged[1] + 1} of {staged[0]!r}" if staged else "part 1"
            raise CommandError(
                "bad-argument", f"upload {upload_id!r} part {part}: expected {expected}"
            )
        else:
            so_far = staged[3]
        so_far.extend(entries)
        if len(so_far) > MAX_UPLOAD_ENTRIES:
            raise CommandError(
                "too-large", f"upload {upload_id!r} exceeds {MAX_UPLOAD_ENTRIES} entries"
            )
        if part == parts:
            return so_far
        self._staged[name] = (upload_id, part, parts, so_far)
        return None

    def progress(self, name: str) -> dict[str, Any]:
        upload_id, part, parts, so_far = self._staged[name]
        return {"upload": upload_id, "received": part, "parts": parts, "staged": len(so_far)}


def _upload_header(upload: Any) -> tuple[str, int, int]:
    if not isinstance(upload, dict):
        raise CommandError("bad-argument", f"argument 'upload' must be an object: {upload!r}")
    upload_id = require(upload, "id", str)
    part, parts = require(upload, "part", int), require(upload, "parts", int)
    if not 1 <= parts <= MAX_UPLOAD_PARTS or not 1 <= part <= parts:
        raise CommandError(
            "bad-argument",
            f"upload part {part} of {parts}: need 1 ≤ part ≤ parts ≤ {MAX_UPLOAD_PARTS}",
        )
    return upload_id, part, parts


# -- the trial of a pushed config ------------------------------------------------------------


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_trial(backups: Path, text: str, backup: Path) -> None:
    doc = {"config_sha256": _sha256(text), "backup": backup.name}
    write_file_atomically(backups / TRIAL_FILE, json.dumps(doc).encode())


def _read_trial(backups: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((backups / TRIAL_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.error("set-config: %s unreadable (%s); the running config is kept", TRIAL_FILE, err)
        return None
    return doc if isinstance(doc, dict) else None


def _changed_keys(old_text: str, new_text: str) -> list[str]:
    """The dotted key paths whose values differ (names only: values may be secrets)."""
    old, new = flatten(tomllib.loads(old_text)), flatten(tomllib.loads(new_text))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
