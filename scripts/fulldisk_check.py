#!/usr/bin/env python3
"""The full-disk attack of issue 17, as steps a test (or a technician) can run against a
station's data directory, in-process or under the real unit:

* ``fill DIR [--leave-kb N]``: write ``DIR/fulldisk.filler`` until the file system is full
  (ENOSPC), leaving ``N`` KB; prints the bytes written;
* ``report DIR``: one JSON line: records kept, records stored without photos for a full disk,
  tombstones, last seq, alarm kinds, free bytes, the database reserve held, the daemon's blocked
  stages (``status.json``) and whether ``verify`` holds;
* ``release DIR``: delete the filler.

From Python (``sys.path`` holding ``scripts/``): ``fulldisk_check.fill(path)``,
``fulldisk_check.report(path)``, ``fulldisk_check.release(path)``.

Exit: 0; 1 when ``report`` finds ``verify`` failing; 66 without a station database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILLER = "fulldisk.filler"
CHUNK = 1024 * 1024


def fill(data_dir: Path, leave_bytes: int = 0) -> int:
    """Fill the file system of ``data_dir`` up to ``leave_bytes`` free; returns bytes written."""
    path = Path(data_dir) / FILLER
    written = 0
    with path.open("ab") as fh:
        for size in (CHUNK, 64 * 1024, 4096, 512):
            while shutil.disk_usage(data_dir).free - size >= leave_bytes:
                try:
                    fh.write(b"\0" * size)
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError:
                    break
                written += size
    return written


def release(data_dir: Path) -> None:
    (Path(data_dir) / FILLER).unlink(missing_ok=True)


def report(data_dir: Path) -> dict[str, Any]:
    """What the station kept through the attack (raises ``FileNotFoundError`` without a db)."""
    from agent.commands.verify import verify_data_dir
    from agent.store.readonly import open_readonly, storage_figures
    from agent.store.reserve import RESERVE_FILE

    data_dir = Path(data_dir)
    conn = open_readonly(data_dir)
    try:
        figures: dict[str, Any] = dict(storage_figures(conn))
    finally:
        conn.close()
    status: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        status = json.loads((data_dir / "status.json").read_text(encoding="utf-8"))
    reserve = data_dir / RESERVE_FILE
    result = verify_data_dir(data_dir, check_images=True)
    figures.update(
        free_bytes=shutil.disk_usage(data_dir).free,
        reserve_bytes=reserve.stat().st_size if reserve.exists() else 0,
        blocked_stages=status.get("blocked_stages", {}),
        verify_ok=result["ok"],
        verify_problems=result["problems"][:5],
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fill a station's disk, report what it kept")
    ap.add_argument("action", choices=["fill", "report", "release"])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--leave-kb", type=int, default=0)
    args = ap.parse_args(argv)
    if args.action == "fill":
        print(fill(args.data_dir, args.leave_kb * 1024))
        return 0
    if args.action == "release":
        release(args.data_dir)
        return 0
    try:
        doc = report(args.data_dir)
    except FileNotFoundError as err:
        print(f"fulldisk_check: {err}", file=sys.stderr)
        return 66
    print(json.dumps(doc, ensure_ascii=False))
    return 0 if doc["verify_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
