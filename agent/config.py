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
from typing import Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from agent.legal import LegalConfig
from agent.pipeline.assemble import AssembleConfig
from agent.pipeline.reading import PipelineConfig
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
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
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

    @property
    def pipeline(self) -> PipelineConfig:
        return self.file.pipeline

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
    return "" if model is None else _close(bad, list(model.model_fields))


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
        line = locate(text, full) if e["type"] != "missing" else locate(text, full[:-1])
        problems.append(Problem(line, _loc_path(full), value, _message(e, loc, model)))
    return problems


def _choices(expected: str) -> str:
    """``"'kg' or 't'"`` (pydantic's ``expected``) as ``kg, t``."""
    return ", ".join(c.strip().strip("'\"") for c in re.split(r",|\bor\b", expected) if c.strip())


def _close(value: Any, choices: list[str]) -> str:
    hint = difflib.get_close_matches(str(value), choices, n=1) if isinstance(value, str) else []
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _pattern_message(pattern: str, field: FieldInfo | None, value: Any) -> str:
    """A regex the value did not match, said for a technician (choices, or the field's doc)."""
    m = re.fullmatch(r"\^\(?([\w|]+)\)?\$", pattern)
    if m and "|" in m.group(1):
        choices = m.group(1).split("|")
        return "must be one of " + ", ".join(choices) + _close(value, choices)
    m = re.fullmatch(r"\^\[(\w+)\]\$", pattern)
    if m:
        return "must be one of " + ", ".join(m.group(1))
    what = field.description if field is not None and field.description else ""
    return f"not of the expected form ({what})" if what else "not of the expected form"


# pydantic error types → what a technician reads; {name} is filled from the error's ctx.
_MESSAGES = {
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text (in quotes)",
    "date_type": "must be a date (YYYY-MM-DD, without quotes)",
    "date_parsing": "must be a date (YYYY-MM-DD, without quotes)",
    "date_from_datetime_parsing": "must be a date (YYYY-MM-DD, without quotes)",
    "date_from_datetime_inexact": "must be a date (YYYY-MM-DD), not a date and time",
    "list_type": "must be a list ([...])",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "too_short": "needs at least {min_length} entries",
    "too_long": "takes at most {max_length} entries",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
}


def _message(e: Any, loc: tuple[str | int, ...], model: type[BaseModel]) -> str:
    """The problem of one pydantic error in words, never pydantic's own text."""
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key" + _suggest(str(loc[-1]), _model_at(model, loc[:-1]))
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        choices = _choices(str(ctx.get("expected", "")))
        return "must be one of " + choices + _close(e.get("input"), choices.split(", "))
    if kind == "string_pattern_mismatch":
        owner = _model_at(model, loc[:-1]) if loc else None
        field = owner.model_fields.get(str(loc[-1])) if owner is not None and loc else None
        return _pattern_message(str(ctx.get("pattern", "")), field, e.get("input"))
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", e["msg"])) or e["msg"]
    if kind in _MESSAGES:
        try:
            return _MESSAGES[kind].format(**ctx)
        except (KeyError, IndexError):
            pass
    msg = str(e["msg"])
    return msg[:1].lower() + msg[1:]


def _device(
    registry: Registry[Any],
    table: Any,
    text: str,
    where: tuple[str | int, ...],
    problems: list[Problem],
    context: dict[str, Any],
) -> Any:
    if not isinstance(table, dict):
        return None  # the file-level validation said what is wrong with it
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


def _parse_toml(text: str, filename: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"line (\d+)", str(err))
        raise ConfigError(
            filename, [Problem(int(m.group(1)) if m else None, "", "", f"not valid TOML: {err}")]
        ) from err


def _lane_devices(
    data: dict[str, Any], text: str, problems: list[Problem], context: dict[str, Any]
) -> list[tuple[Any, list[Any]]]:
    """Each raw ``[[lanes]]`` table's scale and cameras validated by their backends (``None``
    where invalid), and lane numbers used twice; done even when the rest of the file is bad,
    so one pass reports every problem."""
    raw = data.get("lanes")
    devices: list[tuple[Any, list[Any]]] = []
    numbers: set[Any] = set()
    for i, lane in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(lane, dict):
            continue
        number = lane.get("number")
        if isinstance(number, int) and number in numbers:
            problems.append(
                Problem(
                    locate(text, ("lanes", i, "number")),
                    f"lanes[{i}].number",
                    str(number),
                    "lane number used twice",
                )
            )
        numbers.add(number)
        scale = _device(SCALES, lane.get("scale"), text, ("lanes", i, "scale"), problems, context)
        cameras = lane.get("cameras", [])
        cams = [
            _device(CAMERAS, cam, text, ("lanes", i, "cameras", j), problems, context)
            for j, cam in enumerate(cameras if isinstance(cameras, list) else [])
        ]
        devices.append((scale, cams))
    return devices


# -- what the daemon would refuse at start-up ------------------------------------------------
#
# Each check calls the code ``run`` calls (load_map, DeviceFacts, load_rules, make_client), so
# check-config cannot pass a file the daemon then refuses.

_Found = list[tuple[tuple[str | int, ...], str, str]]  # (key path, value, what is wrong)


def _start_problems(
    file: StationConfigFile | None,
    data: dict[str, Any],
    devices: list[tuple[Any, list[Any]]],
    plate: Any,
    text: str,
    context: dict[str, Any],
) -> list[Problem]:
    found: _Found = []
    for i, (scale, cams) in enumerate(devices):
        if scale is not None:
            found += [(("lanes", i, "scale", *k), v, m) for k, v, m in _scale_problems(scale)]
        for j, cam in enumerate(cams):
            folder = getattr(cam, "folder", "")
            if isinstance(folder, str) and folder and not Path(folder).is_dir():
                found.append(
                    (("lanes", i, "cameras", j, "folder"), repr(folder), "folder not found")
                )
    if plate is not None:
        bundle = getattr(plate, "bundle", "")
        if isinstance(bundle, str) and bundle and not Path(bundle).is_dir():
            found.append((("plate", "bundle"), repr(bundle), "folder not found"))
    legal = _section(file, data, "legal", LegalConfig, context)
    if legal is not None:
        found += _legal_problems(legal)
    uplink = _section(file, data, "uplink", UplinkConfig, context)
    if uplink is not None:
        found += [(("uplink", *k), v, m) for k, v, m in _uplink_problems(uplink)]
    evidence = _section(file, data, "evidence", EvidenceConfig, context)
    if evidence is not None and evidence.signing_key and not Path(evidence.signing_key).is_file():
        # a new key made in its place would be a signing identity the platform does not know
        found.append(
            (("evidence", "signing_key"), "", "file not found (roadside-agent keygen makes it)")
        )
    return [Problem(locate(text, key), _loc_path(key), value, msg) for key, value, msg in found]


_M = TypeVar("_M", bound=BaseModel)


def _section(
    file: StationConfigFile | None,
    data: dict[str, Any],
    name: str,
    model: type[_M],
    context: dict[str, Any],
) -> _M | None:
    """Table ``name`` validated, also when another part of the file is bad (``None`` when
    this table is bad too: its problems are already reported)."""
    if file is not None:
        section: _M = getattr(file, name)
        return section
    try:
        return model.model_validate(data.get(name, {}), context=context)
    except ValidationError:
        return None


def _scale_problems(scale: ScaleConfig) -> _Found:
    """Speed range (as the verdict checks it) and register map of one scale. (A simulated
    scale's missing ``photos`` folder is no problem: it generates pictures instead.)"""
    from agent.legal import DeviceFacts, InvalidFactsError
    from drivers.scale.base import ScaleConfigError
    from drivers.scale.registermap import load_map
    from drivers.scale.wim_modbus import WimModbusConfig

    found: _Found = []
    try:
        DeviceFacts(
            scale_id=scale.id, min_speed_kmh=scale.min_speed_kmh, max_speed_kmh=scale.max_speed_kmh
        )
    except InvalidFactsError as err:
        key = "min_speed_kmh" if scale.min_speed_kmh < 0 else "max_speed_kmh"
        found.append(((key,), f"{getattr(scale, key):g}", str(err)))
    name = getattr(scale, "map", None)
    if isinstance(name, str):
        try:
            rmap = load_map(name)
            # the section the backend reads: a WIM controller's record, an indicator's weight
            if isinstance(scale, WimModbusConfig):
                rmap.record_block()
            else:
                rmap.weight_block()
        except ScaleConfigError as err:
            found.append((("map",), repr(name), str(err)))
    return found


def _legal_problems(legal: LegalConfig) -> _Found:
    from agent.legal import LegalRulesError, load_rules

    try:
        load_rules(legal)
    except LegalRulesError as err:
        return [(("legal", "rules_dir"), repr(legal.rules_dir), str(err))]
    return []


def _uplink_problems(uplink: UplinkConfig) -> _Found:
    """TLS and password files that do not exist, then what paho refuses to load.

    A relative name is a systemd credential (``LoadCredential=``): it is checked only where
    ``$CREDENTIALS_DIRECTORY`` is set (``ExecStartPre=`` and ``run`` under the unit), not in a
    technician's shell, where the daemon's credentials are not visible.
    """
    from agent.uplink.client import UplinkError, credential_path, make_client

    named: list[tuple[tuple[str, ...], str]] = []
    if uplink.tls is not None:
        named += [
            (("tls", k), getattr(uplink.tls, k)) for k in ("ca_file", "cert_file", "key_file")
        ]
    if uplink.password_file:
        named.append((("password_file",), uplink.password_file))
    checkable = [
        (key, name)
        for key, name in named
        if Path(name).is_absolute() or os.environ.get("CREDENTIALS_DIRECTORY")
    ]
    found: _Found = [
        # the value of a secret key (key_file, password_file) stays out of the message
        (key, "", "file not found")
        if is_secret_key(key[-1])
        else (key, repr(name), f"file not found ({credential_path(name)})")
        for key, name in checkable
        if not credential_path(name).is_file()
    ]
    if found or len(checkable) < len(named):
        return found
    try:
        make_client(uplink, "roadside-check-config")
    except UplinkError as err:
        return [(("tls",) if uplink.tls is not None else (), "", str(err))]
    return []


def parse_config(text: str, path: Path | None = None) -> StationConfig:
    """Validate TOML ``text``. Raises :class:`ConfigError` listing every problem.

    Besides the keys and values, it checks what the daemon would refuse at start-up (see
    :func:`_start_problems`): register maps, files named in the config, speed ranges, the
    rule tables, the TLS files. ``check-config`` and ``run`` share this one function.
    """
    filename = str(path) if path else "<config>"
    context = {"base_dir": str(Path(path).resolve().parent) if path else os.getcwd()}
    data = _parse_toml(text, filename)
    problems: list[Problem] = []
    file: StationConfigFile | None = None
    try:
        file = StationConfigFile.model_validate(data, context=context)
    except ValidationError as err:
        problems.extend(_problems(err, text, (), StationConfigFile))
    devices = _lane_devices(data, text, problems, context)
    plate = _device(
        PLATE_READERS, data.get("plate", {"type": "simulated"}), text, ("plate",), problems, context
    )
    problems.extend(_start_problems(file, data, devices, plate, text, context))
    if problems or file is None:
        problems.sort(key=lambda p: p.line or 0)
        raise ConfigError(filename, problems)
    lanes = tuple(
        Lane(lane.number, lane.vehicle_class, scale, tuple(cams), lane.weighing)
        for lane, (scale, cams) in zip(file.lanes, devices, strict=True)
    )
    return StationConfig(path, text, file, lanes, plate)


def load_config(path: str | Path) -> StationConfig:
    """Read and validate the config file at ``path``. Raises :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(p), [Problem(None, "", "", f"cannot read the file: {err}")]) from err
    return parse_config(text, p)


# -- what a remote set-config may not change ---------------------------------------------
#
# The evidence's identity and the legally relevant parameters: moving data_dir or the signing
# key starts a second chain at seq 1 under the same station id (two different …-000001 records
# at the platform) with a fresh audit log; the station id names every record; the legal
# parameters decide verdicts and are under change control (docs/evidence.md); the pinned
# platform key is what makes a remote command trustworthy at all. They change on the station,
# by a technician (the audit log records it at the next start), never through the platform.


def protected_values(config: StationConfig) -> dict[str, Any]:
    """The config values a remote ``set-config`` must leave as they are, by key path."""
    values: dict[str, Any] = {
        "station.id": config.station.id,
        "station.data_dir": str(config.station.data_dir),
        "evidence.signing_key": str(config.evidence.signing_key),
        "legal": config.legal.model_dump(mode="json"),
        "uplink.platform_public_key": config.uplink.platform_public_key.strip(),
    }
    for lane in config.file.lanes:
        values[f"lanes[{lane.number}].scale"] = lane.scale
    return values


def protected_changes(current: StationConfig, new: StationConfig) -> list[str]:
    """Key paths whose protected value (:func:`protected_values`) differs between ``current``
    and ``new``, including lanes (their scales) added or removed; empty when none."""
    old, now = protected_values(current), protected_values(new)
    return sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))


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
NOT_SECRET = frozenset({"key_id", "public_key", "platform_public_key"})
REDACTED = '"<redacted>"'

_ASSIGN = re.compile(
    r"""(?P<key>[A-Za-z0-9_\-]+|"(?:[^"\\]|\\.)*"|'[^']*')\s*=\s*"""
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


def _key_name(key: str) -> str:
    """A TOML key as written (bare, ``'literal'`` or ``"basic"`` with escapes such as
    ``"pass\\u0077ord"``) as the name TOML reads, lower-cased."""
    if key.startswith('"'):
        try:
            return next(iter(tomllib.loads(f"{key} = 0"))).lower()
        except (tomllib.TOMLDecodeError, StopIteration):
            return key.strip('"').lower()
    return key.strip("'").lower()


def is_secret_key(key: str) -> bool:
    """Whether the value of config key ``key`` (as written in TOML, maybe quoted) is secret:
    a field marked secret, or a key that looks secret (not ``key_id``, ``public_key``)."""
    name = _key_name(key)
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
