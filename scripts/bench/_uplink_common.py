"""Shared parts of the uplink benchmarks: a loopback Mosquitto, a station with records, the
platform simulator in its own process. Not a benchmark itself (no executable bit)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from agent.domain import (  # noqa: E402
    Frame,
    PlateRead,
    VehicleClass,
    VehicleEvent,
    VehicleWeighing,
    Verdict,
    VerdictStatus,
)
from agent.store import integrity  # noqa: E402
from agent.store.db import Database  # noqa: E402
from agent.store.evidence import EvidenceStore  # noqa: E402
from agent.store.record import RecordContext, StoredRecord  # noqa: E402

STATION_ID = "JS-BENCH-0001"
CTX = RecordContext(
    station_id=STATION_ID, scale_id="wim-1", accuracy_class="5", certificate="JJG907-1",
    certificate_valid_until="2027-05-31", clock_synchronized=True, software_version="bench",
    legal_id="RA-1",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mosquitto(directory: Path) -> Iterator[int]:
    """A loopback Mosquitto for the duration; yields its port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        sys.exit("mosquitto is not installed (apt install mosquitto)")
    port = free_port()
    conf = directory / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "max_queued_messages 1000000",
        "max_inflight_messages 100",
        "set_tcp_nodelay true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def platform_sim(port: int, db: Path) -> Iterator[subprocess.Popen[bytes]]:
    """scripts/platform_sim in its own process (its own GIL), ready when yielded."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "platform_sim"), "--port", str(port),
         "--db", str(db), "--no-images", "--report-s", "3600"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"ready" not in line:
            sys.exit(f"platform_sim did not start: {line!r}")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def open_station(directory: Path) -> tuple[Database, EvidenceStore]:
    db = Database(directory / "station.db")
    key = integrity.generate_key(directory / "keys" / "station.key")
    return db, EvidenceStore(db, directory, integrity.Signer(key))


def commit_record(
    store: EvidenceStore, at: datetime, n: int, *, images: int = 0, image_bytes: int = 0
) -> StoredRecord:
    """One vehicle as the pipeline stores it; every 10th an overloaded one."""
    loads = (7100, 9800, 9700, 11200, 11300, 11000 + n % 500)
    status = VerdictStatus.OVERLOADED if n % 10 == 0 else VerdictStatus.WITHIN_LIMIT
    weighing = VehicleWeighing(
        lane=1 + n % 2, measured_at=at, axle_loads_kg=loads, gross_kg=sum(loads),
        scale_id="wim-1", axle_spacings_mm=(3400, 1350, 7100, 1310, 1310), speed_kmh=38.5,
    )  # fmt: skip
    frames = tuple(
        Frame(camera_id=f"cam-{i}", role=("front", "rear")[i % 2], lane=1, captured_at=at,
              jpeg=b"\xff\xd8" + os.urandom(image_bytes) + b"\xff\xd9")
        for i in range(images)
    )  # fmt: skip
    verdict = Verdict(
        status=status, limit_kg=49000, tolerance_kg=2450, over_kg=sum(loads) - 49000,
        over_pct=round((sum(loads) - 49000) / 490, 2), rule="order62-art3-8",
        explanation="6-axle combination", vehicle_class=VehicleClass.COMBINATION,
    )  # fmt: skip
    event = VehicleEvent(
        weighing=weighing,
        plates=(PlateRead(text=f"苏L{n % 100000:05d}", color="yellow", confidence=0.97),),
        frames=frames,
    )
    return store.commit(event, verdict, CTX)
