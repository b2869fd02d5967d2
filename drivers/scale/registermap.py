"""Register maps: where a Modbus indicator or WIM controller keeps its weight, as data.

A map is a TOML file in ``firmware_config/registermaps/`` (or any path). Adding an indicator
model is a new file, not new code. Addresses are *protocol* addresses, counted from 0 as they
travel on the wire; a manual that says "40003" means holding register 2.

Value encodings (``type``, ``word_order``, ``byte_order``)::

    int16 / uint16     one register
    int32 / uint32 / float32   two registers, A B C D = bytes from most to least significant
        word_order="big",    byte_order="big"    -> registers [AB, CD]   ("ABCD", Modbus norm)
        word_order="little", byte_order="big"    -> registers [CD, AB]   ("CDAB", word swap)
        word_order="big",    byte_order="little" -> registers [BA, DC]   ("BADC", byte swap)
        word_order="little", byte_order="little" -> registers [DC, BA]   ("DCBA")

Indicators disagree on all four; the map names the one its manual shows. Decoding is pure
(:meth:`ValueSpec.decode`), so it is tested without a device.
"""

from __future__ import annotations

import functools
import math
import struct
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import firmware_config
from drivers.scale.base import ScaleConfigError

MAPS_DIR = firmware_config.ROOT / "registermaps"

ValueType = Literal["int16", "uint16", "int32", "uint32", "float32"]
Table = Literal["holding", "input"]

_STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


_NO_FLAGS: frozenset[str] = frozenset()
_NEGATIVE: frozenset[str] = frozenset({"negative"})


@functools.lru_cache(maxsize=64)
def _codec(type_: str, byte_order: str, count: int) -> tuple[struct.Struct, struct.Struct]:
    """(registers → bytes, bytes → values) for ``count`` elements of ``type_``. A register
    packed little-endian is a register whose two bytes the device sent swapped."""
    regs = _WIDTH[type_] * count
    pack = struct.Struct(("<" if byte_order == "little" else ">") + "H" * regs)
    return pack, struct.Struct(">" + _STRUCT[type_] * count)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValueSpec(_Strict):
    """One number in the register block."""

    address: int = Field(ge=0, le=65535, description="protocol address of the first register")
    type: ValueType = Field(default="int32", description="int16, uint16, int32, uint32, float32")
    word_order: Literal["big", "little"] = Field(
        default="big", description="big: most significant register first (ABCD)"
    )
    byte_order: Literal["big", "little"] = Field(
        default="big", description="big: most significant byte first inside each register"
    )
    scale: float = Field(default=1.0, description="raw value × scale = value in its unit")
    count: int = Field(default=1, ge=1, le=32, description="array length (axle lists)")

    @property
    def width(self) -> int:
        """Registers per element."""
        return _WIDTH[self.type]

    @property
    def span(self) -> int:
        """Registers the whole value (all elements) occupies."""
        return self.width * self.count

    def raw_values(self, registers: list[int], start: int) -> list[int | float]:
        """The numbers before scaling, reading from a block that begins at ``start``.

        One struct pack/unpack for the whole value (polled 20-100 times a second)."""
        offset = self.address - start
        regs = registers[offset : offset + self.span]
        if offset < 0 or len(regs) != self.span:
            raise ValueError(
                f"registers {self.address}..{self.address + self.span - 1} are outside the "
                f"block read ({start}..{start + len(registers) - 1})"
            )
        if self.word_order == "little" and self.width == 2:
            regs[0::2], regs[1::2] = regs[1::2], regs[0::2]
        pack, unpack = _codec(self.type, self.byte_order, self.count)
        return list(unpack.unpack(pack.pack(*(r & 0xFFFF for r in regs))))

    def decode(self, registers: list[int], start: int) -> list[float]:
        """Scaled values. Raises ``ValueError`` on NaN / infinity (a float32 of garbage)."""
        values = [float(raw) * self.scale for raw in self.raw_values(registers, start)]
        if self.type == "float32" and not all(math.isfinite(v) for v in values):
            raise ValueError(f"register {self.address} holds {values!r}, not a number")
        return values

    def encode(self, value: float) -> list[int]:
        """Registers holding ``value`` (the simulator's direction; one element)."""
        raw: int | float = value / self.scale
        if self.type != "float32":
            raw = round(raw)
        data = struct.pack(">" + _STRUCT[self.type], raw)
        regs = [
            int.from_bytes(data[i : i + 2], "big" if self.byte_order == "big" else "little")
            for i in range(0, len(data), 2)
        ]
        return list(reversed(regs)) if self.word_order == "little" else regs


class StatusSpec(_Strict):
    """A status register and which bit means what (bit 0 = least significant).

    A bit left out is not reported by that indicator. ``stable`` and ``motion`` are
    alternatives (some indicators report "stable", others "in motion"); ``ok`` is a
    "data valid" bit whose *absence* is a fault.
    """

    address: int = Field(ge=0, le=65535, description="protocol address of the status register")
    stable: int | None = Field(default=None, ge=0, le=15, description="bit set: weight stable")
    motion: int | None = Field(default=None, ge=0, le=15, description="bit set: in motion")
    zero: int | None = Field(default=None, ge=0, le=15, description="bit set: at zero")
    overload: int | None = Field(
        default=None, ge=0, le=15, description="bit set: over capacity / out of range"
    )
    fault: int | None = Field(default=None, ge=0, le=15, description="bit set: ADC/cell fault")
    ok: int | None = Field(default=None, ge=0, le=15, description="bit clear: data not valid")
    negative: int | None = Field(default=None, ge=0, le=15, description="bit set: below zero")

    def flags(self, word: int) -> tuple[bool, frozenset[str]]:
        """``(stable, flags)`` of one status word."""
        flags: set[str] = set()

        def bit(n: int | None) -> bool:
            return n is not None and bool(word >> n & 1)

        stable = True
        if self.stable is not None:
            stable = bit(self.stable)
        if self.motion is not None and bit(self.motion):
            stable = False
        if not stable:
            flags.add("motion")
        for name in ("zero", "overload", "fault", "negative"):
            if bit(getattr(self, name)):
                flags.add(name)
        if self.ok is not None and not bit(self.ok):
            flags.add("fault")
        return stable, frozenset(flags)


class DetectorSpec(_Strict):
    """A vehicle detector (loop, light curtain) wired to a discrete input of the device."""

    address: int = Field(ge=0, le=65535, description="discrete input address (function 02)")
    occupied_when: bool = Field(default=True, description="input level meaning 'vehicle'")


class RecordSpec(_Strict):
    """A WIM controller's last-vehicle record: a counter, and the block it describes."""

    counter: ValueSpec = Field(description="record counter; a new vehicle when it changes")
    gross_kg: ValueSpec = Field(description="gross mass (scaled to kg)")
    axle_count: ValueSpec = Field(description="number of axles the controller counted")
    axle_loads_kg: ValueSpec = Field(description="axle loads, count = the most the block holds")
    axle_spacings_mm: ValueSpec | None = Field(default=None, description="axle spacings (mm)")
    speed_kmh: ValueSpec | None = Field(default=None, description="speed (scaled to km/h)")
    lane: ValueSpec | None = Field(default=None, description="lane number the controller saw")
    status: ValueSpec | None = Field(default=None, description="record status word")
    status_bits: dict[str, int] = Field(
        default_factory=dict,
        description="record status bit → flag name, e.g. straddling = 0, fault = 1",
    )

    def values(self) -> list[ValueSpec]:
        specs = [self.gross_kg, self.axle_count, self.axle_loads_kg]
        specs += [
            s
            for s in (self.axle_spacings_mm, self.speed_kmh, self.lane, self.status)
            if s is not None
        ]
        return specs


class RegisterMap(_Strict):
    """A whole map file."""

    name: str = Field(description="map name (the file name without .toml)")
    description: str = Field(default="", description="what device this map is for")
    source: str = Field(default="", description="where the layout comes from")
    table: Table = Field(default="holding", description="holding (03) or input (04) registers")
    unit: Literal["kg", "t"] = Field(default="kg", description="unit of the scaled weight")
    weight: ValueSpec | None = Field(default=None, description="the displayed / gross weight")
    status: StatusSpec | None = Field(default=None, description="status register")
    detector: DetectorSpec | None = Field(default=None, description="vehicle detector input")
    record: RecordSpec | None = Field(default=None, description="WIM record layout")

    @model_validator(mode="after")
    def _has_something(self) -> RegisterMap:
        if self.weight is None and self.record is None:
            raise ValueError("a register map needs a [weight] or a [record] section")
        return self

    def weight_block(self) -> tuple[int, int]:
        """``(start, count)`` of one read covering the weight and the status register."""
        if self.weight is None:
            raise ScaleConfigError(f"register map {self.name!r} has no [weight] section")
        spans = [(self.weight.address, self.weight.span)]
        if self.status is not None:
            spans.append((self.status.address, 1))
        return _cover(spans)

    def record_block(self) -> tuple[int, int]:
        """``(start, count)`` of the record block (without the counter)."""
        if self.record is None:
            raise ScaleConfigError(f"register map {self.name!r} has no [record] section")
        return _cover([(s.address, s.span) for s in self.record.values()])

    def decode_weight(self, registers: list[int], start: int) -> tuple[float, bool, frozenset[str]]:
        """``(weight_kg, stable, flags)`` from a block read at ``start``."""
        return self.weight_decoder(start)(registers)

    def weight_decoder(
        self, start: int
    ) -> Callable[[list[int]], tuple[float, bool, frozenset[str]]]:
        """A compiled :meth:`decode_weight` for blocks read at ``start``: offsets, structs and
        status masks worked out once, since an indicator is polled up to 100 times a second.
        Raises ``ValueError`` like :meth:`ValueSpec.decode`."""
        weight, status = self.weight, self.status
        if weight is None:
            raise ScaleConfigError(f"register map {self.name!r} has no [weight] section")
        first = weight.address - start
        last = first + weight.width
        swap = weight.word_order == "little" and weight.width == 2
        pack, unpack = _codec(weight.type, weight.byte_order, 1)
        factor = weight.scale * (1000.0 if self.unit == "t" else 1.0)
        is_float = weight.type == "float32"
        status_at = status.address - start if status is not None else -1
        if status is not None and status_at < 0:
            raise ScaleConfigError(f"register map {self.name!r}: status outside the block")
        words: dict[int, tuple[bool, frozenset[str]]] = {}

        def decode(registers: list[int]) -> tuple[float, bool, frozenset[str]]:
            regs = registers[first:last]
            if first < 0 or len(regs) != weight.width:
                raise ValueError(f"registers {weight.address}.. are outside the block read")
            if swap:
                regs.reverse()
            raw = unpack.unpack(pack.pack(*(r & 0xFFFF for r in regs)))[0]
            value = raw * factor
            if is_float and not math.isfinite(value):
                raise ValueError(f"register {weight.address} holds {raw!r}, not a number")
            stable, flags = True, _NO_FLAGS
            if status is not None:
                word = registers[status_at]
                known = words.get(word)
                if known is None:
                    known = status.flags(word)
                    if len(words) < 256:
                        words[word] = known
                stable, flags = known
            if value < 0:
                flags = flags | _NEGATIVE
            return value, stable, flags

        return decode


WORD_ORDERS = {
    "ABCD": ("big", "big"),
    "CDAB": ("little", "big"),
    "BADC": ("big", "little"),
    "DCBA": ("little", "little"),
}


def every_word_order(spec: ValueSpec, registers: list[int], start: int) -> dict[str, float]:
    """The first element of ``spec`` decoded under each of the four orders (scaled, maybe
    NaN): what ``probe`` shows a technician when a reading looks wrong."""
    out: dict[str, float] = {}
    for name, (word, byte) in WORD_ORDERS.items():
        other = spec.model_copy(update={"word_order": word, "byte_order": byte, "count": 1})
        out[name] = float(other.raw_values(list(registers), start)[0]) * spec.scale
    return out


def plausible_kg(value: float, capacity_kg: float) -> bool:
    """Whether ``value`` can be a reading of a scale of ``capacity_kg``: finite, within
    −5 % .. 120 % of the capacity, and not a denormal-sized crumb (a float32 read in the wrong
    word order often gives 1e-38 or −131 355.8 for 31 460)."""
    if not math.isfinite(value):
        return False
    if value != 0 and abs(value) < 1e-3:
        return False
    return -0.05 * capacity_kg <= value <= 1.2 * capacity_kg


def _cover(spans: list[tuple[int, int]]) -> tuple[int, int]:
    start = min(a for a, _ in spans)
    end = max(a + n for a, n in spans)
    if end - start > 125:
        raise ScaleConfigError(
            f"registers {start}..{end - 1} are more than one Modbus read (125 registers) apart"
        )
    return start, end - start


def available_maps() -> list[str]:
    return sorted(p.stem for p in MAPS_DIR.glob("*.toml"))


def load_map(name_or_path: str) -> RegisterMap:
    """The map called ``name_or_path`` in ``firmware_config/registermaps``, or that file.

    Raises :class:`ScaleConfigError` naming the file and the problem.
    """
    path = Path(name_or_path)
    if not (path.suffix == ".toml" or "/" in name_or_path):
        path = MAPS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(available_maps()) or "(none)"
        raise ScaleConfigError(f"register map {name_or_path!r} not found ({path}); known: {known}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ScaleConfigError(f"register map {path}: {err}") from err
    data.setdefault("name", path.stem)
    try:
        return RegisterMap.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ScaleConfigError(f"register map {path}: {problems}") from err
