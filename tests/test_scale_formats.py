"""The indicator formats of issue 15, decoded from the manuals' own frames
(tests/fixtures/scale/manual_frames.toml), their simulated twins, and the Toledo defects."""

from __future__ import annotations

import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.domain import VerdictStatus, WeighingFlag
from agent.legal import load_rules
from agent.legal.engine import judge
from agent.legal.facts import VehicleFacts
from agent.pipeline.weighing import WeighingConfig, WeighingStage
from drivers.scale import WeightSample, toledo, yaohua
from drivers.scale.modbus_sim import constant
from drivers.scale.pty import PtyPair
from drivers.scale.registermap import load_map
from drivers.scale.stream import Reject
from drivers.scale.stream_sim import CommandResponder, indicator
from drivers.scale.toledo import ToledoFrame, ToledoFramer
from drivers.scale.xk3190 import Xk3190Config, Xk3190Scale

pytestmark = pytest.mark.timeout(60)

FRAMES: dict[str, list[dict[str, Any]]] = tomllib.loads(
    (Path(__file__).parent / "fixtures" / "scale" / "manual_frames.toml").read_text()
)


def raw(entry: dict[str, Any]) -> bytes:
    return bytes.fromhex(entry["hex"])


# --- Yaohua -----------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", FRAMES["xk3190_a12"], ids=lambda e: e["hex"][:14])
def test_a12_manual_frames(entry: dict[str, Any]) -> None:
    got = yaohua.parse_a12(raw(entry))
    assert isinstance(got, yaohua.YaohuaFrame)
    if "state" in entry:
        assert got.value is None and got.state == entry["state"]
    else:
        assert got.value == entry["value"] and got.net is entry["net"]


@pytest.mark.parametrize("fmt", ["reversed", "in_order"])
def test_eq_manual_frames(fmt: str) -> None:
    for entry in FRAMES[f"xk3190_{fmt}"]:
        got = yaohua.parse_eq(raw(entry), reversed_digits=fmt == "reversed")
        assert isinstance(got, yaohua.YaohuaFrame) and got.value == entry["value"]
    # Back to back as the manual shows them; each counts once it came twice in a row.
    entry = FRAMES[f"xk3190_{fmt}"][0]
    framer = yaohua.EqFramer(fmt == "reversed")
    got_all = framer.feed(raw(entry) * 4 + b"=")
    assert [g.value for g in got_all if isinstance(g, yaohua.YaohuaFrame)] == [entry["value"]] * 3


def test_tf1_command_and_reply() -> None:
    for entry in FRAMES["xk3190_tf1_command"]:
        assert yaohua.command("A", entry["command"]) == raw(entry)
    entry = FRAMES["xk3190_tf1_reply"][0]
    got = yaohua.parse_reply(raw(entry), "A")
    assert isinstance(got, yaohua.YaohuaFrame) and got.value == entry["value"]
    assert isinstance(yaohua.parse_reply(raw(entry), "B"), Reject)  # another address


def test_tf0_manual_frame_still_reads() -> None:
    from drivers.scale import xk3190

    entry = FRAMES["xk3190_tf0"][0]
    got = xk3190.parse(raw(entry))
    assert isinstance(got, xk3190.Xk3190Frame) and got.value == entry["value"]


@pytest.fixture
def pty(tmp_path: Path) -> Any:
    p = PtyPair(tmp_path / "ttyUSB0")
    yield p
    p.close()


def samples(scale: Xk3190Scale, n: int, timeout_s: float = 5.0) -> list[WeightSample]:
    out: list[WeightSample] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        m = scale.recv(0.5)
        if isinstance(m, WeightSample):
            out.append(m)
    return out


def test_tf1_scale_polls_its_twin(pty: PtyPair) -> None:
    twin = CommandResponder(pty, constant(31460.0), address="C").start()
    scale = Xk3190Scale(Xk3190Config(type="xk3190", port=str(pty.path), format="tf1", address="C"))
    try:
        got = samples(scale, 3)
        assert [s.gross_kg for s in got] == [31460.0] * 3
        assert twin.requests >= 3
    finally:
        scale.shutdown()
        twin.stop()


def test_net_reading_is_stored_as_net_and_never_judged(pty: PtyPair) -> None:
    """A tared A12 indicator sends WN frames: the weighing carries NET_WEIGHT and the verdict
    is undetermined, never a gross judged from a net."""
    net = next(e for e in FRAMES["xk3190_a12"] if e.get("net"))
    talker = indicator("xk3190", pty.write, constant(0.0))  # replaced below: the manual frame
    talker.frame = lambda _t: raw(net)
    talker.start()
    cfg = Xk3190Config(type="xk3190", port=str(pty.path), format="a12", stable_window_s=0.1)
    scale = Xk3190Scale(cfg)
    try:
        got = samples(scale, 8)
    finally:
        scale.shutdown()
        talker.stop()
    assert got and all("net" in s.flags and s.gross_kg == 36540.0 for s in got)
    stage = WeighingStage(1, cfg, WeighingConfig(mode="static", static_stable_s=0.05))
    off = [
        WeightSample(at=got[-1].at + timedelta(seconds=0.1 * i), gross_kg=0.0) for i in (1, 2, 3)
    ]
    out = [w for s in [*got, *off] for w in stage.feed(s)]
    assert len(out) == 1 and WeighingFlag.NET_WEIGHT in out[0].flags
    facts = VehicleFacts.from_weighing(out[0])
    verdict = judge(facts, load_rules(), datetime(2026, 1, 1, tzinfo=UTC))
    assert verdict.status is VerdictStatus.UNDETERMINED


@pytest.mark.parametrize("fmt", ["a12", "reversed", "in_order"])
def test_xk3190_format_twins(pty: PtyPair, fmt: str) -> None:
    talker = indicator("xk3190", pty.write, constant(31460.0), format=fmt).start()
    scale = Xk3190Scale(Xk3190Config(type="xk3190", port=str(pty.path), format=fmt))
    try:
        assert [s.gross_kg for s in samples(scale, 3)] == [31460.0] * 3
    finally:
        scale.shutdown()
        talker.stop()


weights = st.integers(min_value=-99999, max_value=999999)


def _feed_in_cuts(framer: Any, stream: bytes, cuts: list[int]) -> list[Any]:
    got, pos, i = [], 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        got += framer.feed(stream[pos : pos + n])
        pos, i = pos + n, i + 1
    return got


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(weights, st.integers(0, 3), st.binary(max_size=12), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(["a12", "reversed", "in_order"]),
    st.lists(st.integers(1, 30), min_size=1, max_size=6),
    st.integers(0, 63),
)
def test_yaohua_framers_never_invent_a_weight(
    items: list[tuple[int, int, bytes, bool]], fmt: str, cuts: list[int], bit: int
) -> None:
    sent: set[float] = set()
    stream = b""
    for w, dec, junk, corrupt in items:
        value = round(w / 10**dec, dec) if fmt == "a12" else round(abs(w) % 10**6 / 10**dec, dec)
        if fmt == "a12":
            frame = yaohua.encode_a12(value, dec)
        else:
            frame = yaohua.encode_eq(value, dec, fmt == "reversed")
        copies = [bytearray(frame), bytearray(frame)]  # the "=" formats repeat each frame
        if corrupt:
            copies[1][bit % len(frame)] ^= 1 << (bit % 7)
        sent.add(value)
        stream += junk + b"".join(bytes(c) for c in copies)
    if fmt == "a12":
        framer: Any = yaohua.A12Framer()
    else:
        framer = yaohua.EqFramer(fmt == "reversed")
    for g in _feed_in_cuts(framer, stream, cuts):
        if isinstance(g, yaohua.YaohuaFrame) and g.value is not None:
            assert g.value in sent, f"decoded {g.value} that was never sent"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_new_framers_survive_any_bytes(data: bytes) -> None:
    yaohua.A12Framer().feed(data)
    yaohua.EqFramer(True).feed(data)
    yaohua.EqFramer(False).feed(data)
    yaohua.ReplyFramer("A").feed(data)
    ToledoFramer("auto", stx=False).feed(data)
    ToledoFramer("on", stx=False, dialect="liden").feed(data)


# --- Toledo -----------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", FRAMES["toledo"], ids=lambda e: e["source"][:40])
def test_toledo_manual_layout_frames(entry: dict[str, Any]) -> None:
    data = raw(entry)
    got = [f for f in ToledoFramer("on", dialect=entry["dialect"]).feed(data)]
    assert len(got) == 1 and isinstance(got[0], ToledoFrame), got
    f = got[0]
    assert (f.weight, f.tare, f.unit, f.net, f.motion) == (
        entry["weight"],
        entry["tare"],
        entry["unit"],
        entry["net"],
        entry["motion"],
    )
    if entry["dialect"] == "liden":
        other = ToledoFramer("on", dialect="mettler").feed(data)
        assert not any(isinstance(g, ToledoFrame) for g in other), "dialect must be told"


def test_toledo_without_stx() -> None:
    """The STX switched off (F3.1.6 = 0): frames are cut at CR; checksum off and on (the
    manual's sum runs from the first byte sent, so without STX it is 2 higher)."""
    frames = [
        raw(e) for e in FRAMES["toledo"] if e["dialect"] == "mettler" and e["hex"][:2] == "02"
    ]
    off = b"".join(f[1:-1] for f in frames)
    on = b"".join(f[1:-1] + bytes([(f[-1] + 2) & 0x7F]) for f in frames)
    expect = [-12.5, 1234.5, 36540.0]
    for mode, data in (("off", off), ("on", on), ("auto", on), ("auto", off)):
        got = ToledoFramer(mode, stx=False).feed(b"5\r" + data * 2)
        assert sorted({f.weight for f in got if isinstance(f, ToledoFrame)}) == expect, mode


def _seven_e1(frame: bytes) -> bytes:
    return bytes(b | (0x80 if bin(b).count("1") % 2 else 0) for b in frame)


def test_toledo_parity_bit_error_is_not_a_wrong_weight() -> None:
    """Regression (15.3): 7E1 read 8N1, no checksum: a bit error in a digit gave 31 470 kg
    instead of 31 460 kg. Bytes built from the Wildcat layout (SWA 0x32 SWB 0x30 SWC 0x20)."""
    good = _seven_e1(b"\x0220 " + b" 31460" + b"     0" + b"\r")
    bad = bytearray(good)
    bad[9] ^= 0x01  # '6' (0x36) → '7' (0x37): one bit, its parity bit now wrong
    stream = good + bytes(bad) + good + good
    got = ToledoFramer("off").feed(stream)
    weights_read = [f.weight for f in got if isinstance(f, ToledoFrame)]
    assert 31470 not in weights_read and weights_read == [31460, 31460, 31460]
    assert any(isinstance(g, Reject) and g.reason == "parity" for g in got)


def test_toledo_auto_checksum_does_not_lock_itself() -> None:
    """Regression (15.4): a checksum-less stream, a frame whose checksum happens to be 02,
    then one damaged frame: auto switched to "checksummed" for good and rejected the rest."""
    w = next(
        w
        for w in range(10000, 99999, 10)
        if toledo.checksum(b"\x0220 " + f"{w:6d}".encode() + b"     0\r") == 0x02
    )
    a = b"\x0220 " + f"{w:6d}".encode() + b"     0\r"
    damaged = b"\x0220 " + b" 12X45" + b"     0\r"
    later = [b"\x0220 " + f"{v:6d}".encode() + b"     0\r" for v in (20000, 20020, 20040, 20060)]
    got = ToledoFramer("auto").feed(a + damaged + b"".join(later) + later[-1])
    read = [f.weight for f in got if isinstance(f, ToledoFrame)]
    assert read[-4:] == [20000, 20020, 20040, 20060]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(weights, st.binary(max_size=12), st.booleans()), min_size=1, max_size=8),
    st.sampled_from(["auto", "on", "off"]),
    st.booleans(),
    st.lists(st.integers(1, 30), min_size=1, max_size=6),
    st.integers(4, 15),
)
def test_toledo_7e1_never_a_wrong_weight(
    items: list[tuple[int, bytes, bool]], mode: str, stx: bool, cuts: list[int], pos: int
) -> None:
    """Any stream 7E1-on-8N1, with or without STX and checksum, garbage and single bit errors
    in a digit: every weight read was sent."""
    sent: set[float] = set()
    stream = b""
    for w, junk, corrupt in items:
        frame = toledo.encode(w, stx=stx, with_checksum=mode != "off")
        wire = bytearray(_seven_e1(frame))
        if corrupt:
            wire[pos - (0 if stx else 1)] ^= 0x04
        else:
            sent.add(float(w))
        stream += junk + bytes(wire)
    for g in _feed_in_cuts(ToledoFramer(mode, stx=stx), stream, cuts):
        if isinstance(g, ToledoFrame):
            assert g.weight in sent


# --- PR 5220 / PR 5410 map ---------------------------------------------------------------------


def test_pr5410_map_against_the_pr5220_manual() -> None:
    """The manual's FC3 reply (893 kg in words 16-17) and its word-2 bit layout
    '39 38 37 36 35 34 33 32 | 47 ... 40': bit address 38 (stable) is word bit 14."""
    m = load_map("pr5410")
    reply = raw(FRAMES["pr5220_fc3_gross"][0])
    regs = [int.from_bytes(reply[9 + 2 * i : 11 + 2 * i], "big") for i in range(2)]
    assert m.weight is not None and m.status is not None
    assert m.weight.raw_values(regs, 16) == [FRAMES["pr5220_fc3_gross"][0]["value"]]
    stable_word = 1 << (15 - (39 - 38))  # high byte, bit address 32 + k at word bit 8 + k
    assert stable_word == 0x4000
    assert m.status.flags(stable_word) == (True, frozenset())
    assert m.status.flags(0x0040)[0] is False, "bit 6 is bit address 46, not 'stable'"
