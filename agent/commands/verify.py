"""``roadside-agent verify``: check the evidence chain, signatures, images and the audit log.

By default only what is new since the signed verify checkpoint (:mod:`agent.store.checkpoint`)
is checked — the checkpoint itself, the link from its record into the new ones, the new records
with their photos, the ``seq`` counter, the signed chain head and the audit log — and after a
clean run a new checkpoint is sealed. ``--full`` checks every record again: a record altered
*before* the checkpoint is found only so (docs/evidence.md recommends it weekly).

Exit 0 only when everything holds; 1 when something is broken (the first broken record is
named); 66 when there is no station database; 78 when ``--config`` cannot be read.

On a terminal it shows how many records of the chain are checked (``agent.commands.progress``, on
stderr); in the journal, a pipe or a file nothing but the result is written. Both end with the
records per second.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.commands.progress import Progress
    from agent.store.checkpoint import Checkpoint
    from agent.store.verify import ChainReport

from agent.commands._common import EX_FAILED, EX_NOINPUT, add_location_args, location_of

#: A full check older than this gets a reminder (docs: run ``verify --full`` weekly).
FULL_CHECK_DUE = timedelta(days=7)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help="check the evidence chain, signatures, images and the audit log",
        description="Re-check the stored records (hash chain, Ed25519 signature, image "
        "SHA-256) and the audit log; name the first broken record. Exit 0 only when "
        "everything holds. By default only the records since the last signed verify "
        "checkpoint are checked (with the checkpoint itself, the chain head and the audit "
        "log), and a clean run seals a new checkpoint: a record altered BEFORE the "
        "checkpoint is found only by --full. Run --full weekly.",
    )
    add_location_args(p)
    p.add_argument(
        "--full",
        action="store_true",
        help="check every record and photo again, not only those since the checkpoint",
    )
    p.add_argument(
        "--no-images", action="store_true", help="skip hashing image files (faster, weaker)"
    )
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="do not seal a new checkpoint (a copy under examination stays as it is)",
    )
    p.set_defaults(func=run)
    return p


def _now() -> datetime:
    return datetime.now().astimezone()


def verify_data_dir(  # long: one run in order: read, check, seal, and the JSON it prints
    data_dir: Path,
    *,
    check_images: bool = True,
    config: Any = None,
    progress: Progress | None = None,
    full: bool = True,
    seal_checkpoint: bool = True,
    now: Callable[[], datetime] = _now,
) -> dict[str, Any]:
    """Everything ``verify`` checks, as the JSON it prints. Raises ``FileNotFoundError``.

    ``full=False`` checks only what is new since a stored checkpoint that holds (the command's
    default; callers in code get the full check). After a run that found nothing wrong with
    the chain, the photos hashed and the audit log whole, ``seal_checkpoint`` seals a new
    checkpoint (a broken stored one is replaced only by a full run). ``progress`` (optional)
    counts the chain's records as they are checked.
    """
    from agent.store import audit
    from agent.store.keys import verification_keys
    from agent.store.readonly import open_readonly
    from agent.store.verify import ChainReport, Problem, verify_store

    conn = open_readonly(data_dir)
    started = time.monotonic()
    try:
        keys = verification_keys(data_dir, config)
        try:
            report = verify_store(
                conn, data_dir, keys, check_images=check_images, full=full, progress=progress
            )
        except sqlite3.DatabaseError as err:
            report = ChainReport()
            report.problems.append(Problem("record", f"database unreadable: {err}"))
        audit_problems = audit.verify_log(conn, keys)
        audit_counter = audit.last_counter(conn)
    finally:
        conn.close()
    elapsed_s = time.monotonic() - started
    problems: list[dict[str, Any]] = [p.to_dict() for p in report.problems]
    problems += [p.to_dict() for p in audit_problems]
    max_audit = report.max_audit_counter
    if report.checkpoint is not None and report.mode == "incremental":
        max_audit = max(max_audit, report.checkpoint.max_audit_counter)
    if max_audit > audit_counter:
        problems.append(
            {
                "where": "audit",
                "problem": f"records carry audit counter {max_audit} but the "
                f"audit log ends at {audit_counter}: audit entries are missing",
            }
        )
    checkpoint_problems = len(report.problems) - len(report.chain_problems)
    chain_ok = len(problems) == checkpoint_problems and not report.problems_omitted
    written: Checkpoint | None = None
    note = "no checkpoint written (--no-checkpoint)"
    if seal_checkpoint:
        written, note = _seal(
            data_dir, report, config, now(), max_audit, chain_ok, check_images, full
        )
    first = report.first_broken
    checked = report.records + report.pruned
    newest = written or report.checkpoint
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
        "problems_omitted": report.problems_omitted,
        "mode": report.mode,
        "checked_from_seq": report.from_seq,
        "checkpoint": _stored_checkpoint(report),
        "checkpoint_written": None if written is None else written.to_dict(),
        "checkpoint_note": note or None,
        "last_full_verify": None if newest is None else newest.full_verified_at,
        "full_check_due": _full_check_due(newest, now()),
        "elapsed_s": round(elapsed_s, 3),
        "records_per_s": round(checked / elapsed_s, 1) if elapsed_s > 0 else None,
    }


def _stored_checkpoint(report: ChainReport) -> dict[str, Any] | None:
    """The checkpoint the run found: what it says when it holds, else its raw columns."""
    if report.checkpoint is not None:
        return report.checkpoint.to_dict()
    row = report.checkpoint_row
    if row is None:
        return None
    return {"seq": row["seq"], "hash": row["hash"], "key_id": row["key_id"], "holds": False}


def _full_check_due(cp: Checkpoint | None, now: datetime) -> bool:
    if cp is None:
        return True
    try:
        last = datetime.fromisoformat(cp.full_verified_at)
    except ValueError:
        return True
    return now - last > FULL_CHECK_DUE


def _seal(
    data_dir: Path,
    report: ChainReport,
    config: Any,
    now: datetime,
    max_audit: int,
    chain_ok: bool,
    images_hashed: bool,
    full_asked: bool,
) -> tuple[Checkpoint | None, str]:
    """Seal the checkpoint of this run when it may be: ``(checkpoint, "")`` or ``(None, why)``."""
    from agent import __version__
    from agent.store import checkpoint

    if not chain_ok:
        return None, "no checkpoint written: verify found problems"
    if not images_hashed:
        return None, "no checkpoint written: the photos were not hashed (--no-images)"
    stored_broken = report.checkpoint_row is not None and report.checkpoint is None
    if stored_broken and not full_asked:
        return None, "no checkpoint written: the stored one does not hold (run verify --full)"
    # a full walk that found the chain whole replaces a broken checkpoint (reported this once)
    prev = report.checkpoint if report.mode == "incremental" else None
    stamp = now.isoformat(timespec="seconds")
    cp = checkpoint.Checkpoint(
        station_id=report.station_id or (prev.station_id if prev else None),
        seq=report.last_seq,
        hash=report.last_hash,
        records=report.records + (prev.records if prev else 0),
        pruned=report.pruned + (prev.pruned if prev else 0),
        images=report.images + (prev.images if prev else 0),
        images_evicted=report.images_evicted + (prev.images_evicted if prev else 0),
        max_audit_counter=max_audit,
        verified_at=stamp,
        full_verified_at=prev.full_verified_at if prev else stamp,
        full_seq=prev.full_seq if prev else report.last_seq,
        software_version=__version__,
    )
    return checkpoint.write(data_dir, cp, config)


def run(args: argparse.Namespace) -> int:
    from agent.commands.progress import Progress

    where = location_of(args, "verify")
    data_dir, config = where.data_dir, where.evidence
    try:
        with Progress("verify", unit="records") as progress:
            result = verify_data_dir(
                data_dir,
                check_images=not args.no_images,
                config=config,
                progress=progress,
                full=args.full,
                seal_checkpoint=not args.no_checkpoint,
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
    what = (
        "the whole chain" if r["mode"] == "full" else f"the links after seq {r['checked_from_seq']}"
    )
    rate = "" if r["records_per_s"] is None else f", {r['records_per_s']:.0f} records/s"
    print(f"checked {what} in {r['elapsed_s']:.2f} s{rate}")
    if r["ok"]:
        print("OK: chain, signatures, images and audit log all hold")
    else:
        first = r["first_broken"]
        print(
            "BROKEN: "
            + ("no single record named" if first is None else f"first broken record: {first}")
        )
        for p in r["problems"]:
            where = p.get("event_id") or (f"seq {p['seq']}" if "seq" in p else "")
            if p.get("where") == "audit" and p.get("counter") is not None:
                where = f"audit entry {p['counter']}"
            print(f"  {p['where']:<10} {where}: {p['problem']}")
        if r["problems_omitted"]:
            print(f"  … and {r['problems_omitted']} more problems of the same walk")
    cp = r["checkpoint_written"]
    print(
        f"checkpoint sealed at seq {cp['seq']}" if cp else r["checkpoint_note"] or "no checkpoint"
    )
    if r["full_check_due"]:
        last = r["last_full_verify"] or "never"
        print(
            f"hint: the last full check was {last}; records before the checkpoint are "
            "re-checked only by `roadside-agent verify --full` (run it weekly)"
        )
