"""The station database: one SQLite file in WAL mode with ``synchronous=FULL`` and one writer.

Every component that stores something (evidence, outbox, audit log, permits) gets its tables
through named migrations (:meth:`Database.migrate`), applied once each in their own transaction
(sqlite-utils' named-migration idea, kept in the stdlib ``sqlite3`` for control over the
transaction and fsync behaviour).

One writer: all writes go through :meth:`Database.write`, which holds a process-wide lock around
``BEGIN IMMEDIATE … COMMIT`` on a single connection. Reads use a connection per thread and never
block the writer (WAL).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000


class DatabaseError(Exception):
    """The station database cannot be opened or written (disk full, corrupt, read-only)."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed record survives a power cut (WAL fsync on every commit).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


class Database:
    """The station's SQLite database at ``path`` (created when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(self.path)
        except (OSError, sqlite3.Error) as err:
            raise DatabaseError(f"cannot open the station database {self.path}: {err}") from err
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        with self.write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations ("
                " component TEXT NOT NULL, name TEXT NOT NULL, applied_at TEXT NOT NULL"
                " DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),"
                " PRIMARY KEY (component, name))"
            )

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed on success, rolled back on error.

        Re-entrant within one thread: a nested ``write()`` joins the outer transaction.
        Raises :class:`DatabaseError` when SQLite cannot commit (disk full, I/O error).
        """
        with self._write_lock:
            conn = self._writer
            if conn.in_transaction:
                yield conn
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise DatabaseError(f"{self.path}: cannot start a write: {err}") from err
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise DatabaseError(f"{self.path}: commit failed: {err}") from err

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (gives its disk space back).

        Best effort: a reader in the middle of a statement may keep part of the WAL alive;
        the next checkpoint gets it. Never raises for that.
        """
        with self._write_lock:
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                log.debug("checkpoint of %s not done: %s", self.path, err)

    def read(self) -> sqlite3.Connection:
        """This thread's read connection (autocommit; each statement sees committed data)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def migrate(self, component: str, migrations: Sequence[tuple[str, str]]) -> list[str]:
        """Apply ``(name, sql_script)`` migrations of ``component`` not applied yet, in order.

        Each runs in its own transaction together with its bookkeeping row. Returns the names
        applied now.
        """
        applied: list[str] = []
        for name, script in migrations:
            with self.write() as conn:
                done = conn.execute(
                    "SELECT 1 FROM migrations WHERE component = ? AND name = ?", (component, name)
                ).fetchone()
                if done:
                    continue
                for statement in _split_sql(script):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO migrations (component, name) VALUES (?, ?)", (component, name)
                )
                applied.append(name)
        return applied

    def close(self) -> None:
        """Close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (``executescript`` would COMMIT on its own)."""
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements
