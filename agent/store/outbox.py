"""The outbox: what still has to reach the platform, kept in the station database.

It is the only source of truth for delivery (paho's in-memory session is not). A row per
message: an event record (its JSON and images come from the evidence tables) or an alarm
(payload stored here). A message is *delivered* only when the platform acknowledges it on
``{root}/ack``; a PUBACK alone only marks it published.

Priorities drain in order: alarms (0), violations (1), passages (2); oldest first within one,
and *live* violations (measured within the uplink's live window) ahead of the old violation
backlog, so a truck passing now is not queued behind yesterday's outage. Rows are enqueued
inside the evidence store's write transaction, so a committed record always has its outbox row.

:func:`due` joins the evidence store's ``records`` and ``images`` tables (same database), so the
evidence migrations must have run first (the evidence store applies both).

``next_attempt_mono`` is the uplink's monotonic re-send deadline for a row it has sent and not
seen acknowledged; it means nothing after a restart, so :func:`reset_deadlines` clears it when
the uplink starts (everything unacknowledged is due again).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
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


@dataclass(frozen=True)
class Row:
    """One outbox message as the uplink sends it."""

    id: int
    kind: str
    ref: str
    priority: int
    created_at: str
    payload: str | None
    attempts: int
    #: for events: the record's stored canonical JSON and its image count (evidence tables)
    record_json: str | None = None
    image_count: int = 0


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


def pending_summary(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """``(unacknowledged messages, the smallest created_at among them)`` in one query (what
    ``status`` shows; ``None`` when nothing is pending)."""
    row = conn.execute(
        "SELECT count(*), min(created_at) FROM outbox WHERE acked_at IS NULL"
    ).fetchone()
    return int(row[0]), None if row[1] is None else str(row[1])


def oldest_pending_created_at(conn: sqlite3.Connection) -> str | None:
    """``created_at`` of the oldest unacknowledged message.

    The oldest of each class's first row in queue order (three index look-ups, not a scan
    of a 100 000-row backlog); rows are queued as they are created, so this is the oldest.
    """
    row = conn.execute(
        "SELECT created_at FROM ("
        + " UNION ALL ".join(
            f"SELECT * FROM (SELECT created_at FROM outbox WHERE acked_at IS NULL"
            f" AND priority = {int(p)} ORDER BY id LIMIT 1)"
            for p in Priority
        )
        + ") ORDER BY julianday(created_at) LIMIT 1"
    ).fetchone()
    return None if row is None else str(row[0])


def julian_day(t: datetime) -> float:
    """SQLite's ``julianday()`` of an aware datetime (for comparisons in SQL)."""
    return t.timestamp() / 86400.0 + 2440587.5


# The record's bytes come with the row: the evidence store keeps each record as the canonical
# JSON it hashed and signed (``records.record_json``), which is exactly the ``{root}/events``
# payload, so the drain neither re-reads nor re-serialises it row by row.
_COLUMNS = (
    "o.id, o.kind, o.ref, o.priority, o.created_at, o.payload, o.attempts,"
    " r.record_json, (SELECT count(*) FROM images i WHERE i.event_id = o.ref)"
    " FROM outbox o LEFT JOIN records r ON o.kind = 'event' AND r.event_id = o.ref"
)
_DUE = "(next_attempt_mono IS NULL OR next_attempt_mono <= ?)"


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    return [Row(*r) for r in cursor.fetchall()]


def due(
    conn: sqlite3.Connection, *, now_mono: float, live_since: datetime, limit: int
) -> list[Row]:
    """Up to ``limit`` messages to send now, in drain order.

    Order: alarms; violations created at or after ``live_since`` (live); the other violations;
    passages — oldest first within each. A row is due when never sent since the uplink started
    or its re-send deadline (``next_attempt_mono``) has passed.
    """
    if limit <= 0:
        return []
    out: list[Row] = []
    seen: set[int] = set()

    def take(rows: Iterable[Row]) -> None:
        for row in rows:
            if row.id not in seen and len(out) < limit:
                seen.add(row.id)
                out.append(row)

    take(
        _rows(
            conn.execute(
                f"SELECT {_COLUMNS} WHERE acked_at IS NULL AND priority = 0"
                f" AND {_DUE} ORDER BY o.id LIMIT ?",
                (now_mono, limit),
            )
        )
    )
    if len(out) < limit:
        live = _live_violation_ids(conn, julian_day(live_since))
        if live:
            take(
                _rows(
                    conn.execute(
                        f"SELECT {_COLUMNS} WHERE o.id IN ({','.join('?' * len(live))})"
                        f" AND acked_at IS NULL AND {_DUE} ORDER BY o.id LIMIT ?",
                        (*live, now_mono, limit - len(out)),
                    )
                )
            )
    if len(out) < limit:
        # Over-fetch by what was already taken, so rows picked above cannot starve the rest.
        take(
            _rows(
                conn.execute(
                    f"SELECT {_COLUMNS} WHERE acked_at IS NULL AND priority >= 1"
                    f" AND {_DUE} ORDER BY priority, o.id LIMIT ?",
                    (now_mono, limit),
                )
            )
        )
    return out


#: Most live violations looked at per round (a burst larger than this drains as backlog, still
#: oldest first).
LIVE_SCAN_MAX = 500


def _live_violation_ids(conn: sqlite3.Connection, since_jd: float) -> list[int]:
    """Unacknowledged violations created at or after ``since_jd`` (a julian day).

    Walks the pending violations newest first and stops at the first older one, so the cost
    is the number of live rows, whatever the backlog (no extra index to keep on disk).
    """
    ids: list[int] = []
    cur = conn.execute(
        "SELECT id, julianday(created_at) FROM outbox WHERE acked_at IS NULL AND priority = 1"
        " ORDER BY id DESC"
    )
    try:
        for row_id, jd in cur:
            if jd is None or jd < since_jd or len(ids) >= LIVE_SCAN_MAX:
                break
            ids.append(row_id)
    finally:
        cur.close()
    return ids


def mark_attempts(conn: sqlite3.Connection, attempts: Sequence[tuple[int, str, float]]) -> None:
    """Record a send of each ``(id, attempted_at, next_attempt_mono)`` (caller's transaction)."""
    conn.executemany(
        "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = ?, next_attempt_mono = ?"
        " WHERE id = ?",
        [(at, nxt, row_id) for row_id, at, nxt in attempts],
    )


def retry_soon(conn: sqlite3.Connection, ids: Sequence[int], next_attempt_mono: float) -> None:
    """Move the re-send deadline of ``ids`` to ``next_attempt_mono`` (a failed publish)."""
    conn.executemany(
        "UPDATE outbox SET next_attempt_mono = ? WHERE id = ? AND acked_at IS NULL",
        [(next_attempt_mono, i) for i in ids],
    )


def mark_published(conn: sqlite3.Connection, ids: Sequence[int], at: str) -> None:
    """The broker accepted every part of these messages (PUBACK with a success code)."""
    conn.executemany(
        "UPDATE outbox SET published_at = ? WHERE id = ? AND published_at IS NULL",
        [(at, i) for i in ids],
    )


def mark_acked(conn: sqlite3.Connection, kind: str, refs: Sequence[str], at: str) -> int:
    """The platform acknowledged these messages; returns how many were pending."""
    done = 0
    for i in range(0, len(refs), 500):
        chunk = refs[i : i + 500]
        cur = conn.execute(
            "UPDATE outbox SET acked_at = ?, published_at = coalesce(published_at, ?),"
            " next_attempt_mono = NULL WHERE kind = ? AND acked_at IS NULL"
            f" AND ref IN ({','.join('?' * len(chunk))})",
            (at, at, kind, *chunk),
        )
        done += cur.rowcount
    return done


def reset_deadlines(conn: sqlite3.Connection) -> int:
    """Make every unacknowledged message due now (uplink start, reconnect). Returns the count."""
    cur = conn.execute(
        "UPDATE outbox SET next_attempt_mono = NULL"
        " WHERE acked_at IS NULL AND next_attempt_mono IS NOT NULL"
    )
    return cur.rowcount


def requeue_events(conn: sqlite3.Connection, since: datetime, until: datetime) -> int:
    """Send again the event records created in ``[since, until]`` (the platform's ``resend``).

    Only records the station still keeps are re-queued: an evicted record (a tombstone in
    ``records_pruned``) has nothing left to send, and re-opening its row would leave it
    "waiting for ack" forever. :func:`pruned_in_range` counts those. Returns the rows
    re-queued.
    """
    cur = conn.execute(
        "UPDATE outbox SET acked_at = NULL, next_attempt_mono = NULL"
        " WHERE kind = 'event' AND julianday(created_at) BETWEEN ? AND ?"
        " AND EXISTS (SELECT 1 FROM records r WHERE r.event_id = outbox.ref)",
        (julian_day(since), julian_day(until)),
    )
    return cur.rowcount


def pruned_in_range(conn: sqlite3.Connection, since: datetime, until: datetime) -> int:
    """Event rows created in ``[since, until]`` whose record was evicted (not re-sendable)."""
    row = conn.execute(
        "SELECT count(*) FROM outbox WHERE kind = 'event'"
        " AND julianday(created_at) BETWEEN ? AND ?"
        " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.event_id = outbox.ref)",
        (julian_day(since), julian_day(until)),
    ).fetchone()
    return int(row[0])
