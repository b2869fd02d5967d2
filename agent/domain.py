"""The pure domain core: what a truck's passage becomes on its way to evidence.

Frozen dataclasses only: no I/O, no threads, no clock reads. Times are timezone-aware
``datetime`` values passed in by the caller. Masses are integer kilograms, lengths integer
millimetres, speeds km/h.

Flow: a scale driver yields measurements, ``agent.pipeline.weighing`` turns them into a
:class:`VehicleWeighing`; camera frames and :class:`PlateRead` s are matched to it by lane and
time (``agent.pipeline.assemble``) into a :class:`VehicleEvent`; ``agent.legal`` gives its
:class:`Verdict`; ``agent.store.evidence`` stores the signed record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

# A camera picture and a plate read are what the drivers hand to the pipeline: they are
# defined beside their drivers (nothing under drivers/ imports agent/) and named here for
# the stages.
from drivers.camera.base import Clip, Frame
from drivers.plate.base import PlateRead

__all__ = [
    "Clip",
    "Frame",
    "PlateRead",
    "VehicleClass",
    "VehicleEvent",
    "VehicleWeighing",
    "Verdict",
    "VerdictStatus",
    "WeighingFlag",
]


class VehicleClass(StrEnum):
    """What the station knows about the vehicle's build (decides the gross limit)."""

    TRUCK = "truck"
    COMBINATION = "combination"
    UNKNOWN = "unknown"


class VerdictStatus(StrEnum):
    """The five outcomes of the legal check (DESIGN §3)."""

    WITHIN_LIMIT = "within_limit"
    WARNING = "warning"
    OVERLOADED = "overloaded"
    EXEMPT = "exempt"
    UNDETERMINED = "undetermined"


class WeighingFlag(StrEnum):
    """Conditions a weighing carries that make it unfit to accuse on."""

    SCALE_FAULT = "scale_fault"
    OUT_OF_RANGE = "out_of_range"
    SPEED_OUT_OF_RANGE = "speed_out_of_range"
    STRADDLING = "straddling"
    INCOMPLETE = "incomplete"
    INCONSISTENT = "inconsistent"  # gross differs from the sum of axles, axle count mismatch
    CALIBRATION_EXPIRED = "calibration_expired"
    MOTION = "motion"  # static weighbridge: no stable window found
    NET_WEIGHT = "net_weight"  # the indicator showed a net (tared) weight, not the gross


@dataclass(frozen=True)
class VehicleWeighing:
    """One vehicle as the scale saw it. Raw values, never corrected in place.

    ``axle_spacings_mm`` has ``len(axle_loads_kg) - 1`` entries when known, else is empty.
    ``raw`` keeps what the device sent (register values, the record line) unchanged.
    """

    lane: int
    measured_at: datetime
    axle_loads_kg: tuple[int, ...]
    gross_kg: int
    scale_id: str
    axle_spacings_mm: tuple[int, ...] = ()
    speed_kmh: float | None = None
    flags: frozenset[WeighingFlag] = frozenset()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def axle_count(self) -> int:
        return len(self.axle_loads_kg)


@dataclass(frozen=True)
class Verdict:
    """The station's legal decision on one vehicle, with everything needed to explain it."""

    status: VerdictStatus
    limit_kg: int | None
    tolerance_kg: int | None
    over_kg: int | None  # raw gross − limit (negative when under)
    over_pct: float | None  # over_kg / limit_kg × 100, 2 decimals
    rule: str
    explanation: str
    explanation_zh: str = ""
    tolerance_policy: str = ""
    vehicle_class: VehicleClass = VehicleClass.UNKNOWN
    class_source: str = "unknown"  # lane | spacings | declared | unknown
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    watchlist_hit: bool = False  # the plate is on the platform's watch-list: raise an alarm
    rules_version: str = ""  # `version` of the legal rule table that gave this verdict
    facts_source: str = "assumed"  # registry | lane | declared | assumed (DESIGN §4a)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status.value,
            "limit_kg": self.limit_kg,
            "tolerance_kg": self.tolerance_kg,
            "over_kg": self.over_kg,
            "over_pct": self.over_pct,
            "rule": self.rule,
            "explanation": self.explanation,
            "explanation_zh": self.explanation_zh,
            "tolerance_policy": self.tolerance_policy,
            "vehicle_class": self.vehicle_class.value,
            "class_source": self.class_source,
            "watchlist_hit": self.watchlist_hit,
            "rules_version": self.rules_version,
            "facts_source": self.facts_source,
            # the station flags, an officer decides (行政处罚法: review before a penalty)
            "review_required": True,
        }
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class VehicleEvent:
    """A weighing with its plates and pictures, ready to be judged and stored."""

    weighing: VehicleWeighing
    plates: tuple[PlateRead, ...] = ()
    frames: tuple[Frame, ...] = ()
    match_flags: frozenset[str] = frozenset()  # no_plate, ambiguous_plate, ...
    clips: tuple[Clip, ...] = ()  # video of the passage, one per camera that gave one (§4a)
