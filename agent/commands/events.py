"""``roadside-agent events``: the stored vehicle records, newest first, with filters."""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from typing import Any

from agent.commands._common import add_location_args, data_dir_of, open_readonly


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "events",
        help="list stored vehicle records",
        description="List stored vehicle records, newest first. With --follow, print new "
        "records as they are stored (oldest first) until Ctrl-C.",
    )
    add_location_args(p)
    p.add_argument("--limit", type=int, default=20, help="how many records (default 20)")
    p.add_argument("--status", help="only this verdict status (overloaded, warning, ...)")
    p.add_argument("--plate", help="only records with this plate text")
    p.add_argument("--lane", type=int, help="only this lane")
    p.add_argument("--since", help="only records measured at or after this ISO time")
    p.add_argument("--undelivered", action="store_true", help="only records not yet acked")
    p.add_argument("--full", action="store_true", help="with --json: the whole signed record")
    p.add_argument("--follow", action="store_true", help="keep printing new records")
    p.set_defaults(func=run)
    return p


def _query(args: argparse.Namespace, after_seq: int | None) -> tuple[str, list[Any]]:
    where, params = [], []
    if args.status:
        where.append("r.status = ?")
        params.append(args.status)
    if args.plate:
        where.append("r.plate = ?")
        params.append(args.plate)
    if args.lane is not None:
        where.append("r.lane = ?")
        params.append(args.lane)
    if args.since:
        where.append("r.measured_at >= ?")
        params.append(args.since)
    if args.undelivered:
        where.append("o.acked_at IS NULL")
    if after_seq is not None:
        where.append("r.seq > ?")
        params.append(after_seq)
    sql = (
        "SELECT r.seq, r.event_id, r.lane, r.measured_at, r.status, r.plate, r.gross_kg,"
        " r.record_json, o.acked_at FROM records r"
        " LEFT JOIN outbox o ON o.kind = 'event' AND o.ref = r.event_id"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    if after_seq is None:
        sql += " ORDER BY r.seq DESC LIMIT ?"
        params.append(args.limit)
    else:
        sql += " ORDER BY r.seq"
    return sql, params


def _line(row: sqlite3.Row, args: argparse.Namespace) -> str:
    rec = json.loads(row["record_json"])
    if args.json:
        if args.full:
            return json.dumps(rec, ensure_ascii=False)
        return json.dumps(
            {
                "event_id": row["event_id"],
                "lane": row["lane"],
                "measured_at": row["measured_at"],
                "plate": row["plate"],
                "axles": rec["vehicle"]["axle_count"],
                "gross_kg": row["gross_kg"],
                "status": row["status"],
                "over_kg": rec["verdict"].get("over_kg"),
                "delivered": row["acked_at"] is not None,
            },
            ensure_ascii=False,
        )
    v = rec["verdict"]
    over = f"{v['over_kg']:+d} kg" if v.get("over_kg") is not None else ""
    return (
        f"{row['event_id']}  lane {row['lane']}  {row['plate'] or '(no plate)':10}  "
        f"{rec['vehicle']['axle_count']} axles  {row['gross_kg']:>6} kg  "
        f"{row['status']:13} {over:>10}  {'delivered' if row['acked_at'] else 'queued'}"
    )


def run(args: argparse.Namespace) -> int:
    conn = open_readonly(data_dir_of(args))
    sql, params = _query(args, None)
    rows = conn.execute(sql, params).fetchall()
    for row in rows:
        print(_line(row, args), flush=True)
    if not args.follow:
        return 0
    last = max((r["seq"] for r in rows), default=0)
    try:
        while True:
            time.sleep(1.0)
            sql, params = _query(args, last)
            for row in conn.execute(sql, params).fetchall():
                print(_line(row, args), flush=True)
                last = row["seq"]
    except KeyboardInterrupt:
        return 0
