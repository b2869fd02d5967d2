"""``roadside-agent events``: the stored vehicle records, newest first, with filters.

``--follow`` keeps watching the database the running daemon writes, like ``tail -f``: the last
``--limit`` records oldest first, then each new record once, as it is stored, until Ctrl-C
(exit 0). It only ever reads (a read-only connection polled every second, so it can neither
block nor change the daemon), and it outlasts what a live station does to its database: one
that does not exist yet (it waits for it), one still being created, and one locked for a moment.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Any

from agent.commands._common import (
    EX_USAGE,
    Location,
    add_location_args,
    format_kg,
    location_of,
    open_db,
    parse_time,
)
from agent.domain import VerdictStatus
from agent.legal.facts import normalize_plate
from agent.store.readonly import (
    DB_FILE,
    EventFilter,
    EventRow,
    NoDatabaseError,
    events_after,
    newest_events,
    open_readonly,
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "events",
        help="list stored vehicle records",
        description="List stored vehicle records, newest first. With --follow, like tail -f: "
        "the last records oldest first, then each new record as it is stored, until Ctrl-C.",
    )
    add_location_args(p)
    p.add_argument("--limit", type=_positive, default=20, help="how many records (default 20)")
    p.add_argument(
        "--status", type=_status, help=f"only this verdict status ({', '.join(STATUSES)})"
    )
    p.add_argument(
        "--plate",
        help="only records with this plate (case, spaces, dots and dashes do not matter)",
    )
    p.add_argument("--lane", type=_positive, help="only this lane")
    p.add_argument(
        "--since",
        metavar="TIME",
        help="only records measured at or after TIME, as journalctl reads it: ISO 8601 "
        '("2026-05-31 14:00"; without an offset: the station\'s), "today", "yesterday", '
        '"1 hour ago", "-2d"',
    )
    p.add_argument("--undelivered", action="store_true", help="only records not yet acked")
    p.add_argument("--full", action="store_true", help="with --json: the whole signed record")
    p.add_argument(
        "--follow",
        action="store_true",
        help="keep printing new records as they are stored (waits for the database)",
    )
    p.set_defaults(func=run)
    return p


STATUSES = tuple(s.value for s in VerdictStatus)


def _status(text: str) -> str:
    """``--status``: a verdict status, else a usage error naming them (exit 2)."""
    word = text.strip().lower()
    if word not in STATUSES:
        hint = difflib.get_close_matches(word, STATUSES, n=1)
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a verdict status"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; one of: {', '.join(STATUSES)}"
        )
    return word


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return value


def _filter(args: argparse.Namespace, location: Location) -> EventFilter:
    """The filter of the arguments. Raises ``ValueError`` for a time or plate it cannot read."""
    since = None
    if args.since is not None:
        zone = timezone(timedelta(hours=location.utc_offset_hours))
        since = parse_time(args.since, datetime.now(zone)).isoformat(timespec="milliseconds")
    plate = None
    if args.plate is not None:
        plate = normalize_plate(args.plate)  # as the store and the permit book compare plates
        if not plate:
            raise ValueError(f"--plate {args.plate!r}: no plate text in it")
    return EventFilter(
        status=args.status,
        plate=plate,
        lane=args.lane,
        since=since,
        undelivered=args.undelivered,
    )


def _line(row: EventRow, args: argparse.Namespace) -> str:
    rec = json.loads(row.record_json)
    if args.json:
        if args.full:
            return json.dumps(rec, ensure_ascii=False)
        return json.dumps(
            {
                "event_id": row.event_id,
                "lane": row.lane,
                "measured_at": row.measured_at,
                "plate": row.plate,
                "axles": rec["vehicle"]["axle_count"],
                "gross_kg": row.gross_kg,
                "status": row.status,
                "over_kg": rec["verdict"].get("over_kg"),
                "delivered": row.acked_at is not None,
            },
            ensure_ascii=False,
        )
    v = rec["verdict"]
    over = format_kg(v["over_kg"], signed=True) if v.get("over_kg") is not None else ""
    return (
        f"{row.event_id}  lane {row.lane}  {row.plate or '(no plate)':10}  "
        f"{rec['vehicle']['axle_count']} axles  {format_kg(row.gross_kg):>9}  "
        f"{row.status:13} {over:>10}  {'delivered' if row.acked_at else 'queued'}"
    )


POLL_INTERVAL_S = 1.0
FOLLOW_BUSY_TIMEOUT_S = 0.5  # a locked database is retried at the next poll: Ctrl-C stays quick


def run(args: argparse.Namespace) -> int:
    location = location_of(args, "events")
    try:
        flt = _filter(args, location)
    except ValueError as err:
        print(f"roadside-agent events: {err}", file=sys.stderr)
        return EX_USAGE
    data_dir = location.data_dir
    if args.follow:
        return follow(args, data_dir, flt=flt)
    conn = open_db(data_dir, "events")
    try:
        for row in newest_events(conn, flt, args.limit):
            print(_line(row, args), flush=True)
    finally:
        conn.close()
    return 0


def follow(
    args: argparse.Namespace,
    data_dir: Path,
    poll_interval_s: float = POLL_INTERVAL_S,
    *,
    flt: EventFilter | None = None,
) -> int:
    """Print the last records, then every new one once, until SIGINT (Ctrl-C). Returns 0."""
    path = data_dir / DB_FILE
    flt = flt or EventFilter()
    conn: sqlite3.Connection | None = None
    last: int | None = None  # highest seq printed; None until the first listing
    told: set[str] = set()  # conditions already explained on stderr (each once)

    def tell(key: str, text: str) -> None:
        if key not in told:
            told.add(key)
            print(text, file=sys.stderr, flush=True)

    restore = _end_on_signals()
    try:
        while True:
            try:
                if conn is None:
                    with contextlib.suppress(NoDatabaseError):  # not yet: said below, retried
                        conn = open_readonly(data_dir, busy_timeout_s=FOLLOW_BUSY_TIMEOUT_S)
                if conn is None:
                    tell("missing", f"waiting for the station database at {path} ...")
                elif last is None:
                    rows = newest_events(conn, flt, args.limit)
                    for row in reversed(rows):  # oldest first, like tail -f
                        print(_line(row, args), flush=True)
                    last = max((int(r.seq) for r in rows), default=0)
                else:
                    for row in events_after(conn, flt, last):
                        print(_line(row, args), flush=True)
                        last = int(row.seq)
            except sqlite3.DatabaseError as err:
                # locked for a moment (a checkpoint), or created but not yet given its tables:
                # the next poll tries again
                if "locked" not in str(err) and "busy" not in str(err):
                    tell(str(err), f"events: {path}: {err}; retrying")
            time.sleep(poll_interval_s)
    except KeyboardInterrupt:
        return 0
    finally:
        restore()
        if conn is not None:
            conn.close()


def _end_on_signals() -> Callable[[], None]:
    """Make SIGINT (Ctrl-C) and SIGTERM end the follow loop as ``KeyboardInterrupt``, even when
    the shell started us with SIGINT ignored; returns the function that restores the handlers.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    saved: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, interrupt)
    except ValueError:  # not the main thread (an embedding program): leave its handlers alone
        pass

    def restore() -> None:
        for sig, handler in saved.items():
            signal.signal(sig, handler)

    return restore
