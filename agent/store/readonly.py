"""Read-only access to the station database for the commands (never blocks the daemon).

Every query that ``status``, ``events``, ``export``, ``diag`` and the supervisor's health need
lives here or beside the table it reads (:mod:`agent.store.outbox`, :mod:`agent.store.audit`),
so the schema has one owner: :mod:`agent.store`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

DB_FILE = "station.db"


class NoDatabaseError(FileNotFoundError):
    """There is no station database in the data directory (the station has not run yet)."""


def open_readonly(data_dir: Path) -> sqlite3.Connection:
    """The station database opened read-only, rows as :class:`sqlite3.Row`.

    Raises :class:`NoDatabaseError` when there is none.
    """
    path = Path(data_dir) / DB_FILE
    if not path.exists():
        raise NoDatabaseError(f"no station database at {path} (has the station run yet?)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn
