"""``roadside-agent status``: one screen for a technician: daemon, devices, queue, disk, clock."""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.commands._common import add_location_args, location_of, open_db


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="one screen: devices, queue, last vehicles, disk, broker",
        description="Show the station's state from its data directory (works whether or not "
        "the daemon is running).",
    )
    add_location_args(p)
    p.set_defaults(func=run)
    return p


def service_state(unit: str = "roadside-agent.service") -> str | None:
    """``systemctl is-active`` of the unit (``None`` where systemd is not running)."""
    import subprocess

    if not shutil.which("systemctl") or not Path("/run/systemd/system").is_dir():
        return None
    try:
        out = subprocess.run(
            ["systemctl", "is-active", unit],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def collect(data_dir: Any) -> dict[str, Any]:
    from agent.store import outbox, readonly

    conn = open_db(data_dir, "status")
    daemon: dict[str, Any] = {}
    status_file = data_dir / "status.json"
    if status_file.exists():
        try:
            daemon = json.loads(status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            daemon = {}
    try:
        pending, oldest = outbox.pending_summary(conn)
        counts = readonly.record_counts(conn)
        last = readonly.last_vehicles(conn, 10)
    finally:
        conn.close()
    disk = shutil.disk_usage(data_dir)
    return {
        "service": service_state(),
        "data_dir": str(data_dir),
        "daemon": daemon,
        "queue": {"pending": pending, "oldest_pending": oldest},
        "records": counts,
        "last_vehicles": last,
        "disk": {"free_bytes": disk.free, "total_bytes": disk.total},
    }


def run(args: argparse.Namespace) -> int:
    doc = collect(location_of(args, "status").data_dir)
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=1))
        return 0
    _print_daemon(doc["daemon"])
    _print_store(doc)
    return 0


def _print_daemon(d: dict[str, Any]) -> None:
    """What the daemon last wrote in ``status.json``: itself, devices, broker, clock, stages."""
    written = d.get("written_at")
    age = ""
    if written:
        try:
            age_s = (datetime.now().astimezone() - datetime.fromisoformat(written)).total_seconds()
            age = f" (status written {age_s:.0f} s ago)"
        except ValueError:
            pass
    print(
        f"station   {d.get('station_id', '?')}  software {d.get('software_version', '?')}  "
        f"{'running' if d.get('running') else 'not running'}{age}"
    )
    for dev_id, dev in sorted(d.get("devices", {}).items()):
        print(
            f"device    {dev_id:16} {dev.get('kind', ''):12} {dev.get('state', '?'):8} "
            f"last good {dev.get('last_good_at') or '-'}  {dev.get('last_error', '')}"
        )
    up = d.get("uplink", {})
    if up:
        unacked = up.get("oldest_unacked_age_s")
        print(
            f"broker    {up.get('broker', '?')} "
            f"{'connected' if up.get('connected') else 'NOT connected'}"
            f"  in flight {up.get('in_flight', 0)}"
            + (f"  oldest unacked {unacked:.0f} s" if isinstance(unacked, (int, float)) else "")
            + (f"  last error: {up['last_error']}" if up.get("last_error") else "")
        )
    clock = d.get("clock", {})
    if clock:
        sync = clock.get("synchronized")
        step = clock.get("last_step")
        print(
            "clock     "
            + {True: "NTP-synchronised", False: "NOT synchronised (records are flagged)"}.get(
                sync, "sync state unknown"
            )
            + (
                f"; {clock.get('steps')} step(s), last stepped by {step['step_s']:+.0f} s "
                f"at {step['detected_at']} (records across it carry clock.stepped_s)"
                if step
                else ""
            )
        )
    if d.get("stages"):
        slow = {n: age for n, age in d["stages"].items() if age > 10}
        print(
            "stages    "
            + (
                "all beating"
                if not slow
                else ", ".join(f"{n} silent {a:.0f} s" for n, a in slow.items())
            )
        )


def _print_store(doc: dict[str, Any]) -> None:
    """What the database and the disk say: queue, records, free space, the last vehicles."""
    q = doc["queue"]
    print(f"queue     {q['pending']} waiting for platform ack, oldest {q['oldest_pending'] or '-'}")
    recs = doc["records"]
    print("records   " + ", ".join(f"{k} {v}" for k, v in sorted(recs.items())) or "none")
    free_gb = doc["disk"]["free_bytes"] / 1e9
    print(f"disk      {free_gb:.1f} GB free in {doc['data_dir']}")
    print("last vehicles:")
    for v in doc["last_vehicles"]:
        print(
            f"  {v['event_id']}  lane {v['lane']}  {v['plate'] or '(no plate)':10} "
            f"{v['gross_kg']:>6} kg  {v['status']:13} "
            f"{'delivered' if v['delivered'] else 'queued'}"
        )
