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
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
#: After a checkpoint the WAL is cut back to this size (SQLite keeps the file otherwise):
#: space a burst of writes took is given back, and up to this much stays allocated so the
#: next commits reuse it instead of growing the file on a full disk.
JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
#: auto_vacuum = INCREMENTAL: pages freed by eviction go back to the file system by
#: ``PRAGMA incremental_vacuum`` (without it SQLite never shrinks its file).
AUTO_VACUUM_INCREMENTAL = 2
DEFAULT_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default
LOW_DISK_AUTOCHECKPOINT_PAGES = 16
VACUUM_MIGRATION = ("db", "0001-auto-vacuum-incremental")


class DatabaseError(Exception):
    """The station database cannot be opened or written (disk full, corrupt, read-only)."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    # takes effect only on a new, empty database; an existing one is converted once by
    # Database.enable_incremental_vacuum (VACUUM)
    conn.execute(f"PRAGMA auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
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

    def checkpoint(self, mode: str = "TRUNCATE") -> None:
        """Copy the WAL into the database; ``TRUNCATE`` also cuts the WAL to zero bytes (gives
        its disk space back), ``RESTART`` keeps the file so the next commits reuse it (what a
        full disk wants: no new blocks needed for the WAL).

        Best effort: a reader in the middle of a statement may keep part of the WAL alive;
        the next checkpoint gets it. Never raises for that.
        """
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode!r}")
        with self._write_lock:
            try:
                self._writer.execute(f"PRAGMA wal_checkpoint({mode})")
            except sqlite3.Error as err:
                log.debug("checkpoint of %s not done: %s", self.path, err)

    def autocheckpoint(self, pages: int) -> None:
        """``wal_autocheckpoint``: checkpoint after a commit that leaves the WAL over ``pages``.

        :data:`LOW_DISK_AUTOCHECKPOINT_PAGES` on a full disk: the WAL then stays a few
        commits long and its blocks are reused from its start, instead of growing into the
        last free blocks (a record commit writes about ten pages to the WAL but adds only
        one or two to the database). :data:`DEFAULT_AUTOCHECKPOINT_PAGES` otherwise.
        """
        with self._write_lock:
            self._writer.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")

    def file_bytes(self) -> int:
        """Bytes the database takes on disk: the file and its WAL."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    def auto_vacuum(self) -> int:
        """SQLite's ``auto_vacuum`` mode of this database (0 none, 1 full, 2 incremental)."""
        with self._write_lock:
            return int(self._writer.execute("PRAGMA auto_vacuum").fetchone()[0])

    def incremental_vacuum(self) -> int:
        """Give the database's free pages back to the file system; returns the bytes the
        file (with its WAL, after a truncating checkpoint) shrank by. 0 without
        ``auto_vacuum=INCREMENTAL``."""
        with self._write_lock:
            self.checkpoint("TRUNCATE")  # the WAL of the deletes is not the vacuum's gain
            before = self.file_bytes()
            try:
                # executescript steps the pragma to its end; execute() frees only one page
                self._writer.executescript("PRAGMA incremental_vacuum;")
            except sqlite3.Error as err:
                raise DatabaseError(f"{self.path}: incremental vacuum failed: {err}") from err
            self.checkpoint("TRUNCATE")
            return max(0, before - self.file_bytes())

    def enable_incremental_vacuum(self, free_bytes: int) -> bool:  # long: the safety checks
        """Convert an existing database to ``auto_vacuum=INCREMENTAL`` (a one-off ``VACUUM``).

        A database created by this version already is (the pragma is set before its first
        table). An older one needs ``VACUUM``, which rewrites the whole file: it needs about
        twice the database's size free (a temp copy, in the database's own directory, plus
        the WAL), takes the write lock for as long as it runs and is atomic (SQLite's own
        transaction: a crash leaves the old file). It runs only when ``free_bytes`` (the
        data directory's free space) covers that with a margin; otherwise it is logged and
        tried again at the next start. Recorded as the migration ``db/0001-auto-vacuum-
        incremental``. Returns True when the database is incremental now.
        """
        component, name = VACUUM_MIGRATION
        if self.auto_vacuum() == AUTO_VACUUM_INCREMENTAL:
            with self.write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO migrations (component, name) VALUES (?, ?)",
                    (component, name),
                )
            return True
        size = self.file_bytes()
        needed = 2 * size + 16 * 1024 * 1024
        if free_bytes < needed:
            log.warning(
                "database %s: not converted to incremental vacuum yet: it needs %d MB free, "
                "%d MB are; eviction gives photo space back but not database pages until then",
                self.path,
                needed // 2**20,
                free_bytes // 2**20,
            )
            return False
        log.warning(
            "database %s: converting to auto_vacuum=INCREMENTAL (one VACUUM of %.1f MB)",
            self.path,
            size / 2**20,
        )
        with self._write_lock:
            conn = self._writer
            try:
                tmp_dir = str(self.path.parent).replace("'", "''")
                conn.execute(f"PRAGMA temp_store_directory = '{tmp_dir}'")
                conn.execute(f"PRAGMA auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
                conn.execute("VACUUM")
            except sqlite3.Error as err:
                log.error("database %s: VACUUM failed, left as it was: %s", self.path, err)
                return False
            finally:
                conn.execute("PRAGMA temp_store_directory = ''")
        self.checkpoint("TRUNCATE")
        with self.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO migrations (component, name) VALUES (?, ?)",
                (component, name),
            )
        return self.auto_vacuum() == AUTO_VACUUM_INCREMENTAL

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
