"""The outbox: what still has to reach the platform, kept in the station database.

It is the only source of truth for delivery (paho's in-memory session is not). A row per
message: an event record (its JSON and images come from the evidence tables) or an alarm
(payload stored here). A message is *delivered* only when the platform acknowledges it on
``{root}/ack``; a PUBACK alone only marks it published.

Priorities drain in order: alarms (0), violations (1), passages (2); oldest first within one.
Rows are enqueued inside the evidence store's write transaction, so a committed record always
has its outbox row.
"""

from __future__ import annotations

import sqlite3
from enum import IntEnum

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001-outbox",
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('event', 'alarm')),
            ref TEXT NOT NULL,
            priority INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            payload TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_attempt_at TEXT,
            next_attempt_mono REAL,
            published_at TEXT,
            acked_at TEXT,
            UNIQUE (kind, ref)
        );
        CREATE INDEX outbox_pending ON outbox (acked_at, priority, id);
        """,
    ),
]


class Priority(IntEnum):
    ALARM = 0
    VIOLATION = 1
    PASSAGE = 2


def enqueue(
    conn: sqlite3.Connection,
    *,
    kind: str,
    ref: str,
    priority: Priority,
    created_at: str,
    payload: str | None = None,
) -> None:
    """Add a message inside the caller's write transaction (no-op if already queued)."""
    conn.execute(
        "INSERT OR IGNORE INTO outbox (kind, ref, priority, created_at, payload)"
        " VALUES (?, ?, ?, ?, ?)",
        (kind, ref, int(priority), created_at, payload),
    )


def pending_count(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM outbox WHERE acked_at IS NULL").fetchone()
    return int(row[0])


def oldest_pending_created_at(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT min(created_at) FROM outbox WHERE acked_at IS NULL").fetchone()
    return None if row is None else row[0]
