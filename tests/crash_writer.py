"""Commits vehicle records with images as fast as it can, for the SIGKILL crash test.

Run as ``python tests/crash_writer.py DATA_DIR [IMAGE_BYTES]``. It opens the store like the
station does (``recover()`` first), then loops: commit a record with two images and a video clip
(four frames, DESIGN §4a), and only after
``commit`` returned print ``committed <event_id> <seq>`` and flush. Anything printed is a record
the station promised to keep.

Also the helpers other evidence tests build records with (a real JPEG from Pillow, a verdict
of the chosen status).
"""

from __future__ import annotations

import io
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.domain import (
    Clip,
    Frame,
    PlateRead,
    VehicleClass,
    VehicleEvent,
    VehicleWeighing,
    Verdict,
    VerdictStatus,
)
from agent.store.db import Database
from agent.store.evidence import EvidenceConfig, EvidenceStore
from agent.store.keys import load_signer
from agent.store.record import RecordContext

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 26, 10, 30, 15, 120000, tzinfo=CST)
CTX = RecordContext(
    station_id="JS-ZJ-0001",
    scale_id="wim-1",
    accuracy_class="5",
    certificate="JJG907-2026-0042",
    certificate_valid_until="2027-05-31",
    clock_synchronized=True,
    software_version="0.1.0",
    legal_id="0" * 64,
    audit_counter=0,
)


def jpeg(n: int, size: int = 0) -> bytes:
    """A real JPEG that differs per ``n``; padded with a COM-free trailer to ``size`` bytes."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (160, 90), ((n * 37) % 256, (n * 91) % 256, 120))
    ImageDraw.Draw(img).text((8, 30), f"苏L{n:05d}"[1:], fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    data = buf.getvalue()
    if size > len(data):
        data += os.urandom(size - len(data))  # bytes after EOI: viewers ignore them
    return data


def make_event(
    n: int,
    *,
    at: datetime | None = None,
    images: int = 2,
    image_bytes: int = 0,
    axle_loads_kg: tuple[int, ...] = (7100, 9800, 9700, 11200, 11300, 11000),
    clip_frames: int = 0,
) -> VehicleEvent:
    t = at or (T0 + timedelta(seconds=n))
    roles = ["front", "rear", "side", "overview"]
    weighing = VehicleWeighing(
        lane=1,
        measured_at=t,
        axle_loads_kg=axle_loads_kg,
        gross_kg=sum(axle_loads_kg),
        scale_id="wim-1",
        axle_spacings_mm=(3400, 1350, 7100, 1310, 1310)[: len(axle_loads_kg) - 1],
        speed_kmh=38.5,
        raw={"line": f"L1,{n}"},
    )
    frames = tuple(
        Frame(
            camera_id=f"cam-{roles[i % 4]}",
            role=roles[i % 4],
            lane=1,
            captured_at=t,
            jpeg=jpeg(n * 10 + i, image_bytes),
        )
        for i in range(images)
    )
    plate = PlateRead(text=f"苏L{n % 100000:05d}", color="yellow", confidence=0.97)
    clips = ()
    if clip_frames:
        clip_at = [t + timedelta(seconds=(i - clip_frames // 2) / 5) for i in range(clip_frames)]
        shots = tuple(
            Frame("cam-front", "front", 1, c, jpeg(n * 1000 + i, image_bytes))
            for i, c in enumerate(clip_at)
        )
        clips = (Clip("cam-front", "front", 1, clip_at[0], clip_at[-1], shots),)
    return VehicleEvent(weighing=weighing, plates=(plate,), frames=frames, clips=clips)


def make_verdict(
    status: VerdictStatus = VerdictStatus.OVERLOADED, gross_kg: int = 60100
) -> Verdict:
    limit = 49000
    return Verdict(
        status=status,
        limit_kg=limit,
        tolerance_kg=2450,
        over_kg=gross_kg - limit,
        over_pct=round((gross_kg - limit) / limit * 100, 2),
        rule="order62-art3-8",
        explanation="6-axle combination: gross over the 49 000 kg limit",
        tolerance_policy="percent:5",
        vehicle_class=VehicleClass.COMBINATION,
    )


def open_store(data_dir: Path) -> tuple[Database, EvidenceStore]:
    db = Database(data_dir / "station.db")
    signer = load_signer(EvidenceConfig(), data_dir, create_if_missing=True)
    return db, EvidenceStore(db, data_dir, signer)


def main() -> int:
    data_dir = Path(sys.argv[1])
    image_bytes = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    _db, store = open_store(data_dir)
    store.recover()
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        status = VerdictStatus.OVERLOADED if n % 3 == 0 else VerdictStatus.WITHIN_LIMIT
        stored = store.commit(
            make_event(n, images=2, image_bytes=image_bytes, clip_frames=4),
            make_verdict(status),
            CTX,
        )
        sys.stdout.write(f"committed {stored.event_id} {stored.seq}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())


def cli(argv: list[str]) -> int:
    """``roadside-agent ARGV`` in-process; falls back to the evidence commands alone while the
    CLI on this branch still lists subcommands that other branches are writing."""
    import argparse
    import importlib

    from agent.cli import main as cli_main

    try:
        return cli_main(argv)
    except ModuleNotFoundError:
        pass
    parser = argparse.ArgumentParser(prog="roadside-agent")
    sub = parser.add_subparsers(dest="command")
    for name in ("keygen", "verify", "export"):
        importlib.import_module(f"agent.commands.{name}").add_parser(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
