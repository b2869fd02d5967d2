"""Shared parts of the uplink benchmarks: a loopback Mosquitto, a station with records, the
platform simulator in its own process. Not a benchmark itself (no executable bit)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

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
from agent.uplink.client import UplinkConfig  # noqa: E402
from agent.uplink.delivery import Uplink  # noqa: E402
from agent.uplink.messages import Message, Topics, image_message  # noqa: E402
from drivers.clock import SystemClock  # noqa: E402

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
    with mosquitto_process(directory) as (port, _proc):
        yield port


@contextlib.contextmanager
def mosquitto_process(
    directory: Path, *, host: str = "127.0.0.1", netns: str | None = None, reach: str = ""
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A Mosquitto listening on ``host`` (in network namespace ``netns`` when given, via
    ``ip netns exec``, which execs it: the process is the broker); ready once it accepts on
    ``reach`` (default ``host``); yields its port and process (for its CPU time)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        sys.exit("mosquitto is not installed (apt install mosquitto)")
    port = free_port()
    conf = directory / "mosquitto.conf"
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "persistence false",
        "max_queued_messages 1000000",
        "max_inflight_messages 100",
        "set_tcp_nodelay true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen(
        [*prefix, binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port, host=reach or host)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


def wait_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def platform_sim(
    port: int, db: Path, *, host: str = "127.0.0.1", netns: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """scripts/platform_sim in its own process (its own GIL), ready when yielded."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen(
        [*prefix, sys.executable, str(ROOT / "scripts" / "platform_sim"), "--host", host,
         "--port", str(port), "--db", str(db), "--no-images", "--report-s", "3600"],
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


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's live Python threads so far, by thread name (paho's
    network thread is ``paho-mqtt-client-…``; the main thread is the bench's own loop)."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            stat = Path(f"/proc/self/task/{t.native_id}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = "paho-network" if t.name.startswith("paho-mqtt-client") else t.name
        out[name] = out.get(name, 0.0) + _stat_cpu_s(stat)
    return out


def _stat_cpu_s(stat: str) -> float:
    # fields after the parenthesised command name; utime and stime are the 14th and 15th
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Messages handed to paho and not yet PUBACKed in the baseline loop.
OUTSTANDING = 10_000


def raw_publish_loop(
    port: int, messages: Iterable[Message], count: int, inflight: int,
    host: str = "127.0.0.1",
) -> float:  # fmt: skip
    """Seconds for a bare paho client to get ``count`` messages PUBACKed at QoS 1.

    At most ``OUTSTANDING`` messages are handed to paho at once: its message ids are 16 bits,
    so more would collide (and any real sender bounds its queue anyway). ``messages`` may be a
    generator (photos read from their files as they go, as the uplink does).
    """
    done = threading.Event()
    room = threading.Semaphore(OUTSTANDING)
    acked = [0]

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
        room.release()
        acked[0] += 1
        if acked[0] == count:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    t0 = time.perf_counter()
    for m in messages:
        room.acquire()
        client.publish(m.topic, m.payload, qos=1, properties=m.properties)
    if not done.wait(900):
        sys.exit(f"baseline: only {acked[0]} of {count} PUBACKs in 900 s")
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return elapsed


def commit_backlog(
    store: EvidenceStore, db: Database, n: int, *, images: int = 0, image_bytes: int = 0
) -> float:
    """A day offline: ``n`` records committed in one transaction; returns the seconds it took.

    The benchmark is the drain, not the ingest (``ingest``, ``ingest-images`` measure that):
    the photo files are written without their fsyncs here (``os.fsync`` is a no-op while the
    backlog is made, put back after), else 40 000 photos on a shared disk take longer than
    the drain itself. The store's code and the files it writes are the same.
    """
    start = datetime.now().astimezone() - timedelta(days=1)
    t0 = time.perf_counter()
    fsync = os.fsync
    os.fsync = lambda fd: None
    try:
        with db.write():
            for i in range(n):
                commit_record(
                    store, start + timedelta(seconds=i * 0.8), i, images=images,
                    image_bytes=image_bytes,
                )  # fmt: skip
    finally:
        os.fsync = fsync
    return time.perf_counter() - t0


def backlog_messages(db: Database, store: EvidenceStore, root: str) -> Iterator[Message]:
    """What the uplink will publish for the backlog, in queue order: each record's photos (read
    from their files, with the same user properties) and then its stored JSON."""
    topics = Topics(root)
    refs = [r[0] for r in db.read().execute("SELECT ref FROM outbox ORDER BY id")]
    for ref in refs:
        for name, sha256, path in store.image_files(ref):
            yield image_message(topics, ref, name, sha256, path)[0]
        yield Message(topics.events, integrity.canonical_json(store.get(ref)))


def backlog_size(db: Database, store: EvidenceStore) -> tuple[int, int]:
    """``(messages, payload bytes)`` of the whole backlog."""
    count = total = 0
    for ref, image_bytes in db.read().execute(
        "SELECT o.ref, (SELECT coalesce(sum(bytes), 0) FROM images i WHERE i.event_id = o.ref)"
        " FROM outbox o ORDER BY o.id"
    ):
        count += 1 + len(store.image_files(ref))
        total += image_bytes + len(integrity.canonical_json(store.get(ref)))
    return count, total


def wait_platform_records(platform_db: Path, n: int, timeout_s: float = 900.0) -> None:
    """Until the simulator's store holds ``n`` records."""
    platform = sqlite3.connect(platform_db)
    deadline = time.monotonic() + timeout_s
    try:
        while platform.execute("SELECT count(*) FROM records").fetchone()[0] < n:
            if time.monotonic() > deadline:
                sys.exit(f"the platform simulator did not store {n} records in {timeout_s} s")
            time.sleep(0.05)
    finally:
        platform.close()


def drain(
    config: UplinkConfig, db: Database, store: EvidenceStore, pids: dict[str, int]
) -> dict[str, object]:
    """Start the uplink on the backlog and wait until the platform acknowledged all of it.

    Returns ``drain_s``, the uplink's counters, and where the CPU went meanwhile: this process
    (the agent: its threads by name), and each process of ``pids`` (the broker, the simulator).
    """
    up = Uplink(config, station_id=STATION_ID, db=db, store=store, clock=SystemClock())
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    agent_before, threads_before = cpu_s(), thread_cpu_s()
    t0 = time.perf_counter()
    up.start()
    conn = db.read()
    while conn.execute("SELECT count(*) FROM outbox WHERE acked_at IS NULL").fetchone()[0]:
        time.sleep(0.05)
        if time.perf_counter() - t0 > 1800:
            sys.exit("drain did not finish within 30 minutes")
    drain_s = time.perf_counter() - t0
    cpu = {"agent": cpu_s() - agent_before}
    cpu.update({name: cpu_s(pid) - before[name] for name, pid in pids.items()})
    threads = {
        name: round(t - threads_before.get(name, 0.0), 2)
        for name, t in thread_cpu_s().items()
        if t - threads_before.get(name, 0.0) >= 0.01
    }
    stats = up.stats()
    up.stop(5)
    total = sum(cpu.values()) or 1.0
    return {
        "drain_s": drain_s,
        "resent": stats["resent"],
        "acked": stats["acked"],
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_share": {k: round(v / total, 3) for k, v in cpu.items()},
        "agent_threads_cpu_s": threads,
        "agent_cpu_ms_per_record": round(1000 * cpu["agent"] / max(1, stats["acked"]), 3),
    }
