"""Modbus TCP / RTU backends against a real pymodbus server (TCP loopback, RTU over a pty pair)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.scale import SCALES, DetectorEdge, Scale, ScaleError, WeightSample
from drivers.scale.modbus import ModbusRtuConfig, ModbusRtuScale, ModbusTcpConfig, ModbusTcpScale
from drivers.scale.modbus_sim import ModbusDeviceSimulator, constant
from drivers.scale.registermap import ValueSpec, available_maps, load_map

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tcp_sim() -> Iterator[ModbusDeviceSimulator]:
    sim = ModbusDeviceSimulator("generic", constant(23450.0), device_ids=(1, 2)).start()
    yield sim
    sim.stop()


def tcp_scale(sim: ModbusDeviceSimulator, **kw: object) -> ModbusTcpScale:
    cfg = ModbusTcpConfig.model_validate(
        {"type": "modbus_tcp", "host": "127.0.0.1", "port": sim.port, "timeout_s": 0.3} | kw
    )
    return ModbusTcpScale(cfg)


def next_sample(scale: ModbusTcpScale | ModbusRtuScale, timeout_s: float = 3.0) -> WeightSample:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = scale.recv(0.5)
        if isinstance(m, WeightSample):
            return m
    raise AssertionError("no weight sample")


def first_sample_within(scale: Scale, seconds: float) -> WeightSample | None:
    """The first weight the scale delivers within ``seconds``, riding out its reconnect."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            m = scale.recv(0.5)
        except ScaleError:
            continue
        if isinstance(m, WeightSample):
            return m
    return None


def test_registry_names_are_fixed() -> None:
    for name in ("modbus_rtu", "modbus_tcp", "xk3190", "toledo", "wim_modbus", "wim_lines"):
        assert name in SCALES.names()
    assert SCALES.get("modbus_tcp") is ModbusTcpScale


def test_every_shipped_map_loads_and_names_its_source() -> None:
    names = available_maps()
    assert {"generic", "generic_wim"} <= set(names)
    assert len(names) >= 4
    for name in names:
        m = load_map(name)
        assert m.source, f"{name} must say where its layout comes from"


@pytest.mark.parametrize(
    ("type_", "word", "byte", "value"),
    [
        ("int32", "big", "big", -123456),
        ("int32", "little", "big", 987654),
        ("uint32", "big", "little", 4000000),
        ("float32", "little", "little", 31250.5),
        ("int16", "big", "big", -300),
        ("uint16", "big", "little", 65000),
    ],
)
def test_value_encoding_round_trips(type_: str, word: str, byte: str, value: float) -> None:
    spec = ValueSpec.model_validate(
        {"address": 10, "type": type_, "word_order": word, "byte_order": byte}
    )
    regs = spec.encode(value)
    assert spec.decode(regs, 10) == [pytest.approx(value)]


def test_known_word_orders_decode_like_the_manuals() -> None:
    # 0x0001E240 = 123456: ABCD -> [0x0001, 0xE240]; CDAB -> [0xE240, 0x0001];
    # BADC -> [0x0100, 0x40E2].
    abcd = ValueSpec(address=0, type="int32")
    cdab = ValueSpec(address=0, type="int32", word_order="little")
    badc = ValueSpec(address=0, type="int32", byte_order="little")
    assert abcd.decode([0x0001, 0xE240], 0) == [123456.0]
    assert cdab.decode([0xE240, 0x0001], 0) == [123456.0]
    assert badc.decode([0x0100, 0x40E2], 0) == [123456.0]


def test_tcp_reads_weight_and_status(tcp_sim: ModbusDeviceSimulator) -> None:
    with tcp_scale(tcp_sim) as scale:
        s = next_sample(scale)
        assert s.gross_kg == 23450.0
        assert s.stable
        assert scale.health.state == "ok"
        assert scale.raw_tail, "raw frames are kept"
    tcp_sim.set_script(constant(61000.0, stable=False))
    with tcp_scale(tcp_sim) as scale:
        s = next_sample(scale)
        assert s.gross_kg == 61000.0
        assert not s.stable
        assert "motion" in s.flags


def test_tonne_map_and_unit_override(tcp_sim: ModbusDeviceSimulator) -> None:
    with tcp_scale(tcp_sim, unit="t") as scale:
        # The device shows 23450 in a map whose unit is kg; "t" says the display is tonnes.
        assert next_sample(scale).gross_kg == pytest.approx(23450.0 * 1000)


def test_detector_edges(tcp_sim: ModbusDeviceSimulator) -> None:
    with tcp_scale(tcp_sim, detector=True, poll_interval_s=0.01) as scale:
        next_sample(scale)
        tcp_sim.set_detector(True)
        edges: list[DetectorEdge] = []
        deadline = time.monotonic() + 3
        while not edges and time.monotonic() < deadline:
            m = scale.recv(0.5)
            if isinstance(m, DetectorEdge):
                edges.append(m)
        assert edges and edges[0].occupied
        tcp_sim.set_detector(False)
        deadline = time.monotonic() + 3
        while len(edges) < 2 and time.monotonic() < deadline:
            m = scale.recv(0.5)
            if isinstance(m, DetectorEdge):
                edges.append(m)
        assert [e.occupied for e in edges] == [True, False]


def test_dead_device_does_not_stall_the_other(tcp_sim: ModbusDeviceSimulator) -> None:
    """Two devices behind one gateway share a link; a silent one backs off, the other polls."""
    good = tcp_scale(tcp_sim, device_id=1, poll_interval_s=0.0)
    dead = tcp_scale(tcp_sim, device_id=2, poll_interval_s=0.0)
    assert good.link is dead.link, "one owner and one lock per line"
    tcp_sim.set_silent(2)
    try:
        with pytest.raises(ScaleError, match=r"unit 2"):
            dead.recv(1.0)
        assert dead.health.state == "fault"
        # While the dead one waits out its backoff, the good one polls at full rate.
        t0 = time.monotonic()
        n = 0
        requests_before = tcp_sim.requests
        while time.monotonic() - t0 < 1.0:
            with contextlib.suppress(ScaleError):
                dead.recv(0.0)
            n += isinstance(good.recv(0.5), WeightSample)
        assert n > 20
        dead_attempts = tcp_sim.requests - requests_before - n
        assert dead_attempts <= 4, "the dead device is retried on its backoff, not every poll"
        tcp_sim.set_silent(2, False)
        assert next_sample(dead, timeout_s=5).gross_kg == 23450.0
        assert dead.health.state == "ok"
    finally:
        good.shutdown()
        dead.shutdown()


def test_server_gone_then_back(tmp_path: Path) -> None:
    sim = ModbusDeviceSimulator("generic", constant(5000.0)).start()
    port = sim.port
    scale = tcp_scale(sim, reconnect_max_s=0.5)
    try:
        assert next_sample(scale).gross_kg == 5000.0
        sim.stop()
        with pytest.raises(ScaleError, match=r"tcp://127\.0\.0\.1"):
            for _ in range(5):
                scale.recv(1.0)
        sim2 = ModbusDeviceSimulator("generic", constant(7000.0), port=port).start()
        try:
            got = first_sample_within(scale, 5.0)
            assert got is not None and got.gross_kg == 7000.0
        finally:
            sim2.stop()
    finally:
        scale.shutdown()


def test_shutdown_is_idempotent(tcp_sim: ModbusDeviceSimulator) -> None:
    scale = tcp_scale(tcp_sim)
    scale.shutdown()
    scale.shutdown()
    with pytest.raises(ScaleError):
        scale.recv(0.1)


# --- RTU over a pty pair -------------------------------------------------------------------

needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")


def _socat(a: Path, b: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "socat",
            f"pty,raw,echo=0,link={a}",
            f"pty,raw,echo=0,link={b}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while not (a.exists() and b.exists()):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("socat did not create the pty pair")
        time.sleep(0.01)
    return proc


@needs_socat
def test_rtu_over_pty_and_replug(tmp_path: Path) -> None:
    dev, peer = tmp_path / "ttyUSB-scale", tmp_path / "ttyUSB-peer"
    proc = _socat(dev, peer)
    sim = ModbusDeviceSimulator(
        "tuna_id551", constant(18200.0), serial_port=str(peer), baudrate=19200
    ).start()
    cfg = ModbusRtuConfig(
        type="modbus_rtu",
        port=str(dev),
        baudrate=19200,
        map="tuna_id551",
        timeout_s=0.3,
        reconnect_max_s=1.0,
    )
    scale = ModbusRtuScale(cfg)
    try:
        s = next_sample(scale)
        assert s.gross_kg == pytest.approx(18200.0)
        assert s.stable
        # Unplug: the adapter and its peer vanish.
        sim.stop()
        proc.terminate()
        proc.wait(5)
        with pytest.raises(ScaleError):
            for _ in range(10):
                scale.recv(0.5)
        # Plug back in: new ptys under the same names.
        proc = _socat(dev, peer)
        sim = ModbusDeviceSimulator(
            "tuna_id551", constant(18300.0), serial_port=str(peer), baudrate=19200
        ).start()
        got = first_sample_within(scale, 5.0)
        assert got is not None, "reconnected within 5 s of the port returning"
        assert got.gross_kg == pytest.approx(18300.0)
    finally:
        scale.shutdown()
        sim.stop()
        proc.terminate()
        proc.wait(5)


@needs_socat
def test_rtu_dead_device_on_the_bus_does_not_stall_the_other(tmp_path: Path) -> None:
    dev, peer = tmp_path / "ttyUSB-bus", tmp_path / "ttyUSB-peer"
    proc = _socat(dev, peer)
    sim = ModbusDeviceSimulator(
        "generic", constant(9000.0), device_ids=(1, 5), serial_port=str(peer), baudrate=38400
    ).start()
    sim.set_silent(5)

    def config(device_id: int) -> ModbusRtuConfig:
        return ModbusRtuConfig(
            type="modbus_rtu",
            port=str(dev),
            baudrate=38400,
            device_id=device_id,
            poll_interval_s=0.0,
            timeout_s=0.2,
        )

    good, dead = ModbusRtuScale(config(1)), ModbusRtuScale(config(5))
    assert good.link is dead.link

    try:
        next_sample(good)
        # Counted, not timed (the machine may be busy): every poll of the good device between
        # two failing polls of the dead one still answers within its own read timeout.
        answered = 0
        for _ in range(10):
            with contextlib.suppress(ScaleError):
                dead.recv(0.0)
            answered += isinstance(good.recv(0.5), WeightSample)
        assert dead.health.state == "fault"
        assert "no answer" in dead.health.last_error
        assert answered == 10
    finally:
        good.shutdown()
        dead.shutdown()
        sim.stop()
        proc.terminate()
        proc.wait(5)


def test_fault_log_once_then_debug_then_recovery(
    tcp_sim: ModbusDeviceSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.scale.modbus")
    scale = tcp_scale(tcp_sim, device_id=2, reconnect_max_s=0.2)
    tcp_sim.set_silent(2)
    try:
        for _ in range(3):
            with contextlib.suppress(ScaleError):
                scale.recv(1.0)
        tcp_sim.set_silent(2, False)
        next_sample(scale)
    finally:
        scale.shutdown()
    records = [r for r in caplog.records if r.name == "drivers.scale.modbus"]
    levels = [r.levelno for r in records]
    assert levels[0] == logging.ERROR
    assert levels.count(logging.ERROR) == 1
    assert logging.DEBUG in levels[1:]
    assert levels[-1] == logging.WARNING
    first = records[0].getMessage()
    assert "unit 2" in first and f"tcp://127.0.0.1:{tcp_sim.port}" in first
    assert "02 83 0b" in first, "the raw answer is in the log line"


def test_bad_register_maps_name_the_file_and_the_key(tmp_path: Path) -> None:
    from drivers.scale.base import ScaleConfigError

    with pytest.raises(ScaleConfigError, match=r"not found.*known: .*generic"):
        load_map("no_such_indicator")
    bad = tmp_path / "bad.toml"
    bad.write_text('[weight]\naddress = 0\ntype = "int24"\n', encoding="utf-8")
    with pytest.raises(ScaleConfigError, match=r"bad\.toml: weight\.type"):
        load_map(str(bad))
    far = tmp_path / "far.toml"
    far.write_text("[weight]\naddress = 0\n[status]\naddress = 300\n", encoding="utf-8")
    with pytest.raises(ScaleConfigError, match="one Modbus read"):
        load_map(str(far)).weight_block()
