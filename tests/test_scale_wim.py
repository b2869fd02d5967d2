"""WIM controller backends: Modbus record polling and text line records."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.scale import ScaleError, WimRecord
from drivers.scale.modbus_sim import ModbusDeviceSimulator
from drivers.scale.registermap import MAPS_DIR as MAPS
from drivers.scale.registermap import load_map
from drivers.scale.wim_lines import WimLinesConfig, WimLinesScale, format_csv
from drivers.scale.wim_modbus import WimModbusConfig, WimModbusScale

pytestmark = pytest.mark.timeout(60)

SIX_AXLES = [7100, 9800, 9700, 11200, 11300, 11000]
SIX_SPACINGS = [3400, 1350, 7100, 1310, 1310]


def next_record(scale: WimModbusScale | WimLinesScale, timeout_s: float = 3.0) -> WimRecord:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = scale.recv(0.3)
        if isinstance(m, WimRecord):
            return m
    raise AssertionError("no record")


@pytest.fixture
def wim_sim() -> Iterator[ModbusDeviceSimulator]:
    sim = ModbusDeviceSimulator("generic_wim").start()
    yield sim
    sim.stop()


def test_wim_modbus_reads_a_record_when_the_counter_changes(wim_sim: ModbusDeviceSimulator) -> None:
    wim_sim.push_record([5000, 6000], axle_spacings_mm=[4000])  # before start: already delivered
    cfg = WimModbusConfig(
        type="wim_modbus", host="127.0.0.1", port=wim_sim.port, poll_interval_s=0.01
    )
    with WimModbusScale(cfg, lane=2) as scale:
        assert scale.recv(0.2) is None
        assert scale.health.state == "ok", "a quiet road with a live controller is healthy"
        wim_sim.push_record(SIX_AXLES, axle_spacings_mm=SIX_SPACINGS, speed_kmh=38.5, lane=2)
        rec = next_record(scale)
        assert rec.axle_loads_kg == tuple(SIX_AXLES)
        assert rec.axle_spacings_mm == tuple(SIX_SPACINGS)
        assert rec.gross_kg == sum(SIX_AXLES)
        assert rec.speed_kmh == pytest.approx(38.5)
        assert rec.lane == 2
        assert rec.raw["registers"], "the block is kept unchanged"
        # Status bits become flags; missed records are flagged.
        wim_sim.push_record([7000, 8000], axle_spacings_mm=[4200])
        wim_sim.push_record([7000, 8000], axle_spacings_mm=[4200], status=0b1)
        rec = next_record(scale)
        assert "straddling" in rec.flags
        assert "records_missed" in rec.flags
        assert rec.raw["missed"] == 1


def test_wim_modbus_config_checks_transport() -> None:
    with pytest.raises(ValueError, match="serial port"):
        WimModbusConfig(type="wim_modbus", port=502)
    with pytest.raises(ValueError, match="TCP port"):
        WimModbusConfig(type="wim_modbus", host="10.0.0.5", port="/dev/ttyUSB0")


def test_wim_modbus_rejects_a_map_without_record(wim_sim: ModbusDeviceSimulator) -> None:
    cfg = WimModbusConfig(type="wim_modbus", host="127.0.0.1", port=wim_sim.port, map="generic")
    with pytest.raises(ScaleError, match="no \\[record\\]"):
        WimModbusScale(cfg)


class LineServer:
    """A WIM controller that serves record lines to whoever connects (TCP)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conn: socket.socket | None = None
        self.connected = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            self.conn, _ = self.sock.accept()
        except OSError:
            return
        self.connected.set()

    def send(self, text: str) -> None:
        assert self.connected.wait(5)
        assert self.conn is not None
        self.conn.sendall(text.encode("utf-8"))

    def close(self) -> None:
        if self.conn:
            self.conn.close()
        self.sock.close()


def test_wim_lines_csv_over_tcp() -> None:
    server = LineServer()
    cfg = WimLinesConfig(type="wim_lines", port=f"socket://127.0.0.1:{server.port}")
    scale = WimLinesScale(cfg)
    try:
        assert scale.recv(0.2) is None  # opens the connection; a quiet road is no fault
        server.send("garbage line without enough columns\r\n")
        server.send(format_csv(1, 38.5, SIX_AXLES, SIX_SPACINGS))
        rec = next_record(scale)
        assert rec.axle_loads_kg == tuple(SIX_AXLES)
        assert rec.axle_spacings_mm == tuple(SIX_SPACINGS)
        assert rec.gross_kg == 60100
        assert rec.raw["axle_count"] == 6
        assert rec.raw["line"].startswith("1,38.5,6,60100")
    finally:
        scale.shutdown()
        server.close()


def test_wim_lines_kv_with_field_map_and_tonnes() -> None:
    cfg = WimLinesConfig(
        type="wim_lines",
        port="loop://",
        format="kv",
        fields={"gross_kg": "GW", "axle_loads_kg": "AW", "speed_kmh": "V", "axle_count": "AX"},
        weight_unit="t",
        list_separator="/",
    )
    scale = WimLinesScale(cfg)
    try:
        scale.stream.write(b"LANE=1 GW=18.20 AX=2 AW=6.10/12.10 V=42.0\n")
        rec = next_record(scale)
        assert rec.axle_loads_kg == (6100, 12100)
        assert rec.gross_kg == 18200
        assert rec.speed_kmh == 42.0
    finally:
        scale.shutdown()


def test_wim_lines_json() -> None:
    cfg = WimLinesConfig(type="wim_lines", port="loop://", format="json")
    scale = WimLinesScale(cfg, lane=3)
    try:
        scale.stream.write(
            b'{"gross_kg": 25000, "axle_loads_kg": [6000, 9500, 9500],'
            b' "axle_spacings_mm": [4000, 1350], "speed_kmh": 55.1}\n'
        )
        rec = next_record(scale)
        assert rec.axle_loads_kg == (6000, 9500, 9500)
        assert rec.lane == 3
    finally:
        scale.shutdown()


def test_wim_lines_captured_kv_stream() -> None:
    """Regression: CRLF lines, an empty line, a noisy line, a line cut by a disconnect."""
    from pathlib import Path

    data = (Path(__file__).parent / "fixtures" / "scale" / "wim_kv_t.txt").read_bytes()
    cfg = WimLinesConfig(
        type="wim_lines",
        port="loop://",
        format="kv",
        fields={
            "gross_kg": "GW",
            "axle_count": "AX",
            "axle_loads_kg": "AW",
            "axle_spacings_mm": "SP",
            "speed_kmh": "V",
            "lane": "LANE",
            "flags": "ST",
        },
        flag_map={"OK": "", "STRADDLE": "straddling"},
        weight_unit="t",
        spacing_unit="m",
        list_separator="/",
    )
    scale = WimLinesScale(cfg)
    records: list[WimRecord] = []
    try:
        scale.stream.write(data)
        deadline = time.monotonic() + 3
        while len(records) < 3 and time.monotonic() < deadline:
            m = scale.recv(0.2)
            if isinstance(m, WimRecord):
                records.append(m)
    finally:
        scale.shutdown()
    assert [r.gross_kg for r in records] == [18200, 61940, 24960]
    assert records[1].axle_loads_kg == (7120, 9810, 9700, 11800, 11810, 11700)
    assert records[1].axle_spacings_mm == (3400, 1350, 7100, 1310, 1310)
    assert records[1].lane == 2
    assert records[2].flags == {"straddling"}
    assert not records[0].flags


def test_wim_modbus_failed_record_read_is_read_again(wim_sim: ModbusDeviceSimulator) -> None:
    """Regression (issue 15.1): the counter was stored before the block was read, so a
    vehicle whose block read failed once was never delivered and nobody knew."""
    cfg = WimModbusConfig(
        type="wim_modbus", host="127.0.0.1", port=wim_sim.port, poll_interval_s=0.01
    )
    with WimModbusScale(cfg) as scale:
        assert scale.recv(0.2) is None
        start, _count = scale._block
        wim_sim.fail_reads(start, times=1)  # exception 04 on the block read
        wim_sim.push_record(SIX_AXLES, axle_spacings_mm=SIX_SPACINGS)
        errors: list[str] = []
        deadline = time.monotonic() + 5
        rec = None
        while rec is None and time.monotonic() < deadline:
            try:
                m = scale.recv(0.3)
            except ScaleError as err:
                errors.append(str(err))
                continue
            if isinstance(m, WimRecord):
                rec = m
        assert errors and "exception" in errors[0]
        assert rec is not None, "the vehicle was dropped"
        assert rec.axle_loads_kg == tuple(SIX_AXLES)
        assert "records_missed" not in rec.flags


def test_wim_modbus_undecodable_record_is_reported_missed(tmp_path: Path) -> None:
    """A record block that never decodes (float32 NaN) is given up after three reads and
    the next record carries records_missed: never a silent drop, never a wedge."""
    wim_map = tmp_path / "float_wim.toml"
    wim_map.write_text(
        (MAPS / "generic_wim.toml")
        .read_text()
        .replace(
            'gross_kg = { address = 102, type = "uint32", scale = 10.0 }',
            'gross_kg = { address = 102, type = "float32" }',
        )
    )
    sim = ModbusDeviceSimulator(str(wim_map)).start()
    try:
        cfg = WimModbusConfig(
            type="wim_modbus",
            host="127.0.0.1",
            port=sim.port,
            map=str(wim_map),
            poll_interval_s=0.01,
            reconnect_max_s=0.2,
        )
        with WimModbusScale(cfg) as scale:
            assert scale.recv(0.2) is None
            sim.push_record([7000, 8000], gross_kg=15000)
            spec = load_map(str(wim_map)).record.gross_kg  # type: ignore[union-attr]
            sim.registers[spec.address : spec.address + 2] = [0x7FC0, 0x0000]  # NaN
            errors: list[str] = []
            deadline = time.monotonic() + 5
            while len(errors) < 3 and time.monotonic() < deadline:
                try:
                    scale.recv(0.3)
                except ScaleError as err:
                    errors.append(str(err))
            assert len(errors) == 3 and "given up" in errors[-1]
            sim.push_record([6000, 9000], gross_kg=15000)
            rec = next_record(scale)
            assert rec.gross_kg == 15000 and rec.axle_loads_kg == (6000, 9000)
            assert "records_missed" in rec.flags and rec.raw["missed"] == 1
    finally:
        sim.stop()
