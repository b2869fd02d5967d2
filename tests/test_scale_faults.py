"""Regression tests for issue 15's defects on the serial side: settings a port refuses,
over-long record lines, socket:// chunking, non-finite numbers (and the canonical JSON that
must refuse them too)."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from agent.store.integrity import NotCanonicalError, canonical_json
from drivers.scale import ScaleError, WimRecord
from drivers.scale.pty import PtyPair
from drivers.scale.stream import Reject
from drivers.scale.toledo import ToledoConfig, ToledoScale
from drivers.scale.wim_lines import MAX_LINE, Line, LineFramer, WimLinesConfig, WimLinesScale
from tests.test_probe import last_json, run_probe

pytestmark = pytest.mark.timeout(60)

if "tests.adapters" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("tests.adapters")


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyPair]:
    p = PtyPair(tmp_path / "ttyUSB0")
    yield p
    p.close()


# --- 2: settings the adapter refuses ---------------------------------------------------------


def test_refused_settings_are_a_scale_error_and_the_port_stays_closed(pty: PtyPair) -> None:
    """Regression (15.2): termios.error escaped the line owner: a traceback every second."""
    cfg = ToledoConfig(
        type="toledo", port=f"no7e1://{pty.path}", bytesize=7, parity="E", reconnect_max_s=0.2
    )
    scale = ToledoScale(cfg)
    try:
        for _ in range(2):  # the second attempt comes after the backoff: still an error
            with pytest.raises(ScaleError, match="refused the settings 9600 7E1"):
                scale.recv(1.0)
        assert scale.stream._port is None
        assert scale.health.state == "fault"
    finally:
        scale.shutdown()


def test_probe_names_refused_settings_without_a_traceback(
    pty: PtyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_probe(
        [
            "scale",
            "--type",
            "toledo",
            "--port",
            f"no7e1://{pty.path}",
            "--option",
            "bytesize=7",
            "--option",
            "parity=E",
            "--seconds",
            "0.5",
            "--json",
        ]
    )
    out = last_json(capsys.readouterr().out)
    assert code == 69
    errors = out["errors"]
    assert isinstance(errors, list) and "refused the settings" in errors[0]["message"]


# --- 5: over-long lines, socket chunks -------------------------------------------------------


def test_overlong_line_is_dropped_whole() -> None:
    """Regression (15.5): the line was cut at MAX_LINE and its tail parsed as a record."""
    framer = LineFramer("utf-8")
    tail = b"1,42.0,2,18000,6000;12000,4000\n"
    got = framer.feed(b"9" * (MAX_LINE + 10))
    got += framer.feed(tail)
    got += framer.feed(b"1,40.0,2,17000,6000;11000,4000\n")
    lines = [g for g in got if isinstance(g, Line)]
    rejects = [g for g in got if isinstance(g, Reject)]
    assert [ln.text for ln in lines] == ["1,40.0,2,17000,6000;11000,4000"]
    assert len(rejects) == 1 and rejects[0].reason.startswith("line too long")
    assert str(MAX_LINE + 10 + len(tail) - 1) in rejects[0].reason
    assert rejects[0].raw.startswith(b"9999")


def test_overlong_line_in_one_read_is_dropped_whole() -> None:
    framer = LineFramer("utf-8")
    got = framer.feed(b"7" * (MAX_LINE + 1) + b",2,18000\nlane=1\n")
    assert [type(g) for g in got] == [Reject, Line]


def test_socket_reads_come_in_chunks() -> None:
    """Regression (15.5): socket:// in_waiting is 0/1, so every read returned 2 bytes."""
    server = socket.create_server(("127.0.0.1", 0))
    scale = WimLinesScale(
        WimLinesConfig(type="wim_lines", port=f"socket://127.0.0.1:{server.getsockname()[1]}")
    )
    try:
        assert scale.recv(0.2) is None  # connects (pyserial drops what came during open)
        conn, _ = server.accept()
        conn.sendall(b"1,42.0,2,18000,6000;12000,4000\r\n" * 4)
        records = [scale.recv(2.0) for _ in range(4)]
        assert all(isinstance(r, WimRecord) and r.gross_kg == 18000 for r in records), records
        assert max(len(f) for f in scale.raw_tail) > 2
        conn.close()
    finally:
        scale.shutdown()
        server.close()


# --- 6: non-finite numbers -------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "NaN", "1e999"])
@pytest.mark.parametrize("fmt", ["csv", "kv", "json"])
def test_non_finite_numbers_are_refused(bad: str, fmt: str) -> None:
    """Regression (15.6): "nan" was taken as a speed and sealed as NaN into the record."""
    cfg = WimLinesConfig(type="wim_lines", port="loop://", format=fmt)  # type: ignore[arg-type]
    lines = {
        "csv": f"1,{bad},2,18000,6000;12000,4000",
        "kv": f"lane=1 speed_kmh={bad} axle_count=2 gross_kg=18000 axle_loads_kg=6000;12000",
        "json": json.dumps(
            {"lane": 1, "speed_kmh": float(bad), "gross_kg": 18000, "axle_loads_kg": [6000, 12000]}
        ),
    }
    scale = WimLinesScale(cfg)
    try:
        assert scale._measurement(Line(lines[fmt], lines[fmt].encode())) is None
        assert scale.rejects["field mapping"] == 1
    finally:
        scale.shutdown()


def test_canonical_json_refuses_non_finite_numbers() -> None:
    with pytest.raises(NotCanonicalError, match="non-finite"):
        canonical_json({"vehicle": {"speed_kmh": math.nan}})
    with pytest.raises(NotCanonicalError):
        canonical_json([math.inf])
    assert canonical_json({"b": 1.5, "a": "苏"}) == '{"a":"苏","b":1.5}'.encode()


# --- issue 17.8: a babbling device must not flood the journal ----------------------------------


def test_device_garbage_is_rate_limited_and_summarised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage interleaved with good frames (fault, recovery, fault, ...) for minutes: a few
    capped lines per interval and one summary, while the ring buffer keeps the bytes."""
    from drivers.clock import ManualClock
    from drivers.scale import toledo
    from drivers.scale.base import MAX_LOG_CHARS

    clock = ManualClock()
    cfg = ToledoConfig(type="toledo", port="loop://", garbage_frames=1)
    scale = ToledoScale(cfg, clock=clock)
    good = toledo.encode(31460)
    junk = bytes(range(0x80, 0x100)) * 200  # 25 600 bytes without an STX
    caplog.set_level("DEBUG", logger="drivers")
    try:
        for _ in range(300):
            with pytest.raises(ScaleError):
                scale._take(junk)
            scale._take(good + good)
            clock.advance(0.1)  # 30 s of flapping
        assert len(scale.raw_tail) == scale.RAW_TAIL and junk[-1:] in scale.raw_tail[-2]
        during = list(caplog.records)
        clock.advance(31)
        scale._take(good + good)
        with pytest.raises(ScaleError):
            scale._take(junk)
    finally:
        scale.shutdown()
    assert len(during) <= 6, [r.getMessage()[:80] for r in during]
    assert max(len(r.getMessage()) for r in caplog.records) <= MAX_LOG_CHARS + 200
    summary = [r for r in caplog.records if "not logged one by one" in r.getMessage()]
    assert len(summary) == 1
    text = summary[0].getMessage()
    assert "faults ×" in text and "recoveries ×" in text
