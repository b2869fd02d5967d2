"""Shared fixtures: repository paths and the shared fixtures folder (when present); a real
Mosquitto on a free loopback port, a station database with an evidence store, and a way to
commit vehicle records the way the pipeline does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from platform_sim import PlatformSim

from agent.domain import (
    Frame,
    PlateRead,
    VehicleClass,
    VehicleEvent,
    VehicleWeighing,
    Verdict,
    VerdictStatus,
)
from agent.store import integrity
from agent.store.alarms import raise_alarm
from agent.store.db import Database
from agent.store.evidence import EvidenceStore
from agent.store.record import RecordContext, StoredRecord
from agent.uplink.client import UplinkConfig
from agent.uplink.delivery import Uplink
from drivers.clock import Clock, SystemClock

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
STATION_ID = "JS-ZJ-0001"

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DEMO_CONFIG = REPO / "firmware_config" / "examples" / "demo.toml"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED}")
    return SHARED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}: {err}") from err
            time.sleep(0.02)


@dataclass
class Mosquitto:
    """A mosquitto process with a generated config; stop, kill and restart on the same port."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    netns: str | None = None  # run inside this network namespace (``ip netns exec``)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    def write_config(self) -> None:
        lines = [
            "per_listener_settings true",
            f"listener {self.port} {self.host}",
            self.extra_config or "allow_anonymous true",
            "persistence false",
            "max_queued_messages 200000",
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            "message_size_limit 16777216",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and cannot read tmp
        self.config_file.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> None:
        assert MOSQUITTO is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_config()
        cmd = [MOSQUITTO, "-c", str(self.config_file)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log_file.read_text() if self.log_file.exists() else ""
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {err}{log}")
            if self._log_says_listening() or (self.netns is None and self._accepts()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not listen on {self.host}:{self.port}")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _log_says_listening(self) -> bool:
        return self.log_file.exists() and f"port {self.port}" in self.log_file.read_text()

    def stop(self) -> None:
        """SIGTERM and wait (a clean broker stop). Idempotent."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker dies mid-stream without a word."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        if self.log_file.exists():
            self.log_file.write_text("")  # so the next start waits for its own "listening"

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start brokers: ``mosquitto_factory(extra_config=..., netns=...)``; all stopped after."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    brokers: list[Mosquitto] = []

    def make(**kwargs: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"broker{len(brokers)}", **kwargs)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
def broker(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A plain (anonymous, no TLS) Mosquitto on a free loopback port."""
    return mosquitto_factory()


# -- the station side: database, evidence store, records --------------------------------------


@dataclass
class StationData:
    """A station's database and evidence store, and records committed like the pipeline does."""

    db: Database
    store: EvidenceStore
    clock: Clock
    data_dir: Path
    station_id: str = STATION_ID
    committed: list[StoredRecord] = field(default_factory=list)

    def alarm(self, kind: str, message: str, details: dict[str, Any] | None = None) -> str:
        """Raise an alarm the way the daemon does (:func:`agent.store.alarms.raise_alarm`)."""
        with self.db.write() as conn:
            return raise_alarm(
                conn,
                station_id=self.station_id,
                kind=kind,
                at=self.clock.now(),
                message=message,
                details=details,
            )

    def commit(
        self,
        status: VerdictStatus = VerdictStatus.WITHIN_LIMIT,
        *,
        measured_at: datetime | None = None,
        images: int = 2,
        image_bytes: int = 2000,
        lane: int = 1,
    ) -> StoredRecord:
        at = measured_at or self.clock.now()
        n = len(self.committed)
        loads = (7100, 9800, 9700, 11200, 11300, 11000)
        weighing = VehicleWeighing(
            lane=lane,
            measured_at=at,
            axle_loads_kg=loads,
            gross_kg=sum(loads),
            scale_id="wim-1",
            axle_spacings_mm=(3400, 1350, 7100, 1310, 1310),
            speed_kmh=38.5,
        )
        frames = tuple(
            Frame(
                camera_id=f"cam-{i}",
                role=("front", "rear", "side", "overview")[i % 4],
                lane=lane,
                captured_at=at,
                jpeg=(b"\xff\xd8" + bytes([n % 256, i]) * (image_bytes // 2) + b"\xff\xd9"),
            )
            for i in range(images)
        )
        overloaded = status in (VerdictStatus.OVERLOADED, VerdictStatus.WARNING)
        verdict = Verdict(
            status=status,
            limit_kg=49000,
            tolerance_kg=2450,
            over_kg=sum(loads) - 49000,
            over_pct=22.65,
            rule="order62-art3-8",
            explanation="6-axle combination over 49 000 kg" if overloaded else "within limit",
            vehicle_class=VehicleClass.COMBINATION,
        )
        event = VehicleEvent(
            weighing=weighing,
            plates=(PlateRead(text=f"苏L{n:05d}", color="yellow", confidence=0.97),),
            frames=frames,
        )
        ctx = RecordContext(
            station_id=self.station_id,
            scale_id="wim-1",
            accuracy_class="5",
            certificate="JJG907-2026-001",
            certificate_valid_until="2027-05-31",
            clock_synchronized=True,
            software_version="test",
            legal_id="RA-1",
        )
        stored = self.store.commit(event, verdict, ctx)
        self.committed.append(stored)
        return stored


def make_station(data_dir: Path, clock: Clock | None = None) -> StationData:
    db = Database(data_dir / "station.db")
    key_path = data_dir / "keys" / "station.key"
    key = integrity.load_key(key_path) if key_path.exists() else integrity.generate_key(key_path)
    store = EvidenceStore(db, data_dir, integrity.Signer(key))
    return StationData(db, store, clock or SystemClock(), data_dir)


@pytest.fixture
def station(tmp_path: Path) -> Iterator[StationData]:
    data = make_station(tmp_path / "station")
    yield data
    data.db.close()


def hours_ago(clock: Clock, hours: float) -> datetime:
    return clock.now() - timedelta(hours=hours)


# -- uplink and platform simulator ------------------------------------------------------------


def uplink_config(broker: Mosquitto, **overrides: Any) -> UplinkConfig:
    """Test timings: short ack timeout and keep-alive, reconnect every second."""
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": 5,
        "ack_timeout_s": 1.0,
        "ack_timeout_max_s": 2.0,
        "heartbeat_s": 3600.0,
        "reconnect_min_s": 1.0,
        "reconnect_max_s": 1.0,
    }
    values.update(overrides)
    return UplinkConfig(**values)


@pytest.fixture
def make_uplink() -> Iterator[Callable[..., Uplink]]:
    """``make_uplink(station, config, **kwargs)``: a started Uplink, stopped after the test."""
    made: list[Uplink] = []

    def make(data: StationData, config: UplinkConfig, *, start: bool = True, **kw: Any) -> Uplink:
        up = Uplink(
            config, station_id=data.station_id, db=data.db, store=data.store, clock=data.clock, **kw
        )
        made.append(up)
        if start:
            up.start()
        return up

    yield make
    for up in made:
        up.stop(2.0)


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., PlatformSim]]:
    """``make_sim(config, **kwargs)``: a connected platform simulator, stopped after the test."""
    made: list[PlatformSim] = []

    def make(config: UplinkConfig, **kw: Any) -> PlatformSim:
        kw.setdefault("db_path", tmp_path / f"platform{len(made)}.db")
        sim = PlatformSim(config, **kw)
        made.append(sim)
        sim.start()
        return sim

    yield make
    for sim in made:
        sim.stop()


def complete_count(sim: PlatformSim) -> int:
    return sim.count("SELECT count(*) FROM records WHERE complete_at IS NOT NULL")


def outbox_unacked(data: StationData) -> int:
    return int(
        data.db.read().execute("SELECT count(*) FROM outbox WHERE acked_at IS NULL").fetchone()[0]
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` (cheap, local) until true; fail the test naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def assert_delivered_exactly_once(data: StationData, sim: PlatformSim, window: int) -> None:
    """Every committed record stored once, intact and acked; duplicates within the window."""
    ids = [r.event_id for r in data.committed]
    stored = sim.query("SELECT event_id, receipts, record_json FROM records")
    assert sorted(r[0] for r in stored) == sorted(ids)
    by_id = {r.event_id: r.record for r in data.committed}
    for event_id, _receipts, record_json in stored:
        assert json.loads(record_json) == by_id[event_id], f"{event_id} differs from its record"
    assert complete_count(sim) == len(ids)
    duplicates = sum(r[1] for r in stored) - len(ids)
    assert duplicates <= window * 3, f"{duplicates} duplicate records on the wire"
    assert outbox_unacked(data) == 0
    assert sim.count("SELECT count(*) FROM rejected") == 0, sim.query("SELECT * FROM rejected")


def mount_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A small real tmpfs of ``size`` (e.g. "6m") for the full-disk tests; skips without root
    or where mounting is refused; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
