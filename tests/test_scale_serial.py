"""XK3190 and Toledo continuous output: framers, captured streams, ports, replugging."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.scale import ScaleError, WeightSample, toledo, xk3190
from drivers.scale.pty import PtyPair
from drivers.scale.stream import Reject
from drivers.scale.toledo import ToledoConfig, ToledoFrame, ToledoFramer, ToledoScale
from drivers.scale.xk3190 import Xk3190Config, Xk3190Frame, Xk3190Framer, Xk3190Scale

FIXTURES = Path(__file__).parent / "fixtures" / "scale"

pytestmark = pytest.mark.timeout(60)


# --- XK3190 -----------------------------------------------------------------------------------


def test_xk3190_design_example() -> None:
    frame = bytes.fromhex("02 2B 30 30 32 30 30 30 32 31 42 03")
    assert xk3190.encode(20.0, 2) == frame
    parsed = xk3190.parse(frame)
    assert isinstance(parsed, Xk3190Frame)
    assert parsed.value == 20.0


def test_xk3190_negative_and_lowercase_checksum() -> None:
    frame = bytearray(xk3190.encode(-0.35, 2))
    assert isinstance(xk3190.parse(bytes(frame)), Xk3190Frame)
    assert xk3190.parse(bytes(frame)).value == -0.35  # type: ignore[union-attr]
    frame[9:11] = bytes(frame[9:11]).lower()
    assert isinstance(xk3190.parse(bytes(frame)), Xk3190Frame)


def test_xk3190_rejects_bad_checksum_and_digits() -> None:
    frame = bytearray(xk3190.encode(31.46, 2))
    frame[5] = ord("9")
    assert isinstance(xk3190.parse(bytes(frame)), Reject)
    assert xk3190.parse(bytes(frame)).reason == "checksum"  # type: ignore[union-attr]
    frame = bytearray(xk3190.encode(31.46, 2))
    frame[3] = ord("A")
    assert isinstance(xk3190.parse(bytes(frame)), Reject)


def test_xk3190_captured_stream() -> None:
    """Regression: cable plugged in mid-frame, line noise, one corrupted frame."""
    data = (FIXTURES / "xk3190_t_2dec.bin").read_bytes()
    frames = [f for f in Xk3190Framer().feed(data) if isinstance(f, Xk3190Frame)]
    values = [f.value for f in frames]
    assert values == (
        [0.0] * 5 + [3.2, 8.9, 15.1, 24.6, 30.8, 31.42, 31.48, 31.46, 31.46, 31.46, 31.44, 31.46]
    ) + [-0.02, 0.0]


# --- Toledo -----------------------------------------------------------------------------------


def test_toledo_status_words() -> None:
    f = toledo.parse(toledo.encode(41960, tare=160, net=True, motion=True)[:-1], None)
    assert isinstance(f, ToledoFrame)
    assert f.net and f.motion and f.gross == 42120 and f.unit == "kg"
    f = toledo.parse(toledo.encode(-12.5, decimals=1, unit="t")[:-1], None)
    assert isinstance(f, ToledoFrame)
    assert f.weight == -12.5 and f.unit == "t"
    f = toledo.parse(toledo.encode(4500, decimals=-1)[:-1], None)
    assert isinstance(f, ToledoFrame) and f.weight == 4500


def test_toledo_captured_stream() -> None:
    """Regression: 7E1 sent, read 8N1 (parity bits set), checksum on, one bad checksum."""
    data = (FIXTURES / "toledo_kg_chk_7e1.bin").read_bytes()
    items = ToledoFramer("on").feed(data)
    frames = [f for f in items if isinstance(f, ToledoFrame)]
    assert [(f.weight, f.motion) for f in frames] == [
        (0, False),
        (10400, True),
        (28150, True),
        (41920, True),
        (41960, False),
        (41960, False),
        (41940, False),
        (99999, False),
    ]
    assert frames[-1].out_of_range
    assert any(isinstance(i, Reject) and i.reason == "checksum" for i in items)


def test_toledo_auto_checksum_reads_both_variants() -> None:
    with_chk = b"".join(toledo.encode(w) for w in (100, 200, 300))
    without = b"".join(toledo.encode(w, with_checksum=False) for w in (100, 200, 300))
    for data in (with_chk, without):
        got = [f.weight for f in ToledoFramer("auto").feed(data) if isinstance(f, ToledoFrame)]
        assert got[:2] == [100, 200]


# --- hypothesis: never a crash, never a wrong weight ----------------------------------------

weights = st.integers(min_value=-99999, max_value=999999)
garbage = st.binary(max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(weights, st.integers(0, 4), garbage), min_size=1, max_size=8),
    st.lists(st.integers(1, 40), min_size=1, max_size=8),
)
def test_xk3190_framer_split_and_garbage(
    items: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    sent = set()
    stream = b""
    for w, dec, junk in items:
        value = w / 10**dec
        sent.add(round(value, dec))
        stream += junk + xk3190.encode(value, dec)
    framer = Xk3190Framer()
    got: list[Xk3190Frame | Reject] = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        got += framer.feed(stream[pos : pos + n])
        pos += n
        i += 1
    values = [g.value for g in got if isinstance(g, Xk3190Frame)]
    for v in values:
        assert v in sent, f"decoded {v} that was never sent"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(weights, garbage, st.booleans()), min_size=1, max_size=8),
    st.sampled_from(["auto", "on"]),
    st.lists(st.integers(1, 40), min_size=1, max_size=8),
)
def test_toledo_framer_split_and_garbage(
    items: list[tuple[int, bytes, bool]], mode: str, cuts: list[int]
) -> None:
    sent = set()
    stream = b""
    for w, junk, corrupt in items:
        frame = bytearray(toledo.encode(w))
        if corrupt:
            frame[7] ^= 0x01  # a flipped bit in a digit: the checksum must catch it
        else:
            sent.add(w)
        stream += junk + bytes(frame)
    framer = ToledoFramer(mode)
    got: list[ToledoFrame | Reject] = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        got += framer.feed(stream[pos : pos + n])
        pos += n
        i += 1
    for g in got:
        if isinstance(g, ToledoFrame):
            assert g.weight in sent


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_framers_survive_any_bytes(data: bytes) -> None:
    Xk3190Framer().feed(data)
    ToledoFramer("auto").feed(data)
    ToledoFramer("off").feed(data)


# --- the scales on a port ----------------------------------------------------------------------


class Talker:
    """An indicator writing frames into a pty in a thread, like the real one at ~20 Hz."""

    def __init__(self, pty: PtyPair, frame: bytes, period_s: float = 0.02) -> None:
        self.pty = pty
        self.frame = frame
        self.period_s = period_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.period_s):
            self.pty.write(self.frame)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyPair]:
    p = PtyPair(tmp_path / "ttyUSB0")
    yield p
    p.close()


def first_sample(scale: Xk3190Scale | ToledoScale, timeout_s: float = 5.0) -> WeightSample:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            m = scale.recv(0.3)
        except ScaleError:
            continue
        if isinstance(m, WeightSample):
            return m
    raise AssertionError("no sample")


def test_xk3190_scale_on_loop_url() -> None:
    scale = Xk3190Scale(Xk3190Config(type="xk3190", port="loop://", unit="t"))
    try:
        scale.stream.write(xk3190.encode(31.46, 2) * 3)
        s = first_sample(scale)
        assert s.gross_kg == pytest.approx(31460.0)
        assert scale.raw_tail
    finally:
        scale.shutdown()


def test_xk3190_stability_from_readings(pty: PtyPair) -> None:
    talker = Talker(pty, xk3190.encode(31.46, 2))
    scale = Xk3190Scale(
        Xk3190Config(type="xk3190", port=str(pty.path), unit="t", stable_window_s=0.2)
    )
    try:
        s = first_sample(scale)
        assert not s.stable, "one reading is not a stable window"
        deadline = time.monotonic() + 3
        while not s.stable and time.monotonic() < deadline:
            s = first_sample(scale)
        assert s.stable
    finally:
        scale.shutdown()
        talker.close()


def test_toledo_scale_reconnects_after_unplug(pty: PtyPair) -> None:
    talker = Talker(pty, toledo.encode(41960))
    scale = ToledoScale(ToledoConfig(type="toledo", port=str(pty.path), reconnect_max_s=1.0))
    try:
        assert first_sample(scale).gross_kg == 41960
        talker.close()
        pty.unplug()
        with pytest.raises(ScaleError, match="ttyUSB0"):
            for _ in range(20):
                scale.recv(0.3)
        assert scale.health.state == "fault"
        pty.plug()
        talker = Talker(pty, toledo.encode(42000))
        back = time.monotonic()
        assert first_sample(scale, timeout_s=5.0).gross_kg == 42000
        assert time.monotonic() - back < 5.0
        assert scale.health.state == "ok"
    finally:
        scale.shutdown()
        talker.close()


def test_silence_is_reported_with_the_port(pty: PtyPair) -> None:
    scale = ToledoScale(ToledoConfig(type="toledo", port=str(pty.path), silence_s=0.3))
    try:
        with pytest.raises(ScaleError, match=r"no bytes for 0\.3 s.*ttyUSB0|ttyUSB0.*no bytes"):
            for _ in range(10):
                scale.recv(0.2)
    finally:
        scale.shutdown()


def test_wrong_protocol_is_reported(pty: PtyPair) -> None:
    """Toledo frames read as XK3190: bytes arrive, no frame is valid -> a clear error."""
    talker = Talker(pty, toledo.encode(41960), period_s=0.005)
    scale = Xk3190Scale(Xk3190Config(type="xk3190", port=str(pty.path), garbage_frames=5))
    try:
        with pytest.raises(ScaleError, match="no valid xk3190 frame"):
            for _ in range(20):
                scale.recv(0.3)
    finally:
        scale.shutdown()
        talker.close()


def test_one_owner_per_port(pty: PtyPair) -> None:
    a = ToledoScale(ToledoConfig(type="toledo", port=str(pty.path)))
    try:
        with pytest.raises(ScaleError, match="one owner"):
            ToledoScale(ToledoConfig(type="toledo", port=str(pty.path)))
    finally:
        a.shutdown()
    ToledoScale(ToledoConfig(type="toledo", port=str(pty.path))).shutdown()


def test_stream_scale_with_a_modbus_detector() -> None:
    """An XK3190 axle scale whose loop detector sits on a Modbus I/O module."""
    from drivers.scale import DetectorEdge
    from drivers.scale.modbus_sim import ModbusDeviceSimulator

    io = ModbusDeviceSimulator("generic").start()
    cfg = Xk3190Config.model_validate(
        {
            "type": "xk3190",
            "port": "loop://",
            "detector": {"host": "127.0.0.1", "port": io.port, "poll_interval_s": 0.02},
        }
    )
    scale = Xk3190Scale(cfg)
    try:
        scale.stream.write(xk3190.encode(5000, 0))
        assert first_sample(scale).gross_kg == 5000
        io.set_detector(True)
        edges: list[DetectorEdge] = []
        deadline = time.monotonic() + 3
        while not edges and time.monotonic() < deadline:
            m = scale.recv(0.2)
            if isinstance(m, DetectorEdge):
                edges.append(m)
        assert edges and edges[0].occupied
    finally:
        scale.shutdown()
        io.stop()
