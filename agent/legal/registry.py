"""The vehicle registry: exact build facts by plate, pushed by the platform (``set-vehicles``).

The platform knows each registered vehicle's build from its 车辆公告 / 行驶证: axle count, rigid
truck or combination, the tractor's drive axles, suspension and tyres, the 核定总质量, and whether
it is one of the vehicles Order 62 Art. 3 ¶2 (四) and (五) treat apart. With an entry for the
plate the verdict uses these facts instead of the lenient assumptions (and says so: "facts from
the vehicle registry, version V"); where the entry is silent (a ``null`` field) the assumption
stays. An entry whose axle count differs from the weighing is not used (a misread plate or a
different vehicle must never make a verdict harsher).

Pure: parsing and checking only; :mod:`agent.store.vehicles` keeps the list on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.domain import VehicleClass
from agent.legal.facts import InvalidFactsError, normalize_plate

#: Art. 3 ¶2 (四): their limit is the 行驶证 mass (``rated_gross_kg``).
LICENCE_MASS_CATEGORIES: dict[str, tuple[str, str]] = {
    "tractor": ("tractor", "拖拉机"),
    "agricultural": ("agricultural vehicle", "农用车"),
    "low_speed_truck": ("low-speed truck", "低速货车"),
}
#: Art. 3 ¶2 (五), where the registry marks the vehicle GB 1589-compliant.
GB1589_SPECIAL: dict[str, tuple[str, str]] = {
    "refrigerated": ("refrigerated vehicle", "冷藏车"),
    "special_operation": ("special-operation vehicle", "专用作业车"),
}

_BOOL_KEYS = ("articulated", "air_suspension", "dual_tyre_drive_axle", "wide_tyres")
_INT_KEYS = ("tractor_drive_axles", "single_tyre_non_drive_axles", "rated_gross_kg")
_TEXT_KEYS = ("category", "gb1589_special", "registration")
KEYS = {"plate", "axle_count", "vehicle_class", *_BOOL_KEYS, *_INT_KEYS, *_TEXT_KEYS}


class VehicleListError(ValueError):
    """A pushed vehicle list was refused; the message names the entry and what is wrong."""


@dataclass(frozen=True)
class RegisteredVehicle:
    """One vehicle of the registry. ``None``: the registry does not say (the lenient reading
    stays). Masses in kg.

    ``vehicle_class``: ``truck`` (货车) or ``combination`` (汽车列车); ``tractor_drive_axles``:
    the tractor's drive axles (1 gives the 46 t row of Art. 3 ¶1 (八)); ``category``: a
    ¶2 (四) vehicle (``tractor``, ``agricultural``, ``low_speed_truck``; needs
    ``rated_gross_kg``); ``gb1589_special``: a GB 1589-compliant ¶2 (五) vehicle
    (``refrigerated``, ``special_operation``); ``registration``: the 行驶证 / 公告 reference.
    """

    plate: str
    axle_count: int
    vehicle_class: VehicleClass
    tractor_drive_axles: int | None = None
    articulated: bool | None = None
    air_suspension: bool | None = None
    dual_tyre_drive_axle: bool | None = None
    single_tyre_non_drive_axles: int | None = None
    wide_tyres: bool | None = None
    rated_gross_kg: int | None = None
    category: str | None = None
    gb1589_special: str | None = None
    registration: str = ""

    @property
    def key(self) -> str:
        return normalize_plate(self.plate)

    @property
    def single_drive_axle(self) -> bool | None:
        if self.tractor_drive_axles is None:
            return None
        return self.tractor_drive_axles == 1

    def build_facts(self) -> dict[str, Any]:
        """The facts it gives :class:`~agent.legal.VehicleFacts` (only those it knows)."""
        known = {
            "declared_class": self.vehicle_class,
            "class_source": "registry",
            "single_drive_axle": self.single_drive_axle,
            "articulated": self.articulated,
            "air_suspension": self.air_suspension,
            "dual_tyre_drive_axle": self.dual_tyre_drive_axle,
            "single_tyre_non_drive_axles": self.single_tyre_non_drive_axles,
            "wide_tyres": self.wide_tyres,
        }
        return {k: v for k, v in known.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "plate": self.plate,
            "axle_count": self.axle_count,
            "vehicle_class": self.vehicle_class.value,
        }
        for name in (*_BOOL_KEYS, *_INT_KEYS, "category", "gb1589_special"):
            out[name] = getattr(self, name)
        out["registration"] = self.registration
        return out


def _typed(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The entry's values with their JSON types checked (``null`` = not known)."""
    out: dict[str, Any] = {}
    for key in _BOOL_KEYS:
        value = entry.get(key)
        if value is not None and not isinstance(value, bool):
            raise VehicleListError(f"{where}: {key} must be true, false or null, got {value!r}")
        out[key] = value
    for key in _INT_KEYS:
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise VehicleListError(f"{where}: {key} must be a whole number or null, got {value!r}")
        if value is not None and value < 0:
            raise VehicleListError(f"{where}: {key} is negative: {value}")
        out[key] = value
    for key in _TEXT_KEYS:
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise VehicleListError(f"{where}: {key} must be text or null, got {value!r}")
        out[key] = value
    return out


def _check_build(v: dict[str, Any], axles: int, cls: str, where: str) -> None:
    """Facts that contradict each other or the law's categories."""
    if cls == "truck" and (v["tractor_drive_axles"] is not None or v["articulated"]):
        raise VehicleListError(f"{where}: a truck (货车) has no tractor or semi-trailer")
    drive = v["tractor_drive_axles"]
    if drive is not None and not 1 <= drive < axles:
        raise VehicleListError(f"{where}: tractor_drive_axles must be 1..{axles - 1}, got {drive}")
    single = v["single_tyre_non_drive_axles"]
    if single is not None and single > max(axles - 2, 0):
        raise VehicleListError(
            f"{where}: single_tyre_non_drive_axles must be 0..{max(axles - 2, 0)}, got {single}"
        )
    if v["category"] is not None and v["category"] not in LICENCE_MASS_CATEGORIES:
        known = ", ".join(LICENCE_MASS_CATEGORIES)
        raise VehicleListError(f"{where}: category {v['category']!r} is not one of {known}")
    if v["category"] is not None and not v["rated_gross_kg"]:
        raise VehicleListError(f"{where}: category {v['category']} needs rated_gross_kg (行驶证)")
    special = v["gb1589_special"]
    if special is not None and special not in GB1589_SPECIAL:
        known = ", ".join(GB1589_SPECIAL)
        raise VehicleListError(f"{where}: gb1589_special {special!r} is not one of {known}")


def parse_vehicle(entry: Any, index: int = 0) -> RegisteredVehicle:
    """One registry entry from its JSON form; :class:`VehicleListError` says what is wrong."""
    where = f"vehicle {index}"
    if not isinstance(entry, Mapping):
        raise VehicleListError(f"{where}: expected an object, got {type(entry).__name__}")
    plate = entry.get("plate")
    if isinstance(plate, str):
        where += f" ({plate})"
    unknown = sorted(set(entry) - KEYS)
    if unknown:
        raise VehicleListError(f"{where}: unknown key(s) {', '.join(unknown)}")
    missing = sorted({"plate", "axle_count", "vehicle_class"} - set(entry))
    if missing:
        raise VehicleListError(f"{where}: missing {', '.join(missing)}")
    if not isinstance(plate, str) or not normalize_plate(plate):
        raise VehicleListError(f"{where}: plate must be text")
    axles, cls = entry["axle_count"], entry["vehicle_class"]
    if isinstance(axles, bool) or not isinstance(axles, int) or axles < 2:
        raise VehicleListError(f"{where}: axle_count must be a whole number ≥ 2, got {axles!r}")
    if cls not in ("truck", "combination"):
        raise VehicleListError(f"{where}: vehicle_class must be truck or combination, got {cls!r}")
    values = _typed(entry, where)
    _check_build(values, axles, cls, where)
    values["registration"] = values["registration"] or ""
    try:
        return RegisteredVehicle(
            plate=plate, axle_count=axles, vehicle_class=VehicleClass(cls), **values
        )
    except InvalidFactsError as err:  # pragma: no cover - every check is above
        raise VehicleListError(f"{where}: {err}") from err
