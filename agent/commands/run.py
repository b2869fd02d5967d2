"""``roadside-agent run``: the station daemon (systemd runs this)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

log = logging.getLogger("agent.run")


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
    from agent.config import EX_CONFIG, ConfigError, load_config
    from agent.station import Station

    logs.setup(args.log_level)
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        for p in err.problems:
            print(p.format(err.filename), file=sys.stderr)
        return EX_CONFIG

    station: Station

    def on_stored(_: Any) -> None:
        if args.max_vehicles and station.counters.stored >= args.max_vehicles:
            station.stop_event.set()

    station = Station(cfg, data_dir=args.data_dir, on_stored=on_stored)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        station.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        station.start()
    except Exception as err:
        log.error("station did not start: %s", err)
        station.stop()
        return 1
    station.wait()
    station.stop()
    return 0
