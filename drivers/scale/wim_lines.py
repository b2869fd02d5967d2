"""WIM controller, line-record mode: one text line per vehicle over TCP or serial.

Controllers that export records as text send one line per vehicle. Three formats, chosen by
``format``:

* ``csv``: ``columns`` names each position (``lane,time,speed_kmh,axle_count,gross_kg,
  axle_loads_kg,axle_spacings_mm``); list fields hold their items separated by
  ``list_separator`` (``7100;9800;9700``), or a list field may be named last with ``*`` to take
  every remaining column (``axle_loads_kg*``);
* ``kv``: ``key=value`` pairs separated by ``pair_separator`` (``GW=60100 AX=6 AW=7100/9800``);
* ``json``: one JSON object per line.

``fields`` maps our field names to the controller's keys (kv / json), e.g.
``{gross_kg = "GW", axle_loads_kg = "AW"}``; unmapped fields are looked up by our name.
``weight_unit`` (kg, t, or 10kg) scales loads and gross; spacings are in ``spacing_unit`` (mm,
cm or m). The line is kept unchanged in ``raw["line"]``.

Transport: ``port`` is a serial port or any pyserial URL; a controller that serves records
on TCP is ``socket://192.168.1.60:4001``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from drivers.clock import Clock
from drivers.scale.base import Measurement, WimRecord
from drivers.scale.stream import Reject, SerialScaleConfig, StreamScale

OUR_FIELDS = (
    "lane",
    "time",
    "speed_kmh",
    "axle_count",
    "gross_kg",
    "axle_loads_kg",
    "axle_spacings_mm",
    "flags",
)
MAX_LINE = 4096
RAW_KEPT = 256  # bytes of an over-long line kept for the log and the ring buffer


class WimLinesConfig(SerialScaleConfig):
    format: Literal["csv", "kv", "json"] = Field(default="csv", description="csv, kv or json")
    columns: list[str] = Field(
        default_factory=lambda: [
            "lane",
            "speed_kmh",
            "axle_count",
            "gross_kg",
            "axle_loads_kg",
            "axle_spacings_mm",
        ],
        description="csv: our field name of each column ('' or 'skip' to ignore one; a "
        "trailing 'axle_loads_kg*' takes all remaining columns)",
    )
    delimiter: str = Field(default=",", min_length=1, description="csv column separator")
    list_separator: str = Field(default=";", min_length=1, description="items inside a list")
    pair_separator: str = Field(default=" ", min_length=1, description="kv: between pairs")
    fields: dict[str, str] = Field(
        default_factory=dict, description="our field → the controller's key (kv, json)"
    )
    flag_map: dict[str, str] = Field(
        default_factory=dict,
        description="the controller's status words → our flags (straddling, fault, "
        "out_of_range; '' drops one, e.g. OK = '')",
    )
    weight_unit: Literal["kg", "t", "10kg"] = Field(
        default="kg", description="unit of loads and gross in the line"
    )
    spacing_unit: Literal["mm", "cm", "m"] = Field(default="mm", description="unit of spacings")
    encoding: str = Field(default="utf-8", description="text encoding (gbk for some controllers)")
    silence_s: float = Field(
        default=0.0,
        ge=0,
        description="no line this long is a fault (0: never; a quiet road is not a fault)",
    )
    lane: int = Field(default=0, ge=0, description="lane when the line has none (0: this lane)")


@dataclass(frozen=True)
class Line:
    text: str
    raw: bytes


class LineFramer:
    """Bytes → lines (CR, LF or CRLF). A line longer than ``MAX_LINE`` is dropped *whole*:
    everything up to its end of line is one reject (its first bytes kept as raw), never a
    tail parsed as a record."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._buf = bytearray()
        self._overlong = 0  # bytes of an over-long line dropped so far (0: not in one)
        self._overlong_head = b""

    def feed(self, data: bytes) -> list[Line | Reject]:
        buf = self._buf
        buf += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[Line | Reject] = []
        while (nl := buf.find(b"\n")) >= 0:
            raw = bytes(buf[:nl])
            del buf[: nl + 1]
            if self._overlong:
                out.append(self._drop_overlong(len(raw)))
                continue
            if len(raw) > MAX_LINE:
                self._overlong_head = raw[:RAW_KEPT]
                out.append(self._drop_overlong(len(raw)))
                continue
            if not raw.strip():
                continue
            try:
                out.append(Line(raw.decode(self.encoding).strip(), raw))
            except UnicodeDecodeError:
                out.append(Reject("encoding", raw))
        if len(buf) > MAX_LINE:
            if not self._overlong:
                self._overlong_head = bytes(buf[:RAW_KEPT])
            self._overlong += len(buf)
            buf.clear()
        return out

    def _drop_overlong(self, tail: int) -> Reject:
        total = self._overlong + tail
        self._overlong = 0
        head, self._overlong_head = self._overlong_head, b""
        return Reject(f"line too long ({total} bytes > {MAX_LINE})", head)


class RecordError(ValueError):
    pass


def parse_record(cfg: WimLinesConfig, text: str) -> dict[str, Any]:
    """Our fields from one line (values still text or JSON types). Raises RecordError."""
    values: dict[str, Any] = {}
    if cfg.format == "csv":
        cols = [c.strip() for c in text.split(cfg.delimiter)]
        for i, name in enumerate(cfg.columns):
            if name.endswith("*"):
                values[name[:-1]] = cols[i:]
                break
            if i >= len(cols):
                raise RecordError(f"{len(cols)} columns, expected {len(cfg.columns)}")
            if name and name != "skip":
                values[name] = cols[i]
        return values
    if cfg.format == "kv":
        pairs: dict[str, str] = {}
        for part in text.split(cfg.pair_separator):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise RecordError(f"{part!r} is not key=value")
            pairs[key.strip()] = value.strip()
        source: dict[str, Any] = pairs
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(f"not JSON: {err}") from err
        if not isinstance(obj, dict):
            raise RecordError("JSON line is not an object")
        source = obj
    for ours in OUR_FIELDS:
        key = cfg.fields.get(ours, ours)
        if key in source:
            values[ours] = source[key]
    return values


def _number(value: Any, what: str) -> float:
    """A finite number; "nan", "inf", "1e999" and booleans are refused (a signed record must
    never carry a value that is not JSON)."""
    if isinstance(value, bool):
        raise RecordError(f"{what} {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise RecordError(f"{what} {value!r} is not a number") from err
    if not math.isfinite(number):
        raise RecordError(f"{what} {value!r} is not a finite number")
    return number


def _list(value: Any, sep: str, what: str) -> list[float]:
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = [v for v in value.replace("/", sep).split(sep) if v.strip()]
    else:
        items = [value]
    return [_number(v, what) for v in items if not (isinstance(v, str) and not v.strip())]


class WimLinesScale(StreamScale[Line]):
    """A WIM controller that writes one text line per vehicle."""

    Config = WimLinesConfig
    config: WimLinesConfig

    def __init__(self, config: WimLinesConfig, clock: Clock | None = None, lane: int = 1):
        if config.silence_s == 0:
            config = config.model_copy(update={"silence_s": float("inf")})
        super().__init__(config, clock, lane)
        self.lane = config.lane or lane
        self._weight = {"kg": 1.0, "t": 1000.0, "10kg": 10.0}[config.weight_unit]
        self._spacing = {"mm": 1.0, "cm": 10.0, "m": 1000.0}[config.spacing_unit]

    def _make_framer(self) -> LineFramer:
        return LineFramer(self.config.encoding)

    def _measurement(self, frame: Line) -> Measurement | None:
        try:
            return self._record(frame)
        except RecordError as err:
            self.rejects["field mapping"] += 1
            self.fault_log.failure(
                f"record line not understood ({err}); check format/columns/fields: {frame.text!r}"
            )
            return None

    def _record(self, line: Line) -> WimRecord:
        cfg = self.config
        v = parse_record(cfg, line.text)
        if "gross_kg" not in v and "axle_loads_kg" not in v:
            raise RecordError("neither gross_kg nor axle_loads_kg in the line")
        loads = [
            round(x * self._weight)
            for x in _list(v.get("axle_loads_kg", []), cfg.list_separator, "axle load")
        ]
        spacings = [
            round(x * self._spacing)
            for x in _list(v.get("axle_spacings_mm", []), cfg.list_separator, "spacing")
        ]
        gross = (
            round(_number(v["gross_kg"], "gross") * self._weight) if "gross_kg" in v else sum(loads)
        )
        flags: set[str] = set()
        raw: dict[str, Any] = {"line": line.text}
        if "axle_count" in v:
            count = int(_number(v["axle_count"], "axle count"))
            raw["axle_count"] = count
        if "flags" in v:
            for word in str(v["flags"]).replace(cfg.list_separator, " ").split():
                mapped = cfg.flag_map.get(word, word)
                if mapped:
                    flags.add(mapped)
        if "time" in v:
            raw["time"] = v["time"]
        speed = _number(v["speed_kmh"], "speed") if "speed_kmh" in v else None
        lane = int(_number(v["lane"], "lane")) if "lane" in v else self.lane
        return WimRecord(
            lane=lane,
            at=self.clock.now(),
            axle_loads_kg=tuple(loads),
            gross_kg=gross,
            axle_spacings_mm=tuple(spacings),
            speed_kmh=speed,
            flags=frozenset(flags),
            raw=raw,
        )


def format_csv(
    lane: int, speed_kmh: float, loads: list[int], spacings: list[int], sep: str = ";"
) -> str:
    """A record line in the default csv layout (the simulator's direction)."""
    return (
        f"{lane},{speed_kmh:.1f},{len(loads)},{sum(loads)},"
        f"{sep.join(map(str, loads))},{sep.join(map(str, spacings))}\r\n"
    )
