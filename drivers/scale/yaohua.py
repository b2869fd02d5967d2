"""Yaohua (耀华) XK3190 output formats beside the 12-byte tF=0 frame (:mod:`drivers.scale.xk3190`).

A12(E) continuous frame, 15 bytes (XK3190-A12(E) manual p.12)::

    +---+-----+----------------------+-----+-------+-------+----+----+
    | W | G/N | weight, 7 chars      | k g | XOR H | XOR L | CR | LF |
    +---+-----+----------------------+-----+-------+-------+----+----+
      1    2          3 .. 9           10-11   12      13     14   15

* byte 2: ``G`` gross, ``N`` net; bytes 3..9 the value with its decimal point (byte 9 blank
  when there is none, byte 3 ``-`` when negative); checksum: XOR of bytes 1..11 as two
  hex characters. ``"         OL"`` (overload, G.W > Max + 9e) and ``"         LO"`` (below
  −20 d) take the place of bytes 1..11 and carry no weight.

A23P / A26 "=" formats, 9 bytes, no checksum, no terminator, back to back (A26 manual
p.12-13, formats 1 and 2)::

    reversed:  =  c7 c6 c5 c4 c3 c2 c1  sign     value chars least significant first
    in order:  =  sign  c1 c2 c3 c4 c5 c6 c7     value chars most significant first

* the 7 characters include the decimal point; sign ``0`` positive, ``-`` negative. A frame
  counts only when the next ``=`` follows right after it (a lost byte is a reject), and,
  since nothing checks the bits, only when the same frame came twice in a row.

tF=1 command mode (A9+/DS1/A23P manuals): the host sends ``02 addr cmd XH XL 03`` (``B`` =
read gross; XOR of addr and cmd), the indicator answers ``02 addr cmd sign 6 digits dp XH XL
03`` (14 bytes, XOR of bytes 2..11). Only the gross is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.scale.stream import Reject, cut_reject

STX, ETX, CR, LF = 0x02, 0x03, 0x0D, 0x0A
A12_LEN = 15
EQ_LEN = 9
TF1_REPLY_LEN = 14
_DIGITS = frozenset(b"0123456789")


@dataclass(frozen=True)
class YaohuaFrame:
    value: float | None  # in the display unit, signed; None for OL / LO
    net: bool | None  # None: the format does not say
    state: str  # "" | "overload" | "underload"
    raw: bytes


def xor_chars(data: bytes) -> bytes:
    """XOR of ``data`` as two upper-case hex characters (0-9 +0x30, A-F +0x37)."""
    x = 0
    for b in data:
        x ^= b
    return bytes(0x30 + n if n <= 9 else 0x37 + n for n in (x >> 4, x & 0x0F))


def _decimal(text: bytes) -> float | None:
    """A value with at most one decimal point between digits, else ``None``."""
    body = text[1:] if text[:1] == b"-" else text
    if not body or body.count(b".") > 1 or body[:1] == b"." or body[-1:] == b".":
        return None
    if not set(body.replace(b".", b"")) <= _DIGITS:
        return None
    value = float(body)
    return -value if text[:1] == b"-" else value


# ----- A12(E) 15-byte frame ----------------------------------------------------------------


def parse_a12(frame: bytes) -> YaohuaFrame | Reject:
    if len(frame) != A12_LEN or frame[-2:] != b"\r\n":
        return Reject("length", frame)
    if frame[11:13].upper() != xor_chars(frame[:11]):
        return Reject("checksum", frame)
    if frame[:9] == b" " * 9 and frame[9:11] in (b"OL", b"LO"):
        state = "overload" if frame[9:11] == b"OL" else "underload"
        return YaohuaFrame(None, None, state, bytes(frame))
    if frame[0:1] != b"W" or frame[1:2] not in (b"G", b"N"):
        return Reject("header", frame)
    if frame[9:11] != b"kg":
        return Reject("unit", frame)
    chars = frame[2:9]
    value = _decimal(chars[:-1] if chars[-1:] == b" " else chars)
    if value is None:
        return Reject("digits", frame)
    return YaohuaFrame(value, frame[1:2] == b"N", "", bytes(frame))


def encode_a12(value: float, decimals: int = 0, net: bool = False) -> bytes:
    """A 15-byte frame (the simulator's direction)."""
    text = f"{value:.{decimals}f}" if decimals else f"{round(value):d}"
    width = 7 if decimals else 6
    sign = "-" if text.startswith("-") else ""
    text = sign + text.lstrip("-").rjust(width - len(sign), "0")
    body = b"W" + (b"N" if net else b"G") + text.encode().ljust(7, b" ") + b"kg"
    return body + xor_chars(body) + b"\r\n"


class A12Framer:
    """Bytes → A12 frames, cut at LF; never raises."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[YaohuaFrame | Reject]:
        buf = self._buf
        buf += data
        out: list[YaohuaFrame | Reject] = []
        while (lf := buf.find(LF)) >= 0:
            line = bytes(buf[: lf + 1])
            del buf[: lf + 1]
            out.append(parse_a12(line))
        if len(buf) > 4 * A12_LEN:
            out.append(cut_reject(buf, len(buf), "no end of line"))
        return out


# ----- A23P / A26 "=" formats ---------------------------------------------------------------


def parse_eq(frame: bytes, reversed_digits: bool) -> YaohuaFrame | Reject:
    if len(frame) != EQ_LEN or frame[0:1] != b"=":
        return Reject("length", frame)
    if reversed_digits:
        chars, sign = frame[1:8][::-1], frame[8:9]
    else:
        sign, chars = frame[1:2], frame[2:9]
    if sign not in (b"0", b"-"):
        return Reject("sign", frame)
    value = _decimal(chars)
    if value is None:
        return Reject("digits", frame)
    return YaohuaFrame(-value if sign == b"-" else value, None, "", bytes(frame))


def encode_eq(value: float, decimals: int, reversed_digits: bool) -> bytes:
    """A 9-byte "=" frame (the simulator's direction)."""
    text = f"{abs(value):0{7}.{decimals}f}" if decimals else f"{round(abs(value)):07d}"
    sign = b"-" if value < 0 else b"0"
    chars = text.encode()
    return b"=" + (chars[::-1] + sign if reversed_digits else sign + chars)


class EqFramer:
    """Bytes → "=" frames. A frame needs the next ``=`` right after its 9 bytes, and the same
    frame twice in a row (nothing else checks it); never raises."""

    def __init__(self, reversed_digits: bool) -> None:
        self.reversed_digits = reversed_digits
        self._buf = bytearray()
        self._previous = b""

    def feed(self, data: bytes) -> list[YaohuaFrame | Reject]:
        buf = self._buf
        buf += data
        out: list[YaohuaFrame | Reject] = []
        while buf:
            at = buf.find(b"=")
            if at != 0:
                out.append(cut_reject(buf, len(buf) if at < 0 else at, "no ="))
                continue
            nxt = buf.find(b"=", 1)
            if nxt < 0:
                if len(buf) > EQ_LEN:
                    out.append(cut_reject(buf, len(buf), "length"))
                break
            if nxt != EQ_LEN:
                self._previous = b""
                out.append(cut_reject(buf, nxt, "length"))
                continue
            frame = bytes(buf[:EQ_LEN])
            del buf[:EQ_LEN]
            result = parse_eq(frame, self.reversed_digits)
            confirmed = frame == self._previous
            self._previous = frame if not isinstance(result, Reject) else b""
            if isinstance(result, Reject) or confirmed:
                out.append(result)
        return out


# ----- tF=1 command mode ----------------------------------------------------------------------


def command(address: str, cmd: str = "B") -> bytes:
    """The host's request: ``02 addr cmd XH XL 03`` (``B`` = read gross)."""
    body = (address + cmd).encode("ascii")
    return bytes([STX]) + body + xor_chars(body) + bytes([ETX])


def parse_reply(frame: bytes, address: str, cmd: str = "B") -> YaohuaFrame | Reject:
    """The indicator's 14-byte answer to ``cmd``."""
    if len(frame) != TF1_REPLY_LEN or frame[0] != STX or frame[-1] != ETX:
        return Reject("length", frame)
    if frame[1:2] != address.encode("ascii"):
        return Reject("address", frame)
    if frame[2:3] != cmd.encode("ascii"):
        return Reject("command", frame)
    if frame[11:13].upper() != xor_chars(frame[1:11]):
        return Reject("checksum", frame)
    sign, digits, dec = frame[3:4], frame[4:10], frame[10]
    if sign not in (b"+", b"-") or not set(digits) <= _DIGITS or not 0x30 <= dec <= 0x34:
        return Reject("digits", frame)
    value = int(digits) / 10 ** (dec - 0x30)
    return YaohuaFrame(-value if sign == b"-" else value, cmd == "D", "", bytes(frame))


def encode_reply(address: str, value: float, decimals: int = 0, cmd: str = "B") -> bytes:
    """The indicator's answer (the simulator's direction)."""
    digits = round(abs(value) * 10**decimals)
    body = (address + cmd).encode() + (b"-" if value < 0 else b"+")
    body += f"{digits:06d}".encode() + bytes([0x30 + decimals])
    return bytes([STX]) + body + xor_chars(body) + bytes([ETX])


class ReplyFramer:
    """Bytes → replies between STX and ETX; a 6-byte handshake echo or an EOT answer is a
    reject; never raises."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[YaohuaFrame | Reject]:
        buf = self._buf
        buf += data
        out: list[YaohuaFrame | Reject] = []
        while buf:
            at = buf.find(STX)
            if at != 0:
                out.append(cut_reject(buf, len(buf) if at < 0 else at, "no STX"))
                continue
            end = buf.find(ETX, 1)
            nxt = buf.find(STX, 1)
            if 0 < nxt < (end if end >= 0 else len(buf)):
                out.append(cut_reject(buf, nxt, "length"))
                continue
            if end < 0:
                if len(buf) > TF1_REPLY_LEN:
                    out.append(cut_reject(buf, len(buf), "length"))
                break
            frame = bytes(buf[: end + 1])
            del buf[: end + 1]
            out.append(parse_reply(frame, self.address))
        return out
