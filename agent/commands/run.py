"""``roadside-agent run``: the station daemon (systemd runs this)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

log = logging.getLogger("agent.run")

# Below the unit's TimeoutStartSec=120 / TimeoutStopSec=20.
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="run the station daemon", description="Run the station until SIGTERM/SIGINT."
    )
    p.add_argument("--config", required=True, help="station TOML file")
    p.add_argument("--data-dir", help="where the database and images live (overrides the config)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument(
        "--max-vehicles", type=int, default=0, help="stop after this many stored vehicles (tests)"
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from agent import logs
    from agent.commands._common import EX_CONFIG, EX_TEMPFAIL
    from agent.config import ConfigError, load_config
    from agent.station import sdnotify
    from agent.station.supervisor import Station

    logs.setup(args.log_level)
    notifier = sdnotify.Notifier.from_environment()
    notifier.status("starting: loading the config")
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        for p in err.problems:
            print(p.format(err.filename), file=sys.stderr)
        notifier.status(f"bad config: {len(err.problems)} problem(s) in {err.filename}")
        return EX_CONFIG

    station: Station

    def on_stored(_: Any) -> None:
        if args.max_vehicles and station.counters.stored >= args.max_vehicles:
            station.stop_event.set()

    station = Station(cfg, data_dir=args.data_dir, on_stored=on_stored, notifier=notifier)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        station.stop_event.set()

    def on_dump(_signum: int, _frame: Any) -> None:
        station.dump_requested.set()  # the status loop writes the dump, not the handler

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_dump)
    notifier.status("starting: opening the store and the devices")
    try:
        station.start()
    except Exception as err:
        code = start_failure_exit(err)
        kind = "bad config" if code == EX_CONFIG else "start failed"
        log.error("station did not start (%s): %s", kind, err)
        notifier.status(f"{kind}: {err}")
        station.stop()
        return code
    sdnotify.wait_for_first_readings(
        notifier, station.scales_without_reading, station.stop_event, timeout_s=READY_TIMEOUT_S
    )
    station.wait()
    notifier.stopping("stopping: closing open vehicles and flushing the store")
    station.stop(timeout_s=STOP_TIMEOUT_S)
    # set-config applied: exit 75 so systemd (Restart=on-failure) starts us on the new file
    return EX_TEMPFAIL if station.restart_requested else 0


def start_failure_exit(err: BaseException) -> int:
    """The exit code of a start-up failure: 78 when the config caused it (a register map, a
    rule table, a backend name, a speed range: systemd must not restart into the same error,
    ``RestartPreventExitStatus=78``), else 1 (systemd restarts: a disk, a lock may recover)."""
    from agent.commands._common import EX_CONFIG, EX_FAILED
    from agent.config import ConfigError
    from agent.legal import InvalidFactsError, LegalRulesError
    from agent.store.integrity import SigningKeyError
    from drivers.registry import BackendError
    from drivers.scale.base import ScaleConfigError

    config_caused = (
        ConfigError,
        ScaleConfigError,
        LegalRulesError,
        BackendError,
        InvalidFactsError,
        SigningKeyError,
    )
    return EX_CONFIG if isinstance(err, config_caused) else EX_FAILED
