"""Shared helpers of the read-only commands: find the data directory, open the database."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path


def add_location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="/etc/roadside-agent/station.toml", help="station TOML file")
    p.add_argument("--data-dir", help="data directory (overrides the config's station.data_dir)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def data_dir_of(args: argparse.Namespace) -> Path:
    """The data directory from ``--data-dir``, else from the config (even a config that no
    longer validates: a technician must still see the evidence). Exits 78 when unreadable."""
    from agent import evidence
    from agent.config import EX_CONFIG

    try:
        data_dir, _ = evidence.locate(args.config, args.data_dir)
    except evidence.ConfigFileError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(EX_CONFIG) from err
    return data_dir


def open_readonly(data_dir: Path) -> sqlite3.Connection:
    """The station database, read-only (never blocks or changes the running daemon)."""
    path = data_dir / "station.db"
    if not path.exists():
        print(f"no station database at {path} (has the station run yet?)", file=sys.stderr)
        raise SystemExit(66)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn
