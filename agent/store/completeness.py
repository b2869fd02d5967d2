"""Is a record's evidence complete enough to charge on? (DESIGN §4a ``evidence``)

行政处罚法 Art. 41 wants electronic evidence 真实、清晰、完整、准确. The station never drops or
downgrades a measurement for missing evidence: the verdict stays as measured. It seals, beside it,
what a chargeable record needs (``[evidence] required``) and what this one lacks::

    "evidence": {"complete": false, "missing": ["side_image", "video"],
                 "required": [...], "chargeable": false, "details": ["video: ..."]}

``chargeable`` is true only for a ``warning`` / ``overloaded`` verdict whose evidence is complete:
the platform opens a case only from a record with ``evidence.chargeable: true``, and even then an
officer decides (every verdict carries ``review_required: true``).

The names of ``missing`` are fixed (:data:`EVIDENCE_NAMES`). ``side_image`` is required only on a
lane that has a side camera configured; ``video`` is missing when any camera set to give a clip gave
none (``details`` names the camera). This module is legally relevant (:mod:`agent.legalid`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

EvidenceName = Literal[
    "plate", "front_image", "rear_image", "side_image", "video", "clock_sync", "certificate"
]
EVIDENCE_NAMES: tuple[EvidenceName, ...] = (
    "plate",
    "front_image",
    "rear_image",
    "side_image",
    "video",
    "clock_sync",
    "certificate",
)
#: What a chargeable record needs unless ``[evidence] required`` says otherwise: all of it.
DEFAULT_REQUIRED: tuple[EvidenceName, ...] = EVIDENCE_NAMES
CHARGEABLE_STATUSES = frozenset({"warning", "overloaded"})
#: The camera roles whose photo is evidence of its own (``overview`` is a bonus).
IMAGE_NAMES = {"front": "front_image", "rear": "rear_image", "side": "side_image"}


@dataclass(frozen=True)
class Expected:
    """What the lane is to give: its cameras' roles, and ``(camera id, role)`` of each camera
    that is to give a clip (``clip = true`` in its config, whether or not it can)."""

    camera_roles: tuple[str, ...] = ()
    clip_cameras: tuple[tuple[str, str], ...] = ()


def _certificate_problem(
    certificate: str | None, valid_until: str | None, measured_on: date
) -> str | None:
    if not certificate:
        return "certificate: the scale has no verification certificate configured"
    if not valid_until:
        return f"certificate: {certificate} has no expiry date configured"
    try:
        until = date.fromisoformat(valid_until)
    except ValueError:
        return f"certificate: expiry {valid_until!r} is not a date"
    if measured_on > until:
        return f"certificate: {certificate} expired on {valid_until}"
    return None


def assess(
    *,
    required: Iterable[str],
    status: str,
    plates: Sequence[Any],
    image_roles: Iterable[str],
    video_cameras: Iterable[str],
    expected: Expected,
    clock_synchronized: bool | None,
    certificate: str | None,
    certificate_valid_until: str | None,
    measured_on: date,
    clock_stepped_s: float | None = None,
) -> dict[str, Any]:
    """The record's ``evidence`` block. Pure: every fact is passed in.

    ``clock_sync`` is missing when the clock was not synchronised, and also when it was
    stepped between the weighing and the seal (``clock.stepped_s``): the record's times may be
    off by the step, whatever the synchronisation bit says afterwards."""
    need = [n for n in EVIDENCE_NAMES if n in set(required)]
    images, videos = set(image_roles), set(video_cameras)
    details: list[str] = []
    missing: list[str] = []
    for name in need:
        problem = (
            _certificate_problem(certificate, certificate_valid_until, measured_on)
            if name == "certificate"
            else _problem(
                name, plates, images, videos, expected, clock_synchronized, clock_stepped_s
            )
        )
        if problem is not None:
            missing.append(name)
            details.append(problem)
    complete = not missing
    return {
        "complete": complete,
        "missing": missing,
        "required": need,
        "chargeable": complete and status in CHARGEABLE_STATUSES,
        "details": details,
    }


def _problem(
    name: str,
    plates: Sequence[Any],
    images: set[str],
    videos: set[str],
    expected: Expected,
    clock_synchronized: bool | None,
    clock_stepped_s: float | None,
) -> str | None:
    """Why ``name`` is missing, or ``None`` (``certificate`` is checked by the caller)."""
    if name == "plate":
        return None if plates else "plate: no plate was read"
    if name == "clock_sync":
        if clock_synchronized is not True:
            return "clock_sync: the clock was not synchronised"
        if clock_stepped_s is not None:
            return (
                f"clock_sync: the clock was stepped by {clock_stepped_s:+.3f} s during this "
                "passage; its times may be off by that much"
            )
        return None
    if name == "video":
        if not expected.clip_cameras:
            return "video: no camera of this lane is set to give clips"
        lacking = [f"{cid} ({role})" for cid, role in expected.clip_cameras if cid not in videos]
        return f"video: no clip from camera {', '.join(lacking)}" if lacking else None
    for role, image_name in IMAGE_NAMES.items():
        if name != image_name:
            continue
        if role == "side" and "side" not in expected.camera_roles:
            return None  # no side camera on this lane: not required
        return None if role in images else f"{name}: no {role} photo"
    return None
