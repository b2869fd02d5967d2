"""Yaohua XK3190 indicators (A9, A12, D2...) in continuous output mode ("tf" mode 0), and,
by ``format``, the other Yaohua outputs of :mod:`drivers.scale.yaohua` (A12(E) ``WG/WN``
frames, the A23P/A26 "=" formats, tF=1 command mode where the host polls).

Frame, 12 bytes, repeated continuously::

    +-----+------+-----------------+-----+-------+-------+-----+
    | STX | sign |   six digits    | dec | XOR H | XOR L | ETX |
    | 02  | 2B/2D| 30..39 (MSD..)  | 30+n|   checksum    | 03  |
    +-----+------+-----------------+-----+-------+-------+-----+
      1      2         3 .. 8         9      10      11     12

* sign ``+`` (2B) or ``-`` (2D);
* the six digits are the displayed value without a decimal point; byte 9 is the number of
  decimal places ('0'..'4');
* checksum: XOR of bytes 2..9, high nibble then low nibble, each sent as ``0x30 + n`` when
  n ≤ 9 and ``0x37 + n`` above ('A'..'F'). "+20.00" → ``02 2B 30 30 32 30 30 30 32 31 42 03``.
* no unit and no motion flag: the unit is the ``unit`` setting, stability is judged from the
  readings (``stable_window_s`` / ``stable_band_kg``).

Quirks survived: frames split across reads, garbage and half frames at power-up or when the
cable is plugged in mid-frame (resynchronise on the next STX), lower-case checksum letters
from some firmware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from drivers.clock import Clock
from drivers.scale import yaohua
from drivers.scale.base import Measurement, WeightSample
from drivers.scale.stream import (
    Reject,
    Stability,
    StreamScale,
    WeightStreamConfig,
    cut_frames,
    cut_reject,
)

STX, ETX = 0x02, 0x03
FRAME_LEN = 12
_DIGITS = frozenset(b"0123456789")


@dataclass(frozen=True)
class Xk3190Frame:
    value: float  # in the display unit, signed
    decimals: int
    raw: bytes


def _nibble(n: int) -> int:
    return 0x30 + n if n <= 9 else 0x37 + n


def checksum(body: bytes) -> bytes:
    """The two checksum bytes of ``body`` (frame bytes 2..9)."""
    x = 0
    for b in body:
        x ^= b
    return bytes([_nibble(x >> 4), _nibble(x & 0x0F)])


def encode(value: float, decimals: int = 0) -> bytes:
    """A frame showing ``value`` with ``decimals`` places (the simulator's direction)."""
    digits = round(abs(value) * 10**decimals)
    if digits > 999999:
        raise ValueError(f"{value} does not fit six digits with {decimals} decimals")
    body = (b"-" if value < 0 else b"+") + f"{digits:06d}".encode() + bytes([0x30 + decimals])
    return bytes([STX]) + body + checksum(body) + bytes([ETX])


def parse(frame: bytes) -> Xk3190Frame | Reject:
    """Check and decode one 12-byte frame."""
    if len(frame) != FRAME_LEN:
        return Reject("length", frame)
    if frame[0] != STX or frame[-1] != ETX:
        return Reject("no STX/ETX", frame)
    sign, digits, dec = frame[1], frame[2:8], frame[8]
    if sign not in b"+-":
        return Reject("sign", frame)
    if not set(digits) <= _DIGITS:
        return Reject("digits", frame)
    if not 0x30 <= dec <= 0x34:
        return Reject("decimals", frame)
    if frame[9:11].upper() != checksum(frame[1:9]):
        return Reject("checksum", frame)
    decimals = dec - 0x30
    value = int(digits) / 10**decimals
    return Xk3190Frame(-value if sign == 0x2D else value, decimals, bytes(frame))


class Xk3190Framer:
    """Bytes → frames; keeps a partial frame between reads; never raises."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Xk3190Frame | Reject]:
        buf = self._buf
        buf += data
        out = cut_frames(buf, STX, _cut)
        if len(buf) > 4 * FRAME_LEN:  # cannot happen, but a framer must stay bounded
            del buf[:-FRAME_LEN]
        return out


def _cut(buf: bytearray) -> Xk3190Frame | Reject | None:
    """The frame (or reject) at the start of ``buf``, which begins with STX, cut off;
    ``None`` while its 12 bytes have not all come."""
    if len(buf) < FRAME_LEN:
        # A frame is never longer than 12 bytes; an STX inside means a cut frame.
        nxt = buf.find(STX, 1)
        return cut_reject(buf, nxt, "length") if nxt > 0 else None
    result = parse(bytes(buf[:FRAME_LEN]))
    del buf[: 1 if isinstance(result, Reject) else FRAME_LEN]  # a reject: resync on next STX
    return result


Format = Literal["tf0", "a12", "reversed", "in_order", "tf1"]


class Xk3190Config(WeightStreamConfig):
    format: Format = Field(
        default="tf0",
        description="tf0: 12-byte 02..03 frame; a12: A12(E) 15-byte WG/WN..kg frame; "
        "reversed / in_order: the A23P/A26 '=' formats; tf1: command mode, the agent asks "
        "for the gross every poll_interval_s",
    )
    address: str = Field(
        default="A", pattern="^[A-Z]$", description="tf1: the indicator's address letter (A = 1)"
    )
    poll_interval_s: float = Field(
        default=0.1, gt=0, description="tf1: time between two 'read gross' requests"
    )


class Xk3190Scale(StreamScale[Any]):
    """A Yaohua XK3190 indicator on a serial port, in the output format of ``format``."""

    Config = Xk3190Config
    config: Xk3190Config

    def __init__(self, config: Xk3190Config, clock: Clock | None = None, lane: int = 1):
        super().__init__(config, clock, lane)
        self.stability = Stability(config.stable_window_s, config.stable_band_kg)
        self._last_kg = 0.0
        if config.format == "tf1":
            self.poll_request = yaohua.command(config.address, "B")
            self.poll_interval_s = config.poll_interval_s

    def _make_framer(self) -> Any:
        fmt = self.config.format
        if fmt == "a12":
            return yaohua.A12Framer()
        if fmt in ("reversed", "in_order"):
            return yaohua.EqFramer(reversed_digits=fmt == "reversed")
        if fmt == "tf1":
            return yaohua.ReplyFramer(self.config.address)
        return Xk3190Framer()

    def _measurement(self, frame: Xk3190Frame | yaohua.YaohuaFrame) -> Measurement:
        flags: set[str] = set()
        if isinstance(frame, yaohua.YaohuaFrame) and frame.value is None:
            # OL / LO carry no weight: the last one is repeated, flagged, never judged.
            flags |= {"overload" if frame.state == "overload" else "out_of_range", "motion"}
            return WeightSample(
                at=self.clock.now(),
                gross_kg=self._last_kg,
                stable=False,
                flags=frozenset(flags),
                raw=frame.raw,
            )
        assert frame.value is not None
        kg = frame.value * (1000.0 if self.config.unit == "t" else 1.0)
        self._last_kg = kg
        stable = self.stability.update(self.clock.monotonic(), kg)
        if not stable:
            flags.add("motion")
        if kg < 0:
            flags.add("negative")
        if isinstance(frame, yaohua.YaohuaFrame) and frame.net:
            flags.add("net")  # a tared indicator's net weight: stored, never judged as gross
        return WeightSample(
            at=self.clock.now(), gross_kg=kg, stable=stable, flags=frozenset(flags), raw=frame.raw
        )
