"""What a vehicle record is: its schema name, the station facts it carries, and how it is built.

One record per vehicle (DESIGN §4, §5): :func:`build_record` turns a :class:`VehicleEvent`, its
:class:`Verdict` and the station's :class:`RecordContext` into the record body with the field
names DESIGN §5 fixes, without its ``integrity`` block (:mod:`agent.store.evidence` seals and
stores it). The id is ``{station_id}-{YYYYMMDDhhmmss}-{seq:06d}`` (:func:`event_id_for`).

This module is legally relevant (:mod:`agent.legalid`): it decides what a sealed record says.
Only record-building lives here; storage mechanics do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.domain import VehicleEvent, Verdict
from agent.provenance import SITE_FIELDS, metrology_keys
from agent.store.completeness import DEFAULT_REQUIRED, Expected, assess

#: The one name of the record schema (``"schema"`` of every record on ``{root}/events``).
SCHEMA = "roadside.vehicle-event.v1"


@dataclass(frozen=True)
class RecordContext:
    """Facts about the station that go into every record."""

    station_id: str
    scale_id: str
    accuracy_class: str = ""
    certificate: str = ""
    certificate_valid_until: str = ""
    clock_synchronized: bool | None = False
    software_version: str = ""
    legal_id: str = ""
    audit_counter: int = 0
    #: the wall clock was stepped (by this many seconds, summed) between the measurement and
    #: the seal: ``clock.stepped_s``; ``None``: no step was seen
    clock_stepped_s: float | None = None
    #: ``site`` of the record (:func:`agent.provenance.site_facts`); ``None``: all-null site
    site: dict[str, Any] | None = None
    #: verification and review facts added to ``device`` (:func:`agent.provenance.metrology_facts`)
    metrology: dict[str, Any] = field(default_factory=dict)
    #: ``[evidence] required`` and what the lane can give (:mod:`agent.store.completeness`)
    required: tuple[str, ...] = DEFAULT_REQUIRED
    expected: Expected = field(default_factory=Expected)
    #: how the composite image went (:mod:`agent.pipeline.composite`); ``None``: not tried
    composite: str | None = None


@dataclass(frozen=True)
class StoredRecord:
    """A record as committed: its ``seq``, id and the signed record (with ``integrity``)."""

    seq: int
    event_id: str
    record: dict[str, Any]


def event_id_for(station_id: str, measured_at: datetime, seq: int) -> str:
    t = measured_at
    if not 1000 <= t.year <= 9999:  # strftime's own padding of such years varies by libc
        return f"{station_id}-{t.strftime('%Y%m%d%H%M%S')}-{seq:06d}"
    # the digits strftime("%Y%m%d%H%M%S") gives, at a fraction of its cost
    return (
        f"{station_id}-{t.year}{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}"
        f"{t.second:02d}-{seq:06d}"
    )


def iso_ms(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def _clock(ctx: RecordContext) -> dict[str, Any]:
    """``clock``: synchronised, and ``stepped_s`` only for a record taken across a step."""
    clock: dict[str, Any] = {"synchronized": ctx.clock_synchronized}
    if ctx.clock_stepped_s is not None:
        clock["stepped_s"] = ctx.clock_stepped_s
    return clock


def build_record(
    event: VehicleEvent,
    verdict: Verdict,
    ctx: RecordContext,
    *,
    event_id: str,
    seq: int,
    images: list[dict[str, Any]],
    storage_flags: list[str] | None = None,
    videos: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The record body as DESIGN §5 and §4a name its fields (without ``integrity``)."""
    w = event.weighing
    videos = videos or []
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "event_id": event_id,
        "station_id": ctx.station_id,
        "lane": w.lane,
        "seq": seq,
        "measured_at": iso_ms(w.measured_at),
        "clock": _clock(ctx),
        "vehicle": {
            "axle_count": w.axle_count,
            "axle_loads_kg": list(w.axle_loads_kg),
            "axle_spacings_mm": list(w.axle_spacings_mm),
            "gross_kg": w.gross_kg,
            "speed_kmh": w.speed_kmh,
            "vehicle_class": verdict.vehicle_class.value,
            "flags": sorted(f.value for f in w.flags),
        },
        "plates": [p.to_dict("position") for p in event.plates],
        "match_flags": sorted(event.match_flags),
        "verdict": verdict.to_dict(),
        "images": images,
        "videos": videos,
        "site": ctx.site if ctx.site is not None else dict.fromkeys(SITE_FIELDS),
        "device": _device(ctx),
        "evidence": _evidence(event, verdict, ctx, images, videos),
        "software": {"version": ctx.software_version, "legal_id": ctx.legal_id},
        "audit_counter": ctx.audit_counter,
        "raw": w.raw,
    }
    if storage_flags:
        body["storage_flags"] = sorted(storage_flags)
    return body


def _device(ctx: RecordContext) -> dict[str, Any]:
    """``device``: the scale, its verification and the site's review (null where unknown)."""
    return {
        **dict.fromkeys(metrology_keys()),
        **ctx.metrology,
        "scale_id": ctx.scale_id,
        "accuracy_class": ctx.accuracy_class,
        "certificate": ctx.certificate,
        "certificate_valid_until": ctx.certificate_valid_until,
    }


def _evidence(
    event: VehicleEvent,
    verdict: Verdict,
    ctx: RecordContext,
    images: list[dict[str, Any]],
    videos: list[dict[str, Any]],
) -> dict[str, Any]:
    """``evidence``: complete or not, and what is missing (:mod:`agent.store.completeness`)."""
    out = assess(
        required=ctx.required,
        status=verdict.status.value,
        plates=event.plates,
        image_roles=[i["role"] for i in images],
        video_cameras=[str(v.get("camera_id", "")) for v in videos],
        expected=ctx.expected,
        clock_synchronized=ctx.clock_synchronized,
        certificate=ctx.certificate,
        certificate_valid_until=ctx.certificate_valid_until,
        measured_on=event.weighing.measured_at.date(),
        clock_stepped_s=ctx.clock_stepped_s,
    )
    if ctx.composite is not None:
        out["composite"] = ctx.composite
    return out
