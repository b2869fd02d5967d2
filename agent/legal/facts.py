"""What the legal check is told: the vehicle, the scale, permits and the watch-list.

Frozen dataclasses, checked on construction (:class:`InvalidFactsError`, a ``ValueError``), so a
verdict can never be computed from an impossible input. ``None`` always means "the station does
not know"; the engine then takes the reading that gives the higher limit (never accuse on
ambiguity) and says so in the verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from agent.domain import VehicleClass, VehicleWeighing, WeighingFlag


class InvalidFactsError(ValueError):
    """A vehicle, device, permit or watch-list entry that cannot be judged as given."""


CLASS_SOURCES = ("lane", "declared", "registry", "spacings", "unknown")

_PLATE_NOISE = re.compile(r"[\s·•.\-_]")


def normalize_plate(text: str) -> str:
    """The plate as the permit book and the watch-list compare it.

    Upper case, without spaces, dots and dashes: ``"苏L·12345"`` and ``"苏l 12345"`` are the same
    plate. Colour is not part of the key.
    """
    return _PLATE_NOISE.sub("", text).upper()


@dataclass(frozen=True)
class VehicleFacts:
    """What the station knows about one vehicle when it judges it.

    Masses in kg, lengths in mm. ``axle_spacings_mm`` has ``len(axle_loads_kg) - 1`` entries
    (front to back) or is empty when not measured. ``declared_class`` comes from the lane's
    configuration (``class_source="lane"``), from a person (``"declared"``, the ``judge``
    command) or from the vehicle registry (``"registry"``); when it is ``UNKNOWN`` the engine
    infers the class from the build facts (a tractor means a combination) and the spacings.

    Optional build facts (``None`` = not known; the lenient reading is then taken):

    - ``single_drive_axle``: the tractor of a combination has one drive axle (a vehicle with a
      tractor is a combination: ``True`` with ``declared_class`` truck is refused);
    - ``single_tyre_non_drive_axles``: number of axles that Order 62 Art. 3 para. 2 (2) counts
      against the vehicle: non-drive axles in axle groups or on trailers with one tyre per side;
    - ``wide_tyres``: those axles carry approved wide tyres (trailer ≥ 425 mm, drive ≥ 445 mm),
      which cancels the reduction;
    - ``dual_tyre_drive_axle``, ``air_suspension``: the drive axle(s) have two tyres per side and
      the vehicle has air suspension (+1 000 kg for 3- and 4-axle trucks, 37 t for a 4-axle
      articulated combination);
    - ``articulated``: a combination is a tractor with a semi-trailer (铰接列车), not a drawbar
      (full) trailer.

    Raises :class:`InvalidFactsError` for negative masses, a wrong number of spacings, and so on.
    """

    axle_loads_kg: tuple[int, ...]
    gross_kg: int
    axle_spacings_mm: tuple[int, ...] = ()
    speed_kmh: float | None = None
    declared_class: VehicleClass = VehicleClass.UNKNOWN
    single_drive_axle: bool | None = None
    flags: frozenset[WeighingFlag] = frozenset()
    plate: str | None = None
    class_source: str = "declared"
    single_tyre_non_drive_axles: int | None = None
    wide_tyres: bool | None = None
    dual_tyre_drive_axle: bool | None = None
    air_suspension: bool | None = None
    articulated: bool | None = None

    def __post_init__(self) -> None:
        loads = self.axle_loads_kg
        for i, load in enumerate(loads, start=1):
            if isinstance(load, bool) or not isinstance(load, int):
                raise InvalidFactsError(f"axle {i} load must be whole kg, got {load!r}")
            if load < 0:
                raise InvalidFactsError(f"axle {i} load is negative: {load} kg")
        if isinstance(self.gross_kg, bool) or not isinstance(self.gross_kg, int):
            raise InvalidFactsError(f"gross must be whole kg, got {self.gross_kg!r}")
        if self.gross_kg < 0:
            raise InvalidFactsError(f"gross is negative: {self.gross_kg} kg")
        spacings = self.axle_spacings_mm
        if spacings and len(spacings) != len(loads) - 1:
            raise InvalidFactsError(
                f"{len(loads)} axles need {max(len(loads) - 1, 0)} spacings, got {len(spacings)}"
            )
        for i, mm in enumerate(spacings, start=1):
            if isinstance(mm, bool) or not isinstance(mm, int) or mm <= 0:
                raise InvalidFactsError(f"spacing {i} must be a positive whole mm, got {mm!r}")
        if self.speed_kmh is not None and self.speed_kmh < 0:
            raise InvalidFactsError(f"speed is negative: {self.speed_kmh} km/h")
        if self.class_source not in CLASS_SOURCES:
            raise InvalidFactsError(
                f"class_source must be one of {', '.join(CLASS_SOURCES)}, got {self.class_source!r}"
            )
        if self.declared_class is VehicleClass.TRUCK and (
            self.single_drive_axle or self.articulated
        ):
            raise InvalidFactsError(
                "a truck (货车) has no tractor or semi-trailer: single drive axle / articulated "
                "describe a combination (汽车列车)"
            )
        n = self.single_tyre_non_drive_axles
        most = max(len(loads) - 2, 0)  # never the steer axle, never the (first) drive axle
        if n is not None and not 0 <= n <= most:
            raise InvalidFactsError(
                f"single_tyre_non_drive_axles must be 0..{most} for {len(loads)} axles, got {n}"
            )

    @property
    def axle_count(self) -> int:
        return len(self.axle_loads_kg)

    @classmethod
    def from_weighing(cls, weighing: VehicleWeighing, **known: Any) -> VehicleFacts:
        """The facts of a scale's :class:`VehicleWeighing`; ``known`` adds lane/platform facts
        (``declared_class=..., class_source="lane"``, ``plate=...``, build facts)."""
        return cls(
            axle_loads_kg=tuple(weighing.axle_loads_kg),
            gross_kg=weighing.gross_kg,
            axle_spacings_mm=tuple(weighing.axle_spacings_mm),
            speed_kmh=weighing.speed_kmh,
            flags=frozenset(weighing.flags),
            **known,
        )


@dataclass(frozen=True)
class DeviceFacts:
    """The scale that weighed the vehicle, as far as the verdict depends on it.

    ``accuracy_class``: the OIML R134 / JJG 907 class as written on the certificate (``"5"``,
    ``"10"``, ``"0.5"``...), used by the ``accuracy_class`` tolerance policy.
    ``certificate_valid_until``: last day the verification certificate is valid (inclusive).
    ``min_speed_kmh`` / ``max_speed_kmh``: the speed range the scale is approved for (WIM and
    low-speed axle scales; ``None`` for a static weighbridge). ``None`` = not checked: the daemon
    must fill these from the lane's scale config.
    """

    accuracy_class: str | None = None
    certificate_valid_until: date | None = None
    min_speed_kmh: float | None = None
    max_speed_kmh: float | None = None
    scale_id: str = ""

    def __post_init__(self) -> None:
        lo, hi = self.min_speed_kmh, self.max_speed_kmh
        if lo is not None and lo < 0:
            raise InvalidFactsError(f"scale {self.scale_id!r}: min speed is negative: {lo} km/h")
        if lo is not None and hi is not None and hi < lo:
            raise InvalidFactsError(
                f"scale {self.scale_id!r}: max speed {hi} km/h is below min speed {lo} km/h"
            )


def _on_or_after(at: datetime, start: date | datetime) -> bool:
    if isinstance(start, datetime):
        return at >= start
    return at.date() >= start


def _on_or_before(at: datetime, end: date | datetime) -> bool:
    if isinstance(end, datetime):
        return at <= end
    return at.date() <= end


@dataclass(frozen=True)
class Permit:
    """An over-limit transport permit (超限运输许可) pushed by the platform.

    ``valid_from`` / ``valid_to`` are inclusive; a ``date`` means the whole day in the offset of
    the measurement time, a ``datetime`` must be timezone-aware.
    """

    plate: str
    valid_from: date | datetime
    valid_to: date | datetime
    max_gross_kg: int
    permit_id: str = ""

    def __post_init__(self) -> None:
        if not normalize_plate(self.plate):
            raise InvalidFactsError("permit without a plate")
        for name in ("valid_from", "valid_to"):
            value = getattr(self, name)
            if isinstance(value, datetime) and value.tzinfo is None:
                raise InvalidFactsError(f"permit {self.plate}: {name} {value} has no UTC offset")
        if isinstance(self.max_gross_kg, bool) or not isinstance(self.max_gross_kg, int):
            raise InvalidFactsError(f"permit {self.plate}: max gross must be whole kg")
        if self.max_gross_kg <= 0:
            raise InvalidFactsError(f"permit {self.plate}: max gross must be > 0 kg")
        start, end = self.valid_from, self.valid_to
        if type(start) is type(end) and end < start:
            raise InvalidFactsError(
                f"permit {self.plate}: valid_to {end} is before valid_from {start}"
            )

    @property
    def key(self) -> str:
        return normalize_plate(self.plate)

    def valid_at(self, at: datetime) -> bool:
        """Whether the permit is in force at the (timezone-aware) measurement time."""
        return _on_or_after(at, self.valid_from) and _on_or_before(at, self.valid_to)

    def covers(self, at: datetime, gross_kg: int, tolerance_kg: int = 0) -> bool:
        """In force at ``at`` and ``gross_kg ≤ max_gross_kg + tolerance_kg``."""
        return self.valid_at(at) and gross_kg <= self.max_gross_kg + tolerance_kg

    def to_dict(self) -> dict[str, Any]:
        return {
            "plate": self.plate,
            "valid_from": self.valid_from.isoformat(),
            "valid_to": self.valid_to.isoformat(),
            "max_gross_kg": self.max_gross_kg,
            "permit_id": self.permit_id,
        }


@dataclass(frozen=True)
class WatchEntry:
    """A plate the platform wants flagged (a hit raises an alarm)."""

    plate: str
    reason: str = ""

    def __post_init__(self) -> None:
        if not normalize_plate(self.plate):
            raise InvalidFactsError("watch-list entry without a plate")

    @property
    def key(self) -> str:
        return normalize_plate(self.plate)

    def to_dict(self) -> dict[str, Any]:
        return {"plate": self.plate, "reason": self.reason}
