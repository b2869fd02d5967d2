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

Costs that must not grow with a backlog of a million rows (issue 18; the plans are pinned by
``tests/test_queryplans_outbox.py``):

- :func:`due` reads ids and sizes first (one query, each class a range of the pending index,
  the live violations found by a bounded walk from the newest), admits rows up to the byte
  window the uplink has free, and only then reads the record JSON of the admitted rows;
- the pending count is a counter per priority (table ``outbox_pending_n``) that triggers keep
  in step with every insert, ack, re-queue and delete, not a count over the pending rows;
- :func:`reset_deadlines` touches only the rows that have a deadline (a partial index), not
  every unacknowledged row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

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
    (
        # Issue 18: due() bounded by bytes, a pending count that is not a scan, re-arming
        # deadlines without visiting every unacknowledged row.
        "0002-outbox-drain",
        """
        ALTER TABLE outbox ADD COLUMN size_bytes INTEGER;
        CREATE INDEX outbox_armed ON outbox (next_attempt_mono)
            WHERE next_attempt_mono IS NOT NULL;
        CREATE TABLE outbox_pending_n (
            priority INTEGER PRIMARY KEY,
            n INTEGER NOT NULL
        );
        INSERT INTO outbox_pending_n (priority, n) VALUES (0, 0), (1, 0), (2, 0);
        INSERT OR REPLACE INTO outbox_pending_n (priority, n)
            SELECT priority, count(*) FROM outbox WHERE acked_at IS NULL GROUP BY priority;
        CREATE TRIGGER outbox_pending_insert AFTER INSERT ON outbox
            WHEN NEW.acked_at IS NULL
        BEGIN
            INSERT INTO outbox_pending_n (priority, n) VALUES (NEW.priority, 1)
                ON CONFLICT (priority) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER outbox_pending_update AFTER UPDATE OF acked_at, priority ON outbox
            WHEN (OLD.acked_at IS NULL) != (NEW.acked_at IS NULL) OR OLD.priority != NEW.priority
        BEGIN
            UPDATE outbox_pending_n SET n = n - 1
                WHERE OLD.acked_at IS NULL AND priority = OLD.priority;
            INSERT INTO outbox_pending_n (priority, n) SELECT NEW.priority, 1
                WHERE NEW.acked_at IS NULL
                ON CONFLICT (priority) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER outbox_pending_delete AFTER DELETE ON outbox
            WHEN OLD.acked_at IS NULL
        BEGIN
            UPDATE outbox_pending_n SET n = n - 1 WHERE priority = OLD.priority;
        END;
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
    #: payload bytes on the wire (record and images; alarms: their document)
    size_bytes: int = 0


def enqueue(
    conn: sqlite3.Connection,
    *,
    kind: str,
    ref: str,
    priority: Priority,
    created_at: str,
    payload: str | None = None,
    size_bytes: int | None = None,
) -> None:
    """Add a message inside the caller's write transaction (no-op if already queued).

    ``size_bytes``: what it puts on the wire (an event: its record JSON and its images), so
    :func:`due` can fill the uplink's byte window without reading the records; without it
    (and for rows queued before it existed) :func:`due` sums the image rows instead.
    """
    if size_bytes is None and payload is not None:
        size_bytes = len(payload.encode())
    conn.execute(
        "INSERT OR IGNORE INTO outbox (kind, ref, priority, created_at, payload, size_bytes)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (kind, ref, int(priority), created_at, payload, size_bytes),
    )


def pending_count(conn: sqlite3.Connection) -> int:
    """Unacknowledged messages: the triggers' counter (three rows), never a scan."""
    row = conn.execute("SELECT coalesce(sum(n), 0) FROM outbox_pending_n").fetchone()
    return int(row[0])


def pending_summary(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """``(unacknowledged messages, the oldest created_at among them)`` (what ``status``
    shows; ``None`` when nothing is pending): the counter and three index look-ups."""
    return pending_count(conn), oldest_pending_created_at(conn)


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


#: Most live violations looked at per round (a burst larger than this drains as backlog, still
#: oldest first).
LIVE_SCAN_MAX = 500

_DUE = "(next_attempt_mono IS NULL OR next_attempt_mono <= :now)"
#: Bytes assumed for a record's JSON when its outbox row has no size (queued before
#: migration 0002; a record is about 2.5 KB).
RECORD_BYTES_GUESS = 2500
# What goes on the wire for a row: its stored size, else (rows queued before sizes were
# stored) an alarm's document or an event's image rows plus a record's typical size; read
# from the outbox row alone when the size is there (coalesce stops at the first non-null).
_SIZE = (
    "coalesce(size_bytes, length(CAST(payload AS BLOB)), (SELECT coalesce(sum(i.bytes), 0)"
    f" FROM images i WHERE i.event_id = o.ref) + {RECORD_BYTES_GUESS})"
)
_HEAD = f"id, kind, ref, priority, created_at, payload, attempts, {_SIZE}"
# The live violations are the newest pending ones (rows are queued as they are created) down
# to the first one older than the live window, at most LIVE_SCAN_MAX: everything above
# ``floor``. Both look-ups walk the pending violations from the newest, so they cost the
# number of live rows, whatever the backlog; no id list, so no plan that flips with its length.
_FLOOR = (
    "WITH cap(id) AS (SELECT coalesce((SELECT id FROM outbox WHERE acked_at IS NULL"
    " AND priority = 1 ORDER BY id DESC LIMIT 1 OFFSET :live_max), 0)),"
    " floor(id) AS (SELECT max((SELECT id FROM cap), coalesce((SELECT id FROM outbox"
    " WHERE acked_at IS NULL AND priority = 1 AND id > (SELECT id FROM cap)"
    " AND coalesce(julianday(created_at), 0) < :since ORDER BY id DESC LIMIT 1), 0)))"
)
# Drain order in one query: alarms; live violations; the other violations; passages. Each
# class is a range of the pending index (acked_at, priority, id), oldest first. No ORDER BY
# over the whole: SQLite runs a UNION ALL's arms in turn and stops at the outer LIMIT, so a
# round reads at most ``limit`` rows (a sort would read every arm in full first); the order
# is pinned by tests/test_uplink_outbox.py and the plan by tests/test_queryplans_outbox.py.
_SEGMENTS = (
    ("0", "priority = 0"),
    ("1", "priority = 1 AND id > (SELECT id FROM floor)"),
    ("2", "priority = 1 AND id <= (SELECT id FROM floor)"),
    ("3", "priority = 2"),
)
_DUE_QUERY = (
    f"{_FLOOR} SELECT {_HEAD.replace(_SIZE, 'size')} FROM ("
    + " UNION ALL ".join(
        f"SELECT * FROM (SELECT {seg} AS seg, {_HEAD} AS size FROM outbox o"
        f" WHERE acked_at IS NULL AND {where} AND {_DUE} ORDER BY id LIMIT :limit)"
        for seg, where in _SEGMENTS
    )
    + ") LIMIT :limit"
)


def due(
    conn: sqlite3.Connection,
    *,
    now_mono: float,
    live_since: datetime,
    limit: int,
    max_bytes: int | None = None,
    skip: Callable[[int, str, str], bool] | None = None,
) -> list[Row]:
    """Up to ``limit`` messages to send now, in drain order.

    Order: alarms; violations created at or after ``live_since`` (live); the other violations;
    passages — oldest first within each. A row is due when never sent since the uplink started
    or its re-send deadline (``next_attempt_mono``) has passed.

    ``max_bytes`` is the room in the uplink's byte window: rows are taken while the bytes
    taken so far are below it (so the row that crosses it still goes, as the sender would
    send it), and only those get their record JSON read. ``skip(id, kind, ref)``: rows the
    caller will not send now (in flight, acknowledged but not yet written); they take no room.
    """
    if limit <= 0:
        return []
    head = conn.execute(
        _DUE_QUERY,
        {
            "now": now_mono,
            "since": julian_day(live_since),
            "live_max": LIVE_SCAN_MAX,
            "limit": limit,
        },
    ).fetchall()
    taken: list[tuple[Any, ...]] = []
    room = max_bytes
    for row in head:
        if skip is not None and skip(row[0], row[1], row[2]):
            continue
        if room is not None and room <= 0:
            break
        taken.append(row)
        if room is not None:
            room -= int(row[7])
    bodies = _record_bodies(conn, [r[2] for r in taken if r[1] == "event"])
    out: list[Row] = []
    for row_id, kind, ref, priority, created_at, payload, attempts, size in taken:
        body, images = bodies.get(ref, (None, 0)) if kind == "event" else (None, 0)
        out.append(
            Row(row_id, kind, ref, priority, created_at, payload, attempts, body, images, size)
        )
    return out


def _record_bodies(conn: sqlite3.Connection, refs: Sequence[str]) -> dict[str, tuple[str, int]]:
    """``event_id → (stored canonical JSON, image count)`` of these records (one look-up each
    by ``event_id``; a record not stored is absent).

    The evidence store keeps each record as the canonical JSON it hashed and signed, which is
    exactly the ``{root}/events`` payload, so the drain neither re-reads nor re-serialises it.
    """
    if not refs:
        return {}
    rows = conn.execute(
        "SELECT r.event_id, r.record_json,"
        " (SELECT count(*) FROM images i WHERE i.event_id = r.event_id)"
        f" FROM records r WHERE r.event_id IN ({','.join('?' * len(refs))})",
        tuple(refs),
    )
    return {str(ref): (str(body), int(n)) for ref, body, n in rows}


#: Rows per statement in the batched updates (well below SQLite's 32 766 variables).
_CHUNK = 500


def mark_attempts(conn: sqlite3.Connection, attempts: Sequence[tuple[int, str, float]]) -> None:
    """Record a send of each ``(id, attempted_at, next_attempt_mono)`` (caller's transaction):
    one statement per batch, each row found by its id."""
    for i in range(0, len(attempts), _CHUNK):
        chunk = attempts[i : i + _CHUNK]
        conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = v.column2,"
            " next_attempt_mono = v.column3"
            f" FROM (VALUES {','.join(['(?, ?, ?)'] * len(chunk))}) AS v"
            " WHERE outbox.id = v.column1",
            [x for row_id, at, nxt in chunk for x in (row_id, at, nxt)],
        )


def _update_by_ids(
    conn: sqlite3.Connection, assign: str, values: tuple[Any, ...], ids: Sequence[int], cond: str
) -> None:
    """``UPDATE outbox SET {assign} WHERE id IN (ids) AND {cond}``, one statement per
    :data:`_CHUNK` ids, each row looked up by its id."""
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        conn.execute(
            f"UPDATE outbox SET {assign} WHERE id IN ({','.join('?' * len(chunk))}) AND {cond}",
            (*values, *chunk),
        )


def retry_soon(conn: sqlite3.Connection, ids: Sequence[int], next_attempt_mono: float) -> None:
    """Move the re-send deadline of ``ids`` to ``next_attempt_mono`` (a failed publish)."""
    # ``+acked_at``: look the rows up by id; the index on acked_at would make SQLite walk every
    # pending row once the id list is a few dozen long.
    _update_by_ids(conn, "next_attempt_mono = ?", (next_attempt_mono,), ids, "+acked_at IS NULL")


def mark_published(conn: sqlite3.Connection, ids: Sequence[int], at: str) -> None:
    """The broker accepted every part of these messages (PUBACK with a success code)."""
    _update_by_ids(conn, "published_at = ?", (at,), ids, "published_at IS NULL")


def mark_acked(conn: sqlite3.Connection, kind: str, refs: Sequence[str], at: str) -> int:
    """The platform acknowledged these messages; returns how many were pending.

    Each row is found by ``(kind, ref)`` (``+acked_at``: not by walking the pending rows,
    which SQLite would choose once the list is a few dozen long)."""
    done = 0
    for i in range(0, len(refs), _CHUNK):
        chunk = refs[i : i + _CHUNK]
        cur = conn.execute(
            "UPDATE outbox SET acked_at = ?, published_at = coalesce(published_at, ?),"
            " next_attempt_mono = NULL WHERE kind = ? AND +acked_at IS NULL"
            f" AND ref IN ({','.join('?' * len(chunk))})",
            (at, at, kind, *chunk),
        )
        done += cur.rowcount
    return done


def reset_deadlines(conn: sqlite3.Connection) -> int:
    """Make every unacknowledged message due now (uplink start, reconnect). Returns the count.

    One statement over the rows that have a deadline (the partial index ``outbox_armed``),
    so a reconnect with a million rows queued and a few hundred sent costs the few hundred;
    an acknowledged row never keeps one (:func:`mark_acked` clears it).
    """
    cur = conn.execute(
        "UPDATE outbox SET next_attempt_mono = NULL"
        " WHERE next_attempt_mono IS NOT NULL AND +acked_at IS NULL"
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
