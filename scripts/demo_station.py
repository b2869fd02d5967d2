"""The demo: a simulated station end to end, one line per truck, then a summary.

Started by ``./scripts/demo`` inside its own virtualenv (which installs Mosquitto with apt-get
when run as root). It starts Mosquitto on a free loopback port, the platform simulator, and the
station of ``firmware_config/examples/demo.toml`` on a fresh data directory; it prints each truck
once the platform has acknowledged it and exits 0 when every record is delivered (1 otherwise,
69 when Mosquitto is not installed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from platform_sim import PlatformSim  # noqa: E402

from agent.commands._common import format_kg  # noqa: E402
from agent.commands.verify import verify_data_dir  # noqa: E402
from agent.config import parse_config  # noqa: E402
from agent.station.supervisor import Station  # noqa: E402
from agent.store.readonly import EventFilter, events_after, open_readonly, record_counts  # noqa: E402
from drivers import traffic  # noqa: E402

DEMO_CONFIG = ROOT / "firmware_config" / "examples" / "demo.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MOSQUITTO_MISSING = (
    "Mosquitto is not installed: run 'sudo apt-get install mosquitto' (Debian, Raspberry Pi OS; "
    "./scripts/demo does it itself when run as root), then ./scripts/demo again"
)


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


@contextlib.contextmanager
def broker(workdir: Path, exe: str) -> Iterator[tuple[str, int]]:
    """Mosquitto ``exe`` on a free loopback port, for as long as the block runs."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n"
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5),
            ):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {proc.returncode}")
            time.sleep(0.05)
        yield f"Mosquitto ({exe})", port
    finally:
        proc.terminate()
        proc.wait(5)


def demo_config_text(port: int, trucks: int, rate_per_min: float) -> str:
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text, count=1)
    text = re.sub(
        r"(?m)^vehicles_per_min = .*$",
        f"vehicles_per_min = {rate_per_min}\ncount = {trucks}",
        text,
        count=1,
    )
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trucks", type=int, default=20, help="how many trucks (default 20)")
    ap.add_argument("--rate", type=float, default=60.0, help="trucks per minute (default 60)")
    ap.add_argument("--timeout", type=float, default=90.0, help="give up after this many s")
    ap.add_argument("--keep", help="keep the station's data in this folder")
    args = ap.parse_args()
    exe = mosquitto_path()
    if exe is None:
        print(MOSQUITTO_MISSING, file=sys.stderr)
        return 69
    logging.basicConfig(level=logging.WARNING, format="  [%(levelname)s] %(message)s")

    with tempfile.TemporaryDirectory(prefix="roadside-demo-") as tmp:
        work = Path(tmp)
        data_dir = Path(args.keep) if args.keep else work / "station"
        if data_dir.exists() and any(data_dir.iterdir()):
            print(f"{data_dir} is not empty; choose an empty folder for --keep", file=sys.stderr)
            return 2
        with broker(work, exe) as (broker_name, port):
            print(f"broker     {broker_name} on 127.0.0.1:{port}")
            cfg = parse_config(demo_config_text(port, args.trucks, args.rate), DEMO_CONFIG)
            sim = PlatformSim(cfg.uplink, db_path=work / "platform.db")
            sim.start()
            print(f"platform   simulator subscribed to {cfg.uplink.prefix}/+/#")
            traffic.forget_roads()
            station = Station(cfg, data_dir=data_dir)
            station.start()
            print(f"station    {cfg.station.id}, {len(cfg.lanes)} lane(s), data in {data_dir}")
            print()
            try:
                _, ok = watch(station, data_dir, args.trucks, args.timeout)
            finally:
                station.stop()
                sim.stop()
            result = verify_data_dir(data_dir)
            print(
                f"verify     {result['records']} records, {result['audit_entries']} audit entries:"
                + (
                    " chain, signatures, photos and audit log hold"
                    if result["ok"]
                    else f" BROKEN at {result['first_broken']}"
                )
            )
    return 0 if ok and result["ok"] else 1


def watch(station: Station, data_dir: Path, trucks: int, timeout_s: float) -> tuple[int, bool]:
    """Print each record once the platform acknowledged it; the summary at the end."""
    db = open_readonly(data_dir)
    printed: set[str] = set()
    counts: dict[str, int] = {}
    missing: dict[str, int] = {}  # evidence.missing names, counted over the records
    complete = 0
    started = time.monotonic()
    deadline = started + timeout_s
    import json

    while time.monotonic() < deadline:
        delivered = [r for r in events_after(db, EventFilter(), 0) if r.acked_at is not None]
        for row in delivered:
            event_id = row.event_id
            if event_id in printed:
                continue
            printed.add(event_id)
            rec = json.loads(row.record_json)
            v, veh = rec["verdict"], rec["vehicle"]
            plate = rec["plates"][0]["text"] if rec["plates"] else "(no plate)"
            limit = (
                f"limit {format_kg(v['limit_kg'])} + {format_kg(v['tolerance_kg'])}"
                if v.get("limit_kg")
                else v.get("explanation", "")[:40]
            )
            counts[v["status"]] = counts.get(v["status"], 0) + 1
            ev = rec.get("evidence", {})
            for name in ev.get("missing", []):
                missing[name] = missing.get(name, 0) + 1
            complete += bool(ev.get("complete"))
            package = (
                f"{len(rec.get('images', []))} photos, {len(rec.get('videos', []))} clips, "
                + ("complete" if ev.get("complete") else "missing " + ",".join(ev["missing"]))
            )
            print(
                f"{event_id}  {plate:9}  {veh['axle_count']} axles  {format_kg(veh['gross_kg']):>9}"
                f"  {v['status']:13} ({limit})  [{package}]  delivered",
                flush=True,
            )
        if len(printed) >= trucks:
            break
        time.sleep(0.2)
    stored = sum(record_counts(db).values())
    db.close()
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    ok = len(printed) >= trucks
    print()
    print(
        f"summary    {len(printed)}/{trucks} trucks stored, signed and acknowledged by the platform"
        f" in {elapsed:.1f} s ({summary}); {stored} records in the station database"
        + ("" if ok else " — NOT all delivered")
    )
    print(evidence_summary(missing, complete, len(printed)))
    return len(printed), ok


def evidence_summary(missing: dict[str, int], complete: int, n: int) -> str:
    """One line: how many records have complete evidence (DESIGN §4a), and what the others lack."""
    line = f"evidence   {complete}/{n} records complete (site, verified device, photos, clips)"
    if missing:
        line += "; lacking: " + ", ".join(f"{k} ({c})" for k, c in sorted(missing.items()))
    if "clock_sync" in missing:
        line += " — this computer's clock is not NTP-synchronised (chrony or timesyncd fixes it)"
    return line


if __name__ == "__main__":
    raise SystemExit(main())
