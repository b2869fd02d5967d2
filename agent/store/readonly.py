"""Read-only access to the station database for the commands (never blocks the daemon).

Every query that ``status``, ``events``, ``export``, ``diag`` and the supervisor's health need
lives here or beside the table it reads (:mod:`agent.store.outbox`, :mod:`agent.store.audit`,
:mod:`agent.store.verify`), so the schema has one owner: :mod:`agent.store`. The functions take
an open connection (:func:`open_readonly` for a command, :meth:`agent.store.db.Database.read`
in the daemon) and return plain typed values, never cursors.
"""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

DB_FILE = "station.db"
BUSY_TIMEOUT_S = 10.0


class NoDatabaseError(FileNotFoundError):
    """There is no station database in the data directory (the station has not run yet)."""


def open_readonly(data_dir: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """The station database opened read-only, rows as :class:`sqlite3.Row`.

    ``busy_timeout_s``: how long a statement waits out the daemon's lock (a checkpoint).
    Raises :class:`NoDatabaseError` when there is none; ``sqlite3.Error`` when SQLite cannot
    open it.
    """
    path = Path(data_dir) / DB_FILE
    if not path.exists():
        raise NoDatabaseError(f"no station database at {path} (has the station run yet?)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_s)
    conn.row_factory = sqlite3.Row
    return conn


# -- records -------------------------------------------------------------------------------------


def vehicles_since(conn: sqlite3.Connection, since: str) -> int:
    """How many kept records were measured at or after ``since`` (an ISO date or time)."""
    row = conn.execute("SELECT count(*) FROM records WHERE measured_at >= ?", (since,)).fetchone()
    return int(row[0])


def record_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Kept records by verdict status.

    Read from ``record_counts``, which triggers keep in step with every insert and delete
    of a record (a handful of rows, whatever the store holds). A database the daemon has not
    upgraded yet has no such table: then they are counted.
    """
    try:
        rows = conn.execute("SELECT status, n FROM record_counts WHERE n > 0").fetchall()
    except sqlite3.OperationalError as err:
        if "no such table" not in str(err):
            raise
        rows = conn.execute("SELECT status, count(*) FROM records GROUP BY status").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


class LastVehicle(TypedDict):
    """One line of ``status``'s last vehicles (its ``--json`` prints these keys in this order)."""

    event_id: str
    lane: int
    measured_at: str
    plate: str | None
    gross_kg: int | None
    status: str
    delivered: int  # 1 once the platform acknowledged it, else 0 (as SQLite says it)


def last_vehicles(conn: sqlite3.Connection, limit: int = 10) -> list[LastVehicle]:
    """The newest ``limit`` kept records, newest first, with whether each is delivered."""
    rows = conn.execute(
        "SELECT r.event_id, r.lane, r.measured_at, r.plate, r.gross_kg, r.status,"
        " o.acked_at IS NOT NULL AS delivered FROM records r LEFT JOIN outbox o"
        " ON o.kind = 'event' AND o.ref = r.event_id ORDER BY r.seq DESC LIMIT ?",
        (limit,),
    )
    return [
        LastVehicle(
            event_id=r["event_id"],
            lane=r["lane"],
            measured_at=r["measured_at"],
            plate=r["plate"],
            gross_kg=r["gross_kg"],
            status=r["status"],
            delivered=r["delivered"],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class EventFilter:
    """What ``events`` selects; a field left at its default selects everything."""

    status: str | None = None
    plate: str | None = None
    lane: int | None = None
    since: str | None = None  # ISO time with offset: measured at or after that instant
    undelivered: bool = False


@dataclass(frozen=True)
class EventRow:
    """A kept record as ``events`` lists it: the indexed columns, the record and its ack."""

    seq: int
    event_id: str
    lane: int
    measured_at: str
    status: str
    plate: str | None
    gross_kg: int | None
    record_json: str
    acked_at: str | None


def newest_events(conn: sqlite3.Connection, flt: EventFilter, limit: int) -> list[EventRow]:
    """The newest ``limit`` records that pass ``flt``, newest first.

    Each filter walks its index newest first (plate, status, lane, time), so the cost is the
    rows listed, not the store. ``undelivered`` walks the outbox's pending rows instead
    (:func:`_newest_undelivered`): what is unacknowledged is usually a small part of a big
    store, and not always its newest part.
    """
    if flt.undelivered:
        return _newest_undelivered(conn, flt, limit)
    sql, params = _events_query(flt)
    return _event_rows(conn, sql + " ORDER BY r.seq DESC LIMIT ?", [*params, limit])


def events_after(conn: sqlite3.Connection, flt: EventFilter, after_seq: int) -> list[EventRow]:
    """Every record after ``seq`` ``after_seq`` that passes ``flt``, oldest first."""
    sql, params = _events_query(flt, ("r.seq > ?", after_seq))
    return _event_rows(conn, sql + " ORDER BY r.seq", params)


#: Pending outbox rows of one priority looked at per step of :func:`_newest_undelivered`.
UNDELIVERED_STEP = 256
#: The outbox priorities of event records (``agent.store.outbox.Priority``: violations,
#: passages); alarms (0) are not records.
_EVENT_PRIORITIES = (1, 2)


def _newest_undelivered(conn: sqlite3.Connection, flt: EventFilter, limit: int) -> list[EventRow]:
    """The newest ``limit`` unacknowledged records that pass ``flt``.

    Walks the outbox's pending index (``acked_at, priority, id``) newest first, up to
    :data:`UNDELIVERED_STEP` rows per priority a step, and reads the records those rows name.
    An outbox row is created in the transaction that stores its record, so outbox ids run in
    ``seq`` order and the newest pending rows name the newest undelivered records. The cost is
    the pending rows walked (those the other filters reject included), never the whole store.
    """
    sql, params = _events_query(flt)  # with its "o.acked_at IS NULL"
    sql += " AND r.event_id IN "
    below = sys.maxsize  # pending rows with an id below this are still to be walked
    out: list[EventRow] = []
    while len(out) < limit and below > 0:
        refs: list[tuple[int, str]] = []
        floor = 0  # every pending event row from here up to `below` is in refs
        for priority in _EVENT_PRIORITIES:
            step = conn.execute(
                "SELECT id, ref FROM outbox WHERE acked_at IS NULL AND priority = ? AND id < ?"
                " ORDER BY id DESC LIMIT ?",
                (priority, below, UNDELIVERED_STEP),
            ).fetchall()
            refs += [(int(r[0]), str(r[1])) for r in step]
            if len(step) == UNDELIVERED_STEP:  # this priority has more below its last row
                floor = max(floor, int(step[-1][0]))
        names = [ref for row_id, ref in sorted(refs, reverse=True) if row_id >= floor]
        while names and len(out) < limit:  # the records of the newest first, a few at a time
            chunk, names = names[: limit - len(out)], names[limit - len(out) :]
            out += _event_rows(
                conn,
                sql + f"({','.join('?' * len(chunk))}) ORDER BY r.seq DESC",
                [*params, *chunk],
            )
        below = floor
    return out[:limit]


def _events_query(flt: EventFilter, *extra: tuple[str, Any]) -> tuple[str, list[Any]]:
    """``SELECT … [WHERE …]`` for ``flt`` and any ``extra`` ``(condition, value)``."""
    conds: list[tuple[str, Any]] = []
    if flt.status:
        conds.append(("r.status = ?", flt.status))
    if flt.plate:
        conds.append(("r.plate = ?", flt.plate))
    if flt.lane is not None:
        conds.append(("r.lane = ?", flt.lane))
    if flt.since:  # as instants: records and the argument may carry different offsets
        # likelihood: without it the planner walks every record newest first when fewer
        # than `limit` are that recent; "since" names the newest records, so its index
        # (records_measured_jd) is the cheaper way to them
        conds.append(("likelihood(julianday(r.measured_at) >= julianday(?), 0.01)", flt.since))
    where = [c for c, _ in conds]
    if flt.undelivered:
        where.append("o.acked_at IS NULL")
    where += [c for c, _ in extra]
    params = [v for _, v in (*conds, *extra)]
    sql = (
        "SELECT r.seq, r.event_id, r.lane, r.measured_at, r.status, r.plate, r.gross_kg,"
        " r.record_json, o.acked_at FROM records r"
        " LEFT JOIN outbox o ON o.kind = 'event' AND o.ref = r.event_id"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql, params


def _event_rows(conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[EventRow]:
    return [EventRow(*tuple(r)) for r in conn.execute(sql, params).fetchall()]


def record_json(conn: sqlite3.Connection, event_id: str) -> str | None:
    """The stored, signed record (canonical JSON) of ``event_id``; ``None`` when not kept."""
    row = conn.execute("SELECT record_json FROM records WHERE event_id = ?", (event_id,)).fetchone()
    return None if row is None else str(row[0])


def pruned_at(conn: sqlite3.Connection, event_id: str) -> str | None:
    """When retention pruned ``event_id`` (its tombstone), ``None`` when it did not."""
    row = conn.execute(
        "SELECT pruned_at FROM records_pruned WHERE event_id = ?", (event_id,)
    ).fetchone()
    return None if row is None else str(row[0])


# -- images --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRow:
    """One image of a record: ``path`` relative to the data directory; ``evicted_at`` set once
    retention deleted the file (the row and the signed hash stay)."""

    name: str
    sha256: str
    path: str
    evicted_at: str | None


def image_rows(conn: sqlite3.Connection, event_id: str) -> list[ImageRow]:
    """The image rows of ``event_id``, by name."""
    rows = conn.execute(
        "SELECT name, sha256, path, evicted_at FROM images WHERE event_id = ? ORDER BY name",
        (event_id,),
    )
    return [ImageRow(*tuple(r)) for r in rows.fetchall()]


def newest_image_paths(data_dir: Path, limit: int) -> list[str]:
    """Paths (relative to ``data_dir``) of up to ``limit`` images not evicted, newest record
    first. ``[]`` when there is no database or it cannot be read: never raises, never blocks
    the daemon (read-only, waits 5 s at most for a lock)."""
    try:
        conn = open_readonly(data_dir, busy_timeout_s=5)
    except (NoDatabaseError, sqlite3.Error):
        return []
    try:
        rows = conn.execute(
            "SELECT i.path FROM images i JOIN records r ON r.event_id = i.event_id"
            " WHERE i.evicted_at IS NULL ORDER BY r.seq DESC, i.name LIMIT ?",
            (limit,),
        ).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [str(r[0]) for r in rows]


# -- the disk ------------------------------------------------------------------------------------


class StorageFigures(TypedDict):
    """What a full-disk check counts (``scripts/fulldisk_check.py report``)."""

    records: int
    records_without_images_disk_full: int
    tombstones: int
    last_seq: int
    alarms: list[str]


def storage_figures(conn: sqlite3.Connection) -> StorageFigures:
    """Records kept, those stored without photos because the disk was full, tombstones, the
    last ``seq`` and the kinds of every alarm raised (oldest first)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM records),"
        " (SELECT count(*) FROM records WHERE record_json LIKE '%images_refused_disk_full%'),"
        " (SELECT count(*) FROM records_pruned),"
        " (SELECT coalesce(max(value), 0) FROM counters WHERE name = 'seq')"
    ).fetchone()
    kinds = [
        str(r[0])
        for r in conn.execute(
            "SELECT json_extract(payload, '$.kind') FROM outbox WHERE kind = 'alarm' ORDER BY id"
        )
    ]
    return {
        "records": int(row[0]),
        "records_without_images_disk_full": int(row[1]),
        "tombstones": int(row[2]),
        "last_seq": int(row[3]),
        "alarms": kinds,
    }
