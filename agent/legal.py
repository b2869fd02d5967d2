"""The legal check: is this vehicle over the limit? (Order 62 Art. 3, Art. 43)

Pure: no I/O beyond loading the rule table at start-up, no clock reads (time passed in).
This first version carries the gross limits by axle count and the default 5 % tolerance; the
rule tables as data, vehicle-class inference, all tolerance policies and permits come with the
legal-check issue and keep this API: :class:`LegalConfig`, :func:`load_rules`, :func:`judge`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from agent.domain import VehicleClass, Verdict, VerdictStatus, WeighingFlag


class LegalConfig(BaseModel):
    """``[legal]`` in the station config."""

    model_config = ConfigDict(extra="forbid")

    tolerance_pct: float = Field(default=5.0, ge=0, le=20, description="tolerance, % of limit")


@dataclass(frozen=True)
class VehicleFacts:
    """What the station knows about one vehicle when it judges it."""

    axle_loads_kg: tuple[int, ...]
    gross_kg: int
    axle_spacings_mm: tuple[int, ...] = ()
    speed_kmh: float | None = None
    declared_class: VehicleClass = VehicleClass.UNKNOWN
    single_drive_axle: bool | None = None
    flags: frozenset[WeighingFlag] = frozenset()
    plate: str | None = None


@dataclass(frozen=True)
class Rules:
    tolerance_pct: float
    # (axle count, class) -> (limit kg, rule id)
    gross_limits: dict[tuple[int, VehicleClass], tuple[int, str]]


_ORDER62 = {
    (2, VehicleClass.TRUCK): (18000, "order62-art3-1"),
    (3, VehicleClass.TRUCK): (25000, "order62-art3-2"),
    (3, VehicleClass.COMBINATION): (27000, "order62-art3-3"),
    (4, VehicleClass.TRUCK): (31000, "order62-art3-4"),
    (4, VehicleClass.COMBINATION): (36000, "order62-art3-5"),
    (5, VehicleClass.COMBINATION): (43000, "order62-art3-6"),
    (6, VehicleClass.COMBINATION): (49000, "order62-art3-7"),
}


def load_rules(config: LegalConfig | None = None) -> Rules:
    cfg = config or LegalConfig()
    return Rules(tolerance_pct=cfg.tolerance_pct, gross_limits=dict(_ORDER62))


def _limit(rules: Rules, axles: int, cls: VehicleClass) -> tuple[int, str] | None:
    n = min(axles, 6)
    candidates = [
        v for (k, c), v in rules.gross_limits.items() if k == n and cls in (VehicleClass.UNKNOWN, c)
    ]
    if not candidates and cls != VehicleClass.UNKNOWN:
        candidates = [v for (k, _c), v in rules.gross_limits.items() if k == n]
    return max(candidates) if candidates else None


def judge(facts: VehicleFacts, rules: Rules, at: datetime) -> Verdict:
    """The verdict for one vehicle. ``at`` is the measurement time (permits, certificates)."""
    del at
    axles = len(facts.axle_loads_kg)
    if axles < 2 or facts.flags:
        why = "fewer than 2 axles" if axles < 2 else ", ".join(sorted(facts.flags))
        return Verdict(
            VerdictStatus.UNDETERMINED, None, None, None, None, "undetermined", f"not judged: {why}"
        )
    found = _limit(rules, axles, facts.declared_class)
    if found is None:
        return Verdict(
            VerdictStatus.UNDETERMINED,
            None,
            None,
            None,
            None,
            "undetermined",
            f"no limit for {axles} axles",
        )
    limit, rule = found
    tolerance = round(limit * rules.tolerance_pct / 100)
    over = facts.gross_kg - limit
    pct = round(over / limit * 100, 2)
    if facts.gross_kg <= limit + tolerance:
        status = VerdictStatus.WITHIN_LIMIT
    elif over <= 1000:
        status = VerdictStatus.WARNING
    else:
        status = VerdictStatus.OVERLOADED
    return Verdict(
        status,
        limit,
        tolerance,
        over,
        pct,
        rule,
        f"{axles}-axle vehicle, gross {facts.gross_kg} kg against limit {limit} kg "
        f"+ tolerance {tolerance} kg: {status.value}",
        tolerance_policy=f"percent:{rules.tolerance_pct:g}",
        vehicle_class=facts.declared_class,
    )
