"""The station configuration: one TOML file, validated strictly before anything starts.

Every component owns the model of its own table (``[legal]`` → :class:`agent.legal.LegalConfig`,
``[evidence]``, ``[uplink]``; each device table by the backend its ``type`` names); this module
composes them, rejects unknown keys, and turns every problem into a line a technician can act on::

    station.toml:12  uplink.prot  1883 → unknown key (did you mean 'port'?)

:func:`load_config` raises :class:`ConfigError` with all problems at once; it never lets a
pydantic traceback reach the journal.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from agent.legal import LegalConfig
from agent.pipeline.assemble import AssembleConfig
from agent.pipeline.weighing import WeighingConfig
from agent.provenance import SiteConfig
from agent.store.evidence import EvidenceConfig
from agent.uplink.client import UplinkConfig
from drivers.camera import CAMERAS, CameraConfig
from drivers.paths import ConfigPath
from drivers.plate import PLATE_READERS, PlateReaderConfig
from drivers.registry import BackendError, Registry
from drivers.scale import SCALES, ScaleConfig

DEFAULT_DATA_DIR = "/var/lib/roadside-agent"
STATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class StationSection(BaseModel):
    """``[station]``: who this station is and where it keeps its data."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=STATION_ID.pattern,
        description="station id as registered with the platform, e.g. JS-ZJ-0001 "
        "(letters, digits, - and _; it prefixes every record id and MQTT topic)",
    )
    name: str = Field(default="", description="human-readable site name")
    data_dir: ConfigPath = Field(
        default=DEFAULT_DATA_DIR,
        description="where the database, images and keys live (--data-dir overrides)",
    )
    utc_offset_hours: float = Field(
        default=8.0, ge=-12, le=14, description="offset written into record times (China: 8)"
    )
    site: SiteConfig | None = Field(
        default=None,
        description="the published enforcement site (see [station.site]); sealed into every "
        "record as `site` and sent in the heartbeat",
    )


class LaneSection(BaseModel):
    """``[[lanes]]``: one traffic lane with its scale and cameras."""

    model_config = ConfigDict(extra="forbid")

    number: int = Field(ge=1, le=99, description="lane number written into every record")
    vehicle_class: str = Field(
        default="unknown",
        pattern="^(truck|combination|unknown)$",
        description="the vehicles this lane carries, if known: truck, combination, unknown",
    )
    scale: dict[str, Any] = Field(description="the lane's scale; its keys depend on `type`")
    weighing: WeighingConfig = Field(
        default_factory=WeighingConfig,
        description="how the lane's measurements become vehicles (see [lanes.weighing])",
    )
    cameras: list[dict[str, Any]] = Field(
        default_factory=list, description="the lane's cameras, each with a `type`"
    )


class StationConfigFile(BaseModel):
    """The whole file as written (device tables still generic)."""

    model_config = ConfigDict(extra="forbid")

    station: StationSection
    uplink: UplinkConfig
    legal: LegalConfig = Field(default_factory=LegalConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    assemble: AssembleConfig = Field(default_factory=AssembleConfig)
    plate: dict[str, Any] = Field(
        default_factory=lambda: {"type": "simulated"},
        description="the plate reader; its keys depend on `type`",
    )
    lanes: list[LaneSection] = Field(min_length=1, description="at least one lane")


@dataclass(frozen=True)
class Lane:
    number: int
    vehicle_class: str
    scale: ScaleConfig
    cameras: tuple[CameraConfig, ...]
    weighing: WeighingConfig


@dataclass(frozen=True)
class StationConfig:
    """The validated configuration the station runs with."""

    path: Path | None
    text: str
    file: StationConfigFile
    lanes: tuple[Lane, ...]
    plate: PlateReaderConfig

    @property
    def station(self) -> StationSection:
        return self.file.station

    @property
    def uplink(self) -> UplinkConfig:
        return self.file.uplink

    @property
    def legal(self) -> LegalConfig:
        return self.file.legal

    @property
    def evidence(self) -> EvidenceConfig:
        return self.file.evidence

    @property
    def assemble(self) -> AssembleConfig:
        return self.file.assemble

    def data_dir(self, override: str | Path | None = None) -> Path:
        return Path(override) if override else Path(self.station.data_dir)

    @property
    def digest(self) -> str:
        """SHA-256 of the file as loaded (the heartbeat's config hash)."""
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class Problem:
    line: int | None
    path: str
    value: str
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        value = f"  {self.value} → " if self.value else " → "
        return f"{where}  {self.path or '(file)'}{value}{self.message}"


class ConfigError(Exception):
    """The configuration is not usable; ``problems`` lists every reason."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = problems
        super().__init__("\n".join(p.format(filename) for p in problems))


# -- locating keys in the TOML text ---------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")


def _norm(part: str) -> str:
    return part.strip().strip("\"'")


def locate(text: str, path: tuple[str | int, ...]) -> int | None:
    """The 1-based line where ``path`` (e.g. ``("lanes", 0, "scale", "port")``) is written.

    Falls back to the line of the nearest enclosing table. Handles ``[table]``,
    ``[[array.of.tables]]`` and dotted keys; inline tables resolve to their key's line.
    """
    want = [str(p) for p in path]
    counters: dict[str, int] = {}
    current: list[str] = []
    best: tuple[int, int] | None = None  # (matched length, line)

    def consider(full: list[str], lineno: int) -> None:
        nonlocal best
        n = 0
        for a, b in zip(full, want, strict=False):
            if a != b:
                break
            n += 1
        if n and (best is None or n > best[0]):
            best = (n, lineno)

    for lineno, line in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(line)
        if m and not _KEY.match(line):
            parts = [_norm(p) for p in m.group(2).split(".")]
            full: list[str] = []
            for i, part in enumerate(parts):
                full.append(part)
                if m.group(1) == "[[" and i == len(parts) - 1:
                    key = ".".join(full)
                    counters[key] = counters.get(key, -1) + 1
                    # nested arrays restart when their parent entry changes
                    for other in list(counters):
                        if other.startswith(key + "."):
                            del counters[other]
                    full.append(str(counters[key]))
                elif ".".join(full) in counters:
                    full.append(str(counters[".".join(full)]))
            current = full
            consider(current, lineno)
            continue
        k = _KEY.match(line)
        if k:
            consider(current + [_norm(p) for p in k.group(1).split(".")], lineno)
    return best[1] if best else None


# -- validation -----------------------------------------------------------------------------


def _loc_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _suggest(bad: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    hint = difflib.get_close_matches(bad, list(model.model_fields), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _model_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return model
        model = next(_models_in(field.annotation), None)
    return model


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The config models in a field's type (``TlsConfig | None``, ``list[LaneSection]``)."""
    if get_origin(annotation) is None and isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            yield annotation
        return
    for arg in get_args(annotation):
        yield from _models_in(arg)


def _problems(
    err: ValidationError,
    text: str,
    prefix: tuple[str | int, ...],
    model: type[BaseModel],
) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        full = prefix + loc
        value = "" if e["type"] == "missing" else repr(e.get("input"))[:60]
        message = e["msg"]
        if e["type"] == "extra_forbidden":
            message = "unknown key" + _suggest(str(loc[-1]), _model_at(model, loc[:-1]))
        elif e["type"] == "missing":
            message = "required key is missing"
        line = locate(text, full) if e["type"] != "missing" else locate(text, full[:-1])
        problems.append(Problem(line, _loc_path(full), value, message))
    return problems


def _device(
    registry: Registry[Any],
    table: dict[str, Any],
    text: str,
    where: tuple[str | int, ...],
    problems: list[Problem],
    context: dict[str, Any],
) -> Any:
    kind = table.get("type")
    if not isinstance(kind, str):
        problems.append(
            Problem(
                locate(text, where),
                _loc_path((*where, "type")),
                "",
                f"required key is missing (one of: {', '.join(registry.names())})",
            )
        )
        return None
    try:
        cls = registry.get(kind)
    except BackendError as err:
        problems.append(
            Problem(
                locate(text, (*where, "type")), _loc_path((*where, "type")), repr(kind), str(err)
            )
        )
        return None
    model: type[BaseModel] = cls.Config
    try:
        return model.model_validate(table, context=context)
    except ValidationError as err:
        problems.extend(_problems(err, text, where, model))
        return None


def parse_config(text: str, path: Path | None = None) -> StationConfig:
    """Validate TOML ``text``. Raises :class:`ConfigError` listing every problem."""
    filename = str(path) if path else "<config>"
    context = {"base_dir": str(Path(path).resolve().parent) if path else os.getcwd()}
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"line (\d+)", str(err))
        raise ConfigError(
            filename, [Problem(int(m.group(1)) if m else None, "", "", f"not valid TOML: {err}")]
        ) from err
    try:
        file = StationConfigFile.model_validate(data, context=context)
    except ValidationError as err:
        raise ConfigError(filename, _problems(err, text, (), StationConfigFile)) from err

    problems: list[Problem] = []
    lanes = []
    numbers: set[int] = set()
    for i, lane in enumerate(file.lanes):
        if lane.number in numbers:
            problems.append(
                Problem(
                    locate(text, ("lanes", i, "number")),
                    f"lanes[{i}].number",
                    str(lane.number),
                    "lane number used twice",
                )
            )
        numbers.add(lane.number)
        scale = _device(SCALES, lane.scale, text, ("lanes", i, "scale"), problems, context)
        cams = [
            _device(CAMERAS, cam, text, ("lanes", i, "cameras", j), problems, context)
            for j, cam in enumerate(lane.cameras)
        ]
        if scale is not None and all(c is not None for c in cams):
            lanes.append(Lane(lane.number, lane.vehicle_class, scale, tuple(cams), lane.weighing))
    plate = _device(PLATE_READERS, file.plate, text, ("plate",), problems, context)
    if problems:
        raise ConfigError(filename, problems)
    return StationConfig(path, text, file, tuple(lanes), plate)


def load_config(path: str | Path) -> StationConfig:
    """Read and validate the config file at ``path``. Raises :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(p), [Problem(None, "", "", f"cannot read the file: {err}")]) from err
    return parse_config(text, p)


# -- redaction ------------------------------------------------------------------------------
#
# What leaves the station (``get-config``, the ``diag`` archive) never carries a secret. A config
# model marks its secret fields with ``Field(..., json_schema_extra={"secret": True})``; those are
# redacted whatever their name. Any other key whose words look secret is redacted too: a key
# of another version's config, a misplaced one, a field not marked yet.

# A key looks secret when one of its words (split at _ - .) is one of these. "certificate" (the
# scale's verification certificate number) and "key_id" are deliberately not secret.
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "passphrase",
        "secret",
        "token",
        "key",
        "keyfile",
        "psk",
        "private",
        "credential",
        "credentials",
        "apikey",
    }
)
NOT_SECRET = frozenset({"key_id", "public_key"})
REDACTED = '"<redacted>"'

_ASSIGN = re.compile(
    r"""(?P<key>[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')\s*=\s*"""
    r"""(?P<value>\"\"\".*?\"\"\"|'\'\'.*?'\'\'|\"\"\"|'\'\'|"(?:[^"\\]|\\.)*"|'[^']*'|\[[^\]]*\]|[^,}\]\s#]+)"""
)
_URL_PASSWORD = re.compile(r"(://[^:/\s\"'@]+:)[^@\s\"']+@")


def config_fields(
    model: type[BaseModel] = StationConfigFile,
) -> Iterator[tuple[type[BaseModel], str, FieldInfo]]:
    """Every field of ``model`` and of the models its fields hold, as ``(model, name, field)``.

    Device tables are generic in the file (their model depends on ``type``) and not walked.
    """
    seen: set[type[BaseModel]] = set()
    todo = [model]
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.add(current)
        for name, info in current.model_fields.items():
            yield current, name, info
            todo.extend(_models_in(info.annotation))


@functools.cache
def secret_fields() -> frozenset[str]:
    """Names of the config fields marked ``json_schema_extra={"secret": True}``."""
    return frozenset(
        name
        for _, name, info in config_fields()
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("secret")
    )


def looks_secret(key: str) -> bool:
    """Whether one of the words of ``key`` is in :data:`SECRET_WORDS`."""
    return any(word in SECRET_WORDS for word in re.split(r"[_\-.]", key.strip("\"'").lower()))


def is_secret_key(key: str) -> bool:
    """Whether the value of config key ``key`` (as written in TOML, maybe quoted) is secret:
    a field marked secret, or a key that looks secret (not ``key_id``, ``public_key``)."""
    name = key.strip("\"'").lower()
    if name in NOT_SECRET:
        return False
    return name in secret_fields() or looks_secret(name)


def redact_config(text: str) -> str:
    """The TOML text with every secret value (:func:`is_secret_key`) replaced by ``"<redacted>"``.

    Line-based, so comments, layout and line numbers stay as the technician wrote them (the
    desk can match ``check-config`` messages to lines); inline tables, one-line arrays and
    multi-line strings (blanked line by line) are handled; passwords inside URLs
    (``mqtt://user:pw@host``) are redacted too. The result is valid TOML when the input was.
    """
    out: list[str] = []
    closing: str | None = None  # inside a redacted multi-line string: its closing delimiter
    for line in text.splitlines(keepends=True):
        newline = line[len(line.rstrip("\r\n")) :]
        if closing is not None:
            if closing in line:
                closing = None
            out.append(newline)  # keep the line count
            continue
        code, comment = _split_comment(line.rstrip("\r\n"))
        code = _URL_PASSWORD.sub(r"\1<redacted>@", code)

        pieces: list[str] = []
        pos = 0
        for m in _ASSIGN.finditer(code):
            if not is_secret_key(m.group("key")):
                continue
            pieces += [code[pos : m.start()], f"{m.group('key')} = {REDACTED}"]
            pos = m.end()
            value = m.group("value")
            if value in ('"""', "'''") and value not in code[m.end() :]:
                closing = value  # the rest of this line is inside the string
                break
        code = "".join(pieces) + ("" if closing else code[pos:])
        if closing is not None:
            comment = ""
        out.append(code + comment + newline)
    return "".join(out)


def _split_comment(line: str) -> tuple[str, str]:
    """``(code, comment)`` of one TOML line: a ``#`` outside strings starts the comment."""
    quote: str | None = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[:i], line[i:]
        i += 1
    return line, ""
