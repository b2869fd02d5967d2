"""Mettler-Toledo "standard continuous output" (Toledo continuous; also sent by many Chinese
indicators as the "MT format").

Frame, 17 bytes plus an optional checksum, repeated continuously::

    +-----+-----+-----+-----+---------------+---------------+----+-----+
    | STX | SWA | SWB | SWC | weight 6 dig. |  tare 6 dig.  | CR | CHK |
    +-----+-----+-----+-----+---------------+---------------+----+-----+
       1     2     3     4       5 .. 10        11 .. 16     17   (18)

* SWA bits 0-2: decimal point (0: X00, 1: X0, 2: X, 3: 0.X, 4: 0.0X, 5: 0.00X, 6: 0.000X,
  7: 0.0000X); bits 3-4: count-by; bit 5 always 1.
* SWB bit 0: net; bit 1: negative; bit 2: out of range (over/under capacity); bit 3: motion;
  bit 4: 1 = kg, 0 = lb; bit 6: not zeroed since power-up.
* SWC bits 0-2: 0 = the unit of SWB bit 4, 1 = grams, 2 = tonnes (others: unsupported units,
  rejected).
* digits without sign or decimal point (some indicators blank leading zeros with spaces);
  when the net bit is set the weight field is net and gross = net + tare.
* CHK: two's complement of the 7 low bits of the sum of every byte from STX to CR.
* bit 7 of every byte is the parity bit when the port runs 7E1 but is read 8N1: masked.

``checksum = "auto"`` accepts both variants: after CR comes either the next STX (no checksum)
or a byte that must match the checksum (a checksum may be 02 too: "no checksum" is taken only
when a whole valid frame follows the CR);
once one checksum has been verified, every later frame must carry a valid one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from drivers.clock import Clock
from drivers.scale.base import Measurement, WeightSample
from drivers.scale.stream import (
    Reject,
    SerialScaleConfig,
    StreamScale,
    cut_frames,
    cut_reject,
)

STX, CR = 0x02, 0x0D
BODY_LEN = 17  # STX .. CR
LB_KG = 0.45359237
_SEVEN_BITS = bytes(b & 0x7F for b in range(256))


@dataclass(frozen=True)
class ToledoFrame:
    weight: float  # displayed value (gross or net), in `unit`, signed
    tare: float
    unit: str  # kg | g | t | lb
    net: bool
    motion: bool
    out_of_range: bool
    not_zeroed: bool
    raw: bytes

    @property
    def gross(self) -> float:
        return self.weight + self.tare if self.net else self.weight


def checksum(body: bytes) -> int:
    return (-sum(b & 0x7F for b in body)) & 0x7F


def encode(
    weight: float,
    *,
    tare: float = 0.0,
    decimals: int = 0,
    unit: str = "kg",
    motion: bool = False,
    out_of_range: bool = False,
    net: bool = False,
    with_checksum: bool = True,
) -> bytes:
    """A frame (the simulator's direction). ``decimals`` 0..4 or -1/-2 for X0 / X00."""
    code = 2 + decimals
    swa = 0x20 | code | 0x08  # count by 1
    swb = 0x20 | (0x01 if net else 0) | (0x02 if weight < 0 else 0)
    swb |= (0x04 if out_of_range else 0) | (0x08 if motion else 0)
    swb |= 0x10 if unit != "lb" else 0
    swc = 0x20 | {"kg": 0, "lb": 0, "g": 1, "t": 2}[unit]
    w = round(abs(weight) * 10**decimals)
    t = round(abs(tare) * 10**decimals)
    body = bytes([STX, swa, swb, swc]) + f"{w:06d}{t:06d}".encode() + bytes([CR])
    return body + (bytes([checksum(body)]) if with_checksum else b"")


def _digits(field: bytes) -> int | None:
    text = field.replace(b" ", b"0")
    if len(text) != 6 or not text.isdigit():
        return None
    return int(text)


def parse(body: bytes, chk: int | None) -> ToledoFrame | Reject:
    """Decode ``body`` (STX..CR, 17 bytes); ``chk`` is the checksum byte if present."""
    if len(body) != BODY_LEN or body[0] != STX or body[-1] != CR:
        return Reject("length", body)
    if chk is not None and (chk & 0x7F) != checksum(body):
        return Reject("checksum", body + bytes([chk]))
    swa, swb, swc = (b & 0x7F for b in body[1:4])
    if not (swa & 0x20 and swb & 0x20 and swc & 0x20):
        return Reject("status word", body)
    w = _digits(bytes(b & 0x7F for b in body[4:10]))
    t = _digits(bytes(b & 0x7F for b in body[10:16]))
    if w is None or t is None:
        return Reject("digits", body)
    code = swa & 0x07
    factor = 10.0 ** (2 - code)
    unit_code = swc & 0x07
    if unit_code == 0:
        unit = "kg" if swb & 0x10 else "lb"
    elif unit_code == 1:
        unit = "g"
    elif unit_code == 2:
        unit = "t"
    else:
        return Reject("unit", body)
    weight = w * factor * (-1 if swb & 0x02 else 1)
    raw = body + (bytes([chk]) if chk is not None else b"")
    return ToledoFrame(
        weight=weight,
        tare=t * factor,
        unit=unit,
        net=bool(swb & 0x01),
        motion=bool(swb & 0x08),
        out_of_range=bool(swb & 0x04),
        not_zeroed=bool(swb & 0x40),
        raw=raw,
    )


class ToledoFramer:
    """Bytes → frames; ``checksum``: "on" (required), "off" (none sent), "auto"."""

    def __init__(self, checksum_mode: str = "auto") -> None:
        self.mode = checksum_mode
        self._checksummed = False
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[ToledoFrame | Reject]:
        """Frames and rejects completed by ``data`` (layout and checksum rules: see the
        module docstring); a partial frame waits in the buffer for the next call."""
        buf = self._buf
        buf += data.translate(_SEVEN_BITS)  # the protocol is 7-bit ASCII; bit 7 is parity
        return cut_frames(buf, STX, self._cut)

    def _cut(self, buf: bytearray) -> ToledoFrame | Reject | None:
        """The frame (or reject) at the start of ``buf``, which begins with STX, removed from
        ``buf``; ``None`` while its bytes have not all come."""
        cr = buf.find(CR, 1)
        nxt = buf.find(STX, 1)
        if nxt > 0 and (cr < 0 or nxt < cr):
            return cut_reject(buf, nxt, "length")  # cut short by the next frame
        if cr < 0:
            return cut_reject(buf, len(buf), "length") if len(buf) > BODY_LEN else None
        if cr + 1 != BODY_LEN:
            return cut_reject(buf, cr + 1, "length")
        decoded = self._parse_body(buf)
        if decoded is None:
            return None
        result, used = decoded
        if isinstance(result, Reject):
            del buf[:1]  # resynchronise on the next STX
        else:
            del buf[:used]
        return result

    def _parse_body(self, buf: bytearray) -> tuple[ToledoFrame | Reject, int] | None:
        """Decode the STX..CR body at the start of ``buf`` by the checksum mode: the result
        and how many bytes it used (17, or 18 with the checksum); ``None``: wait for more."""
        body = bytes(buf[:BODY_LEN])
        if self.mode == "off":
            return parse(body, None), BODY_LEN
        if self.mode == "on" or self._checksummed:
            if len(buf) < BODY_LEN + 1:
                return None  # wait for the checksum byte
            return parse(body, buf[BODY_LEN]), BODY_LEN + 1
        # auto: the byte after CR is a checksum unless it starts the next frame. A checksum
        # can itself be 02, so "no checksum" needs the whole next frame to be valid right
        # there (one frame of latency, only until a checksum is seen).
        if len(buf) < 2 * BODY_LEN:
            return None
        after = buf[BODY_LEN]
        following = bytes(buf[BODY_LEN : 2 * BODY_LEN])
        if after == STX and not isinstance(parse(following, None), Reject):
            return parse(body, None), BODY_LEN
        result = parse(body, after)
        if not isinstance(result, Reject):
            self._checksummed = True  # a verified checksum: from now on, required
        return result, BODY_LEN + 1


class ToledoConfig(SerialScaleConfig):
    checksum: Literal["auto", "on", "off"] = Field(
        default="auto", description="checksum byte after CR: on, off, or auto (either)"
    )


class ToledoScale(StreamScale[ToledoFrame]):
    """A Mettler-Toledo (or compatible) indicator in standard continuous output."""

    Config = ToledoConfig
    config: ToledoConfig

    def __init__(self, config: ToledoConfig, clock: Clock | None = None, lane: int = 1):
        super().__init__(config, clock, lane)

    def _make_framer(self) -> ToledoFramer:
        return ToledoFramer(self.config.checksum)

    def _measurement(self, frame: ToledoFrame) -> Measurement:
        factor = {"kg": 1.0, "g": 0.001, "t": 1000.0, "lb": LB_KG}[frame.unit]
        kg = frame.gross * factor
        flags = set()
        if frame.motion:
            flags.add("motion")
        if frame.out_of_range:
            flags.add("overload")
        if kg < 0:
            flags.add("negative")
        if frame.net:
            flags.add("net")
        if frame.unit != "kg":
            flags.add(f"unit_{frame.unit}")
        return WeightSample(
            at=self.clock.now(),
            gross_kg=kg,
            stable=not frame.motion,
            flags=frozenset(flags),
            raw=frame.raw,
        )
