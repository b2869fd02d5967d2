"""The station's side of the platform's commands (``{root}/cmd/{name}``, ``docs/uplink.md``).

``set-permits`` and ``set-watchlist`` replace the permit book's lists, ``set-vehicles`` the
vehicle registry (each validated whole first),
``capture-test`` photographs a lane now, ``get-config`` returns the config with its secrets
redacted, ``set-config`` installs a new config file (validated, backed up, probed against the
broker, else rolled back) and restarts the station on it. ``ping`` and ``resend`` are the
uplink's own (:func:`agent.uplink.commands.builtin_handlers`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import ConfigError, StationConfig, parse_config, redact_config
from agent.legal.registry import VehicleListError
from agent.pipeline.capture import capture_and_read
from agent.store.files import write_file_atomically
from agent.store.permits import PermitBook, PermitListError
from agent.store.vehicles import VehicleRegistry
from agent.uplink.client import probe_broker
from agent.uplink.commands import CommandError, Handler, require, set_config_handler
from drivers.camera import Camera
from drivers.clock import Clock
from drivers.plate import PlateReader

log = logging.getLogger(__name__)

#: Seconds between the ``set-config`` reply and the restart on the new file.
RESTART_DELAY_S = 2.0


class StationCommands:
    """The handlers of one running station.

    ``cameras`` maps lane numbers to their cameras (the station's own dict, filled as lanes
    start); ``restart`` stops the station so that ``run`` exits for systemd to start it again.
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
    ) -> None:
        self.config = config
        self.clock = clock
        self.permits = permits
        self.cameras = cameras
        self.plate_reader = plate_reader
        self.restart = restart
        self.vehicles = vehicles

    def handlers(self) -> dict[str, Handler]:
        """By command name; ``set-config`` only when the config came from a file."""
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
        return handlers

    def set_permits(self, args: dict[str, Any]) -> dict[str, Any]:
        return _replace_list(args, "permits", self.permits.replace_permits, "permit(s)")

    def set_watchlist(self, args: dict[str, Any]) -> dict[str, Any]:
        return _replace_list(args, "watchlist", self.permits.replace_watchlist, "plate(s)")

    def set_vehicles(self, args: dict[str, Any]) -> dict[str, Any]:
        """The vehicle registry: ``{"version": V, "vehicles": [...]}``, the complete list."""
        assert self.vehicles is not None
        version = require(args, "version", str)
        registry = self.vehicles
        return _replace_list(
            args, "vehicles", lambda entries: registry.replace(entries, version), "vehicle(s)"
        )

    def capture_test(self, args: dict[str, Any]) -> dict[str, Any]:
        """Photograph a lane now and read its plates (a technician checks aim and focus)."""
        lane_no = args.get("lane", self.config.lanes[0].number)
        if not isinstance(lane_no, int) or lane_no not in self.cameras:
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

    def _set_config(self, path: Path) -> Handler:
        apply_config = set_config_handler(
            read_current=lambda: path.read_text(encoding="utf-8"),
            validate=config_problems,
            apply=lambda text: write_file_atomically(path, text.encode("utf-8")),
            can_connect=lambda text, timeout_s: probe_broker(
                parse_config(text, path).uplink, self.config.station.id, timeout_s
            ),
            backup_dir=path.parent / "backups",
            now=self.clock.now,
        )

        def set_config(args: dict[str, Any]) -> dict[str, Any]:
            result = apply_config(args)  # validated, backed up, probed; else rolled back
            # restart once the reply has gone out, to run on the new file
            timer = threading.Timer(RESTART_DELAY_S, self.restart)
            timer.daemon = True
            timer.start()
            return {**result, "restart_in_s": RESTART_DELAY_S}

        return set_config


def config_problems(text: str) -> list[str]:
    """Every problem of a pushed config, as ``check-config`` words them (empty: valid)."""
    try:
        parse_config(text)
    except ConfigError as err:
        return [p.format("station.toml") for p in err.problems]
    return []


def _replace_list(
    args: dict[str, Any], key: str, replace: Callable[[list[Any]], int], what: str
) -> dict[str, Any]:
    """A platform-pushed list replaces the station's whole list, or (invalid) changes nothing."""
    entries = require(args, key, list)
    try:
        count = replace(entries)
    except (PermitListError, VehicleListError) as err:
        raise CommandError("invalid", str(err)) from err
    log.warning("%s replaced by the platform: %d %s", key, count, what)
    return {key: count}
