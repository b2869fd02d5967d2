"""Mettler-Toledo "standard continuous output" (Toledo continuous; also sent by many Chinese
indicators as the "MT format"), with the variants met in the field.

Frame, 17 bytes plus an optional checksum, repeated continuously::

    +-----+-----+-----+-----+---------------+---------------+----+-----+
    | STX | SWA | SWB | SWC | weight 6 dig. |  tare 6 dig.  | CR | CHK |
    +-----+-----+-----+-----+---------------+---------------+----+-----+
       1     2     3     4       5 .. 10        11 .. 16     17   (18)

Mettler-Toledo layout (Wildcat technical manual App. 2 tables 6-8..6-11; IND445 §5.2):

* SWA bits 0-2: decimal point (0: X00, 1: X0, 2: X, 3: 0.X, 4: 0.0X, 5: 0.00X, 6: 0.000X,
  7: 0.0000X); bits 3-4: count-by; bit 5 always 1.
* SWB bit 0: net; bit 1: negative; bit 2: out of range (over/under capacity); bit 3: motion;
  bit 4: 1 = kg, 0 = lb; bit 6: not zeroed since power-up.
* SWC bits 0-2: 0 = the unit of SWB bit 4, 1 = grams, 2 = tonnes (others: unsupported units,
  rejected).
* digits without sign or decimal point (some indicators blank leading zeros with spaces);
  when the net bit is set the weight field is net and gross = net + tare (flagged ``net``:
  the station never judges such a reading, see docs/weighing.md).
* CHK: two's complement of the 7 low bits of the sum of every byte from STX to CR.

Variants (``stx``, ``dialect``):

* ``stx = false``: MT-compatible clones can switch the STX off (F3.1.6 = 0); frames are then
  cut at CR only, 16 bytes (SWA..CR) plus the optional checksum.
* ``dialect = "liden"``: Liden LUW2001-LBW "MT format": SWA bit 5 clear (bits 4 and 6 set,
  bits 3-4 no count-by), SWB bit 4 constant 1 (no unit there), SWC bit 0 = unit (0 kg, 1 lb).

Parity (``parity_check``): Toledo sends 7E1. Read as 8N1 (10 bits either way), bit 7 of every
byte is the parity bit and is *checked* here: with "auto" a frame must be all even parity
(7E1 sent) or all bit 7 clear (8N1 sent), so a single flipped bit never becomes a wrong weight
in a stream without checksum. A port opened 7E1 does **not** check parity on Linux (pyserial
clears INPCK) and hands over 7 bits: such a line is only safe with the checksum on.

``checksum = "auto"`` accepts both variants, frame by frame and without remembering: after CR
comes either the next frame (no checksum) or a byte that must match the checksum. A checksum
byte may equal STX: "no checksum" is taken only when a whole valid frame starts right after
the CR, which can never happen in a checksummed stream (its next CR would be one byte later).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from drivers.clock import Clock
from drivers.scale.base import Measurement, WeightSample
from drivers.scale.stream import Reject, SerialScaleConfig, StreamScale, cut_reject

log = logging.getLogger(__name__)

STX, CR = 0x02, 0x0D
BODY_LEN = 17  # STX .. CR
LB_KG = 0.45359237
_SEVEN_BITS = bytes(b & 0x7F for b in range(256))
_EVEN = frozenset(b for b in range(256) if bin(b).count("1") % 2 == 0)

Dialect = Literal["mettler", "liden"]
ParityCheck = Literal["auto", "even", "odd", "none"]


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


def with_parity(frame: bytes, parity: str = "E") -> bytes:
    """``frame`` as a 7E1 (or 7O1) line delivers it to a port read 8N1: bit 7 = parity."""
    odd = parity == "O"
    return bytes(b | (0x80 if ((b in _EVEN) == odd) else 0) for b in frame)


def parity_ok(raw: bytes, mode: ParityCheck) -> bool:
    """Whether every byte's bit 7 fits ``mode`` (see the module docstring)."""
    clean = all(b < 0x80 for b in raw)
    if mode == "none":
        return clean
    if mode == "odd":
        return all(b not in _EVEN for b in raw)
    even = all(b in _EVEN for b in raw)
    return even if mode == "even" else even or clean


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
    stx: bool = True,
    dialect: Dialect = "mettler",
) -> bytes:
    """A frame (the simulator's direction). ``decimals`` 0..4 or -1/-2 for X0 / X00."""
    code = 2 + decimals
    swb = 0x20 | (0x01 if net else 0) | (0x02 if weight < 0 else 0)
    swb |= (0x04 if out_of_range else 0) | (0x08 if motion else 0)
    if dialect == "liden":
        swa = 0x50 | code
        swb |= 0x10
        swc = 0x30 | (0x01 if unit == "lb" else 0)
    else:
        swa = 0x20 | code | 0x08  # count by 1
        swb |= 0x10 if unit != "lb" else 0
        swc = 0x20 | {"kg": 0, "lb": 0, "g": 1, "t": 2}[unit]
    w = round(abs(weight) * 10**decimals)
    t = round(abs(tare) * 10**decimals)
    body = bytes([swa, swb, swc]) + f"{w:06d}{t:06d}".encode() + bytes([CR])
    if stx:
        body = bytes([STX]) + body
    return body + (bytes([checksum(body)]) if with_checksum else b"")


def _digits(field: bytes) -> int | None:
    text = field.replace(b" ", b"0")
    if len(text) != 6 or not text.isdigit():
        return None
    return int(text)


def _unit(swb: int, swc: int, dialect: Dialect) -> str | None:
    if dialect == "liden":
        return "lb" if swc & 0x01 else "kg"
    code = swc & 0x07
    if code == 0:
        return "kg" if swb & 0x10 else "lb"
    return {1: "g", 2: "t"}.get(code)


def _status_ok(swa: int, swb: int, swc: int, dialect: Dialect) -> bool:
    """The constant bits that tell a status word from a digit or a shifted frame."""
    if dialect == "liden":
        return swa & 0x50 == 0x50 and swb & 0x30 == 0x30 and swc & 0x30 == 0x30
    return bool(swa & 0x20 and swb & 0x20 and swc & 0x20)


def parse(body: bytes, chk: int | None, dialect: Dialect = "mettler") -> ToledoFrame | Reject:
    """Decode ``body`` (STX..CR, 17 bytes, or SWA..CR, 16 bytes, for a stream without STX);
    ``chk`` is the checksum byte if present. Bit 7 is ignored here (see :func:`parity_ok`)."""
    seven = body.translate(_SEVEN_BITS)
    if len(seven) == BODY_LEN and seven[0] == STX:
        fields = seven[1:]
    elif len(seven) == BODY_LEN - 1 and seven[0] != STX:
        fields = seven
    else:
        return Reject("length", body)
    if fields[-1] != CR:
        return Reject("length", body)
    raw = body + (bytes([chk]) if chk is not None else b"")
    if chk is not None and (chk & 0x7F) != checksum(seven):
        return Reject("checksum", raw)
    swa, swb, swc = fields[0], fields[1], fields[2]
    if not _status_ok(swa, swb, swc, dialect):
        return Reject("status word", raw)
    w = _digits(fields[3:9])
    t = _digits(fields[9:15])
    if w is None or t is None:
        return Reject("digits", raw)
    unit = _unit(swb, swc, dialect)
    if unit is None:
        return Reject("unit", raw)
    factor = 10.0 ** (2 - (swa & 0x07))
    return ToledoFrame(
        weight=w * factor * (-1 if swb & 0x02 else 1),
        tare=t * factor,
        unit=unit,
        net=bool(swb & 0x01),
        motion=bool(swb & 0x08),
        out_of_range=bool(swb & 0x04),
        not_zeroed=bool(swb & 0x40),
        raw=raw,
    )


class ToledoFramer:
    """Bytes → frames; never raises. ``checksum_mode``: "on" (required), "off" (none sent),
    "auto"; ``stx``: frames start with STX (else they are cut at CR); ``parity``: the bit-7
    check (module docstring)."""

    def __init__(
        self,
        checksum_mode: str = "auto",
        *,
        stx: bool = True,
        dialect: Dialect = "mettler",
        parity: ParityCheck = "auto",
    ) -> None:
        self.mode = checksum_mode
        self.stx = stx
        self.dialect: Dialect = dialect
        self.parity: ParityCheck = parity
        self.body_len = BODY_LEN if stx else BODY_LEN - 1
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[ToledoFrame | Reject]:
        """Frames and rejects completed by ``data``; a partial frame waits for the next call."""
        buf = self._buf
        buf += data
        out: list[ToledoFrame | Reject] = []
        while buf:
            item = self._next(buf)
            if item is None:
                break
            out.append(item)
        return out

    def _next(self, buf: bytearray) -> ToledoFrame | Reject | None:
        """One frame or reject off the front of ``buf``; ``None``: wait for more bytes."""
        seven = buf.translate(_SEVEN_BITS)
        n = self.body_len
        if self.stx:
            at = seven.find(STX)
            if at != 0:
                return cut_reject(buf, len(buf) if at < 0 else at, "no STX")
            cr, nxt = seven.find(CR, 1), seven.find(STX, 1)
            if nxt > 0 and (cr < 0 or nxt < cr):
                return cut_reject(buf, nxt, "length")  # cut short by the next frame
        else:
            cr = seven.find(CR)
            if cr > n - 1:
                return cut_reject(buf, cr - (n - 1), "length")  # bytes before a frame
        if cr < 0:
            return cut_reject(buf, len(buf), "length") if len(buf) > 2 * n else None
        if cr + 1 != n:
            return cut_reject(buf, cr + 1, "length")
        used = self._frame_length(buf)
        if used is None:
            return None
        raw = bytes(buf[:used])
        result = parse(raw[:n], raw[n] if used > n else None, self.dialect)
        if not isinstance(result, Reject) and not parity_ok(raw, self.parity):
            result = Reject("parity", raw)
        # A reject gives up only its first byte: the next frame may start inside it.
        del buf[: 1 if isinstance(result, Reject) else used]
        return result

    def _frame_length(self, buf: bytearray) -> int | None:
        """Bytes of the frame at the start of ``buf``: the body, or the body and its
        checksum byte; ``None`` while that cannot be told yet."""
        n = self.body_len
        if self.mode == "off":
            return n
        if self.mode == "on":
            return n + 1 if len(buf) > n else None
        if len(buf) < 2 * n:
            return None
        following = parse(bytes(buf[n : 2 * n]), None, self.dialect)
        return n if not isinstance(following, Reject) else n + 1


class ToledoConfig(SerialScaleConfig):
    checksum: Literal["auto", "on", "off"] = Field(
        default="auto", description="checksum byte after CR: on, off, or auto (either)"
    )
    stx: bool = Field(
        default=True,
        description="frames start with STX; false for indicators with the STX switched off "
        "(frames are then cut at CR)",
    )
    dialect: Dialect = Field(
        default="mettler",
        description="status-word layout: mettler, or liden (Liden 'MT format': unit in "
        "status word C bit 0)",
    )
    parity_check: ParityCheck = Field(
        default="auto",
        description="bit 7 on a port read with 8 data bits: auto (7E1 or 8N1 sent, checked "
        "per frame), even, odd, none (must be clear); not checked on a 7-bit port",
    )


class ToledoScale(StreamScale[ToledoFrame]):
    """A Mettler-Toledo (or compatible) indicator in standard continuous output."""

    Config = ToledoConfig
    config: ToledoConfig

    def __init__(self, config: ToledoConfig, clock: Clock | None = None, lane: int = 1):
        super().__init__(config, clock, lane)

    def _make_framer(self) -> ToledoFramer:
        cfg = self.config
        parity: ParityCheck = cfg.parity_check
        if cfg.bytesize == 7:
            # The port strips bit 7 and Linux does not check parity (pyserial clears INPCK).
            parity = "none"
            if cfg.checksum != "on":
                log.warning(
                    "%s: opened %d%s%d, the parity is not checked and %s: a bit error becomes "
                    "a wrong weight; read the line 8N1 (parity checked here) or set "
                    'checksum = "on"',
                    cfg.port,
                    cfg.bytesize,
                    cfg.parity,
                    cfg.stopbits,
                    "the checksum may be absent" if cfg.checksum == "auto" else "no checksum",
                )
        return ToledoFramer(cfg.checksum, stx=cfg.stx, dialect=cfg.dialect, parity=parity)

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
