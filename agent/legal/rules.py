"""The rule tables: ``[legal]`` of the station config and the law as data.

The limits, adjustments, the Art. 43 warning band, the accuracy-class tolerances and the
class-inference thresholds live in ``firmware_config/legal/*.toml``; every row names its legal
source. :func:`load_rules` reads them once at start-up and refuses a table that has a gap (an axle
count and class without exactly one limit, unless a ``[[no_limit]]`` row says the law has none),
an overlap, a row without a source, or an enabled
axle-load table whose values are not marked confirmed. A change of the law is a data change.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import firmware_config
from agent.domain import VehicleClass
from drivers.paths import ConfigPath

#: The rule tables shipped with the agent (used when ``[legal] rules_dir`` is not set).
SHIPPED_RULES_DIR = firmware_config.ROOT / "legal"
LIMITS_FILE = "limits.toml"
AXLE_LIMITS_FILE = "axle_limits.toml"

#: Build facts a rule may depend on (``when = {...}`` in the data). See ``VehicleFacts``.
BuildFact = Literal[
    "single_drive_axle", "air_suspension", "dual_tyre_drive_axle", "articulated", "wide_tyres"
]
BUILD_FACTS: tuple[str, ...] = get_args(BuildFact)
TolerancePolicyName = Literal["none", "percent", "absolute", "accuracy_class"]
ClassName = Literal["truck", "combination", "any"]

#: Axle counts the table must cover for both classes (6 stands for "6 and more").
COVERED_AXLE_COUNTS = range(2, 7)


class LegalRulesError(ValueError):
    """The rule tables or the ``[legal]`` config cannot be used; names the file and the row."""


class LegalConfig(BaseModel):
    """``[legal]`` in the station config: which rules, which tolerance, how to infer the class.

    Changing any of these is a change of a legally relevant parameter (audit log).
    """

    model_config = ConfigDict(extra="forbid")

    rules_dir: ConfigPath = Field(
        default="",
        description="directory holding limits.toml (and axle_limits.toml); "
        "empty: the tables shipped in firmware_config/legal",
    )
    tolerance_policy: TolerancePolicyName = Field(
        default="percent",
        description="none | percent (tolerance_pct of the limit) | absolute (tolerance_kg) | "
        "accuracy_class (in-service MPE of the scale's accuracy class)",
    )
    tolerance_pct: float = Field(
        default=5.0, ge=0, le=20, description="tolerance, % of limit (policy percent)"
    )
    tolerance_kg: int = Field(
        default=0, ge=0, le=10000, description="tolerance, kg (policy absolute)"
    )
    infer_class_from_spacings: bool = Field(
        default=True,
        description="tell truck from combination by the axle spacings when the lane does not say",
    )
    trailer_gap_above_mm: int | None = Field(
        default=None,
        gt=0,
        description="override: a spacing after the first above this means a combination",
    )
    twin_steer_below_mm: int | None = Field(
        default=None,
        gt=0,
        description="override: a first spacing below this means a twin-steer rigid truck",
    )

    @model_validator(mode="after")
    def _policy_matches_its_value(self) -> LegalConfig:
        # A value set for a policy that is not selected would be silently ignored: refuse it.
        if "tolerance_kg" in self.model_fields_set and self.tolerance_policy != "absolute":
            raise ValueError(
                f"tolerance_kg is only used with tolerance_policy = 'absolute', "
                f"not {self.tolerance_policy!r}"
            )
        if "tolerance_pct" in self.model_fields_set and self.tolerance_policy != "percent":
            raise ValueError(
                f"tolerance_pct is only used with tolerance_policy = 'percent', "
                f"not {self.tolerance_policy!r}"
            )
        return self


# --- the data files, as read -----------------------------------------------------------------


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(min_length=1)
    source: str = Field(min_length=8)


class _LimitRow(_Row):
    axles: int | None = Field(default=None, ge=2)
    min_axles: int | None = Field(default=None, ge=2)
    vehicle_class: ClassName = Field(alias="class")
    limit_kg: int = Field(gt=0)
    replaces: str | None = None
    when: dict[BuildFact, bool] = Field(default_factory=dict)
    min_semi_trailer_axle_spacing_mm: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_axle_key(self) -> _LimitRow:
        if (self.axles is None) == (self.min_axles is None):
            raise ValueError(f"row {self.id}: give exactly one of axles / min_axles")
        if self.replaces is None and (self.when or self.min_semi_trailer_axle_spacing_mm):
            raise ValueError(f"row {self.id}: conditions need `replaces` (the row they replace)")
        return self


class _Adjustment(_Row):
    delta_kg: int
    per: Literal["vehicle", "single_tyre_non_drive_axle"] = "vehicle"
    axles: list[int] | None = None
    vehicle_class: ClassName = Field(default="any", alias="class")
    when: dict[BuildFact, bool] = Field(default_factory=dict)


class _WarningBand(_Row):
    max_excess_kg: int = Field(ge=0)


class _AccuracyMpe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=8)
    pct: dict[str, float]


class _ClassInference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trailer_gap_above_mm: int = Field(gt=0)
    twin_steer_below_mm: int = Field(gt=0)


class _NoLimitRow(_Row):
    axles: int | None = Field(default=None, ge=2)
    min_axles: int | None = Field(default=None, ge=2)
    vehicle_class: Literal["truck", "combination"] = Field(alias="class")

    @model_validator(mode="after")
    def _one_axle_key(self) -> _NoLimitRow:
        if (self.axles is None) == (self.min_axles is None):
            raise ValueError(f"row {self.id}: give exactly one of axles / min_axles")
        return self


class _RegistryRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    licence_mass_id: str = Field(min_length=1)
    licence_mass_source: str = Field(min_length=8)
    gb1589_special_id: str = Field(min_length=1)
    gb1589_special_source: str = Field(min_length=8)


class _LimitsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    title: str = ""
    gross_limit: list[_LimitRow]
    adjustment: list[_Adjustment] = Field(default_factory=list)
    no_limit: list[_NoLimitRow] = Field(default_factory=list)
    registry_rules: _RegistryRules
    warning_band: _WarningBand
    accuracy_class_mpe: _AccuracyMpe
    class_inference: _ClassInference


class _AxleRow(_Row):
    group_axles: int = Field(ge=1, le=3)
    first_axle: bool | None = None
    min_spacing_mm: int | None = Field(default=None, gt=0)
    below_spacing_mm: int | None = Field(default=None, gt=0)
    when: dict[BuildFact, bool] = Field(default_factory=dict)
    limit_kg: int = Field(gt=0)
    confirmed: bool = False


class _AxleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    title: str = ""
    group_spacing_below_mm: int = Field(gt=0)
    axle_limit: list[_AxleRow]


# --- the rules the engine uses ---------------------------------------------------------------


@dataclass(frozen=True)
class LimitRow:
    """One gross-limit row of the table (a limit with its legal source)."""

    id: str
    min_axles: int
    max_axles: int | None  # None: and more
    vehicle_class: ClassName
    limit_kg: int
    source: str
    replaces: str | None = None
    when: tuple[tuple[str, bool], ...] = ()
    min_semi_trailer_axle_spacing_mm: int | None = None

    def matches(self, axles: int, cls: VehicleClass) -> bool:
        in_range = self.min_axles <= axles and (self.max_axles is None or axles <= self.max_axles)
        return in_range and self.vehicle_class in ("any", cls.value)


@dataclass(frozen=True)
class Adjustment:
    """A change to the limit of the row that applies (kg, or kg per counted axle)."""

    id: str
    delta_kg: int
    per: str
    axles: tuple[int, ...] | None
    vehicle_class: ClassName
    when: tuple[tuple[str, bool], ...]
    source: str

    def matches(self, axles: int, cls: VehicleClass) -> bool:
        in_axles = self.axles is None or axles in self.axles
        return in_axles and self.vehicle_class in ("any", cls.value)


@dataclass(frozen=True)
class NoLimitRow:
    """An axle count and class for which the law gives no gross limit (never invented)."""

    id: str
    min_axles: int
    max_axles: int | None
    vehicle_class: str
    source: str

    def matches(self, axles: int, cls: VehicleClass) -> bool:
        in_range = self.min_axles <= axles and (self.max_axles is None or axles <= self.max_axles)
        return in_range and self.vehicle_class == cls.value


@dataclass(frozen=True)
class RegistryRules:
    """Art. 3 ¶2 (四) and (五): rules that need the vehicle registry's facts."""

    licence_mass_id: str
    licence_mass_source: str
    gb1589_special_id: str
    gb1589_special_source: str


@dataclass(frozen=True)
class WarningBand:
    id: str
    max_excess_kg: int
    source: str


@dataclass(frozen=True)
class TolerancePolicy:
    """How much the station allows for the scale's error before it accuses.

    ``kind``: none | percent | absolute | accuracy_class. ``pct`` for percent, ``kg`` for
    absolute; accuracy_class takes the percent from ``mpe_pct`` by the scale's class.
    """

    kind: TolerancePolicyName
    pct: Decimal | None = None
    kg: int | None = None


@dataclass(frozen=True)
class ClassInference:
    enabled: bool
    trailer_gap_above_mm: int
    twin_steer_below_mm: int


@dataclass(frozen=True)
class AxleLimitRow:
    id: str
    group_axles: int
    first_axle: bool | None
    min_spacing_mm: int | None
    below_spacing_mm: int | None
    limit_kg: int
    source: str
    when: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True)
class AxleTable:
    """Per-axle / axle-group limits (GB 1589-2016); only present when enabled and confirmed."""

    group_spacing_below_mm: int
    rows: tuple[AxleLimitRow, ...]


@dataclass(frozen=True)
class Rules:
    """Everything :func:`agent.legal.judge` needs, loaded once; immutable."""

    version: str
    gross_limits: tuple[LimitRow, ...]
    adjustments: tuple[Adjustment, ...]
    warning_band: WarningBand
    tolerance: TolerancePolicy
    accuracy_mpe_pct: dict[str, Decimal] = field(hash=False)
    accuracy_mpe_source: str
    class_inference: ClassInference
    registry_rules: RegistryRules
    no_limits: tuple[NoLimitRow, ...] = ()
    axle_table: AxleTable | None = None

    def no_limit(self, axles: int, cls: VehicleClass) -> NoLimitRow | None:
        """The row saying the law has no limit for this axle count and class, if any."""
        return next((r for r in self.no_limits if r.matches(axles, cls)), None)

    def row(self, row_id: str) -> LimitRow:
        for r in self.gross_limits:
            if r.id == row_id:
                return r
        raise KeyError(row_id)


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as err:
        raise LegalRulesError(f"{path}: cannot read the legal rule table: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise LegalRulesError(f"{path}: not valid TOML: {err}") from err


def _explain(path: Path, err: ValidationError) -> LegalRulesError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in err.errors()
    )
    return LegalRulesError(f"{path}: {problems}")


def _check_table(
    path: Path, rows: list[LimitRow], adjustments: list[Adjustment], none: list[NoLimitRow]
) -> None:
    ids = [r.id for r in rows] + [a.id for a in adjustments] + [n.id for n in none]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise LegalRulesError(f"{path}: row id used twice: {', '.join(dupes)}")
    by_id = {r.id: r for r in rows}
    for r in rows:
        if r.replaces is None:
            continue
        target = by_id.get(r.replaces)
        if target is None or target.replaces is not None:
            raise LegalRulesError(
                f"{path}: row {r.id} replaces {r.replaces!r}, which is not a base row"
            )
    for axles in COVERED_AXLE_COUNTS:
        for cls in (VehicleClass.TRUCK, VehicleClass.COMBINATION):
            base = [r.id for r in rows if r.replaces is None and r.matches(axles, cls)]
            lawless = [n.id for n in none if n.matches(axles, cls)]
            if lawless and not base and len(lawless) == 1:
                continue  # the law has no limit here, and the table says so
            if lawless:
                raise LegalRulesError(
                    f"{path}: {axles} axles, {cls.value}: both a limit and no_limit "
                    f"({', '.join(base + lawless)}); keep one"
                )
            if len(base) != 1:
                what = "no limit" if not base else f"more than one limit ({', '.join(base)})"
                plus = " or more" if axles == COVERED_AXLE_COUNTS[-1] else ""
                raise LegalRulesError(f"{path}: {what} for {axles}{plus} axles, {cls.value}")
            subs = [r.id for r in rows if r.replaces == base[0] and r.matches(axles, cls)]
            if len(subs) > 1:
                raise LegalRulesError(
                    f"{path}: {axles} axles, {cls.value}: rows {', '.join(subs)} all replace "
                    f"{base[0]}; keep one"
                )


def _load_limits(path: Path) -> _LimitsFile:
    try:
        return _LimitsFile.model_validate(_read_toml(path))
    except ValidationError as err:
        raise _explain(path, err) from err


def _load_axle_table(path: Path) -> AxleTable | None:
    if not path.exists():
        return None
    try:
        data = _AxleFile.model_validate(_read_toml(path))
    except ValidationError as err:
        raise _explain(path, err) from err
    if not data.enabled:
        return None
    unconfirmed = [r.id for r in data.axle_limit if not r.confirmed]
    if unconfirmed:
        raise LegalRulesError(
            f"{path}: enabled, but rows {', '.join(unconfirmed)} are not confirmed against the "
            "text of GB 1589-2016; confirm each value and set confirmed = true, or disable"
        )
    return AxleTable(
        group_spacing_below_mm=data.group_spacing_below_mm,
        rows=tuple(
            AxleLimitRow(
                r.id,
                r.group_axles,
                r.first_axle,
                r.min_spacing_mm,
                r.below_spacing_mm,
                r.limit_kg,
                r.source,
                tuple(sorted(r.when.items())),
            )
            for r in data.axle_limit
        ),
    )


def load_rules(config: LegalConfig | None = None) -> Rules:
    """Read the rule tables for ``config`` (default: shipped tables, 5 % tolerance).

    Raises :class:`LegalRulesError` naming the file and the row when the tables are unusable.
    """
    cfg = config or LegalConfig()
    rules_dir = Path(cfg.rules_dir) if cfg.rules_dir else SHIPPED_RULES_DIR
    path = rules_dir / LIMITS_FILE
    data = _load_limits(path)
    rows = [_limit_row(r) for r in data.gross_limit]
    adjustments = [_adjustment(a) for a in data.adjustment]
    none = [
        NoLimitRow(
            n.id,
            n.axles if n.axles is not None else n.min_axles or 0,
            n.axles,
            n.vehicle_class,
            n.source,
        )
        for n in data.no_limit
    ]
    _check_table(path, rows, adjustments, none)
    mpe = {k: Decimal(str(v)) for k, v in data.accuracy_class_mpe.pct.items()}
    if any(v <= 0 for v in mpe.values()):
        raise LegalRulesError(f"{path}: accuracy_class_mpe.pct: every class needs an MPE > 0 %")
    inference = data.class_inference
    return Rules(
        version=data.version,
        gross_limits=tuple(rows),
        adjustments=tuple(adjustments),
        warning_band=WarningBand(
            data.warning_band.id, data.warning_band.max_excess_kg, data.warning_band.source
        ),
        tolerance=_tolerance_policy(cfg),
        accuracy_mpe_pct=mpe,
        accuracy_mpe_source=data.accuracy_class_mpe.source,
        class_inference=ClassInference(
            enabled=cfg.infer_class_from_spacings,
            trailer_gap_above_mm=cfg.trailer_gap_above_mm or inference.trailer_gap_above_mm,
            twin_steer_below_mm=cfg.twin_steer_below_mm or inference.twin_steer_below_mm,
        ),
        registry_rules=RegistryRules(**data.registry_rules.model_dump()),
        no_limits=tuple(none),
        axle_table=_load_axle_table(rules_dir / AXLE_LIMITS_FILE),
    )


def _limit_row(r: _LimitRow) -> LimitRow:
    """A ``[[gross_limit]]`` row as the engine uses it (``axles = N`` is min = max = N)."""
    return LimitRow(
        id=r.id,
        min_axles=r.axles if r.axles is not None else r.min_axles or 0,
        max_axles=r.axles,
        vehicle_class=r.vehicle_class,
        limit_kg=r.limit_kg,
        source=r.source,
        replaces=r.replaces,
        when=tuple(sorted(r.when.items())),
        min_semi_trailer_axle_spacing_mm=r.min_semi_trailer_axle_spacing_mm,
    )


def _adjustment(a: _Adjustment) -> Adjustment:
    """An ``[[adjustment]]`` row as the engine uses it."""
    return Adjustment(
        id=a.id,
        delta_kg=a.delta_kg,
        per=a.per,
        axles=tuple(a.axles) if a.axles is not None else None,
        vehicle_class=a.vehicle_class,
        when=tuple(sorted(a.when.items())),
        source=a.source,
    )


def _tolerance_policy(cfg: LegalConfig) -> TolerancePolicy:
    """``[legal] tolerance_policy`` with the value it uses."""
    if cfg.tolerance_policy == "percent":
        return TolerancePolicy("percent", pct=Decimal(str(cfg.tolerance_pct)))
    if cfg.tolerance_policy == "absolute":
        return TolerancePolicy("absolute", kg=cfg.tolerance_kg)
    return TolerancePolicy(cfg.tolerance_policy)
