"""``roadside-agent verify``: check the evidence chain, signatures, images and the audit log.

Exit 0 only when everything holds; 1 when something is broken (the first broken record is
named); 66 when there is no station database; 78 when ``--config`` cannot be read.

On a terminal it shows how many records of the chain are checked (``agent.commands.progress``, on
stderr); in the journal, a pipe or a file nothing but the result is written.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.commands.progress import Progress

from agent.commands._common import EX_FAILED, EX_NOINPUT, add_location_args, location_of


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help="check the evidence chain, signatures, images and the audit log",
        description="Re-check every stored record (hash chain, Ed25519 signature, image "
        "SHA-256) and the audit log; name the first broken record. Exit 0 only when "
        "everything holds.",
    )
    add_location_args(p)
    p.add_argument(
        "--no-images", action="store_true", help="skip hashing image files (faster, weaker)"
    )
    p.set_defaults(func=run)
    return p


def _counting_rows(
    progress: Progress,
) -> Callable[[sqlite3.Cursor, tuple[Any, ...]], sqlite3.Row]:
    """A row factory giving ``sqlite3.Row`` (what :func:`agent.store.verify.verify_store`
    needs) that advances ``progress`` for every row of the evidence chain it walks: the rows
    whose first column is ``kind`` (record or tombstone), read one by one as they are checked."""

    def factory(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> sqlite3.Row:
        if cursor.description[0][0] == "kind":
            progress.advance()
        return sqlite3.Row(cursor, row)

    return factory


def verify_data_dir(
    data_dir: Path,
    *,
    check_images: bool = True,
    config: Any = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Everything ``verify`` checks, as the JSON it prints. Raises ``FileNotFoundError``.

    ``progress`` (optional) counts the chain's records as they are checked.
    """
    from agent.store import audit
    from agent.store.keys import verification_keys
    from agent.store.readonly import open_readonly
    from agent.store.verify import ChainReport, Problem, chain_length, verify_store

    conn = open_readonly(data_dir)
    try:
        if progress is not None and progress.enabled:
            progress.total = chain_length(conn)
            conn.row_factory = _counting_rows(progress)
        keys = verification_keys(data_dir, config)
        try:
            report = verify_store(conn, data_dir, keys, check_images=check_images)
        except sqlite3.DatabaseError as err:
            report = ChainReport()
            report.problems.append(Problem("record", f"database unreadable: {err}"))
        audit_problems = audit.verify_log(conn, keys)
        audit_counter = audit.last_counter(conn)
    finally:
        conn.close()
    problems: list[dict[str, Any]] = [p.to_dict() for p in report.problems]
    problems += [p.to_dict() for p in audit_problems]
    if report.max_audit_counter > audit_counter:
        problems.append(
            {
                "where": "audit",
                "problem": f"records carry audit counter {report.max_audit_counter} but the "
                f"audit log ends at {audit_counter}: audit entries are missing",
            }
        )
    first = report.first_broken
    return {
        "ok": not problems,
        "data_dir": str(data_dir),
        "records": report.records,
        "pruned": report.pruned,
        "images": report.images,
        "images_evicted": report.images_evicted,
        "last_seq": report.last_seq,
        "audit_entries": audit_counter,
        "keys": sorted(keys),
        "first_broken": None if first is None else first.event_id or first.seq,
        "first_broken_seq": None if first is None else first.seq,
        "problems": problems,
    }


def run(args: argparse.Namespace) -> int:
    from agent.commands.progress import Progress

    where = location_of(args, "verify")
    data_dir, config = where.data_dir, where.evidence
    try:
        with Progress("verify", unit="records") as progress:
            result = verify_data_dir(
                data_dir, check_images=not args.no_images, config=config, progress=progress
            )
    except FileNotFoundError as err:
        print(f"roadside-agent verify: {err}", file=sys.stderr)
        return EX_NOINPUT
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _print_text(result)
    return 0 if result["ok"] else EX_FAILED


def _print_text(r: dict[str, Any]) -> None:
    print(
        f"{r['data_dir']}: {r['records']} records, {r['pruned']} pruned (tombstones), "
        f"{r['images']} images ({r['images_evicted']} evicted), last seq {r['last_seq']}, "
        f"{r['audit_entries']} audit entries, keys {', '.join(r['keys']) or 'none'}"
    )
    if r["ok"]:
        print("OK: chain, signatures, images and audit log all hold")
        return
    print(f"BROKEN: first broken record: {r['first_broken']}")
    for p in r["problems"]:
        where = p.get("event_id") or (f"seq {p['seq']}" if "seq" in p else "")
        if p.get("where") == "audit" and p.get("counter") is not None:
            where = f"audit entry {p['counter']}"
        print(f"  {p['where']:<9} {where}: {p['problem']}")
