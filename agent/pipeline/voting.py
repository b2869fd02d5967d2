"""Voting over the plate reads of one vehicle: its frames, its cameras, its front and rear.

A camera takes a few frames of each truck; one of them may catch a reflection or motion blur and
read ``皖A67169`` where the others read ``皖A67168``. The vote weighs each distinct text by the
confidence of the frames that read it. A winner needs a clear majority of the confidence mass;
without one the vehicle's plate stays unread, because a coin toss between two plates is not
evidence.

Two cameras that see the same plate (the station's own camera and an ITS camera that reads
plates on board, or two cameras at one position) are independent witnesses: each camera's frames
are voted on their own first, and cameras whose winners differ leave that position unread — a
majority of frames from one camera must not outvote another camera.

Front and rear are voted apart: a record carries the front plate and the rear plate separately
(:func:`vote_by_position`). They should name the same vehicle; when they do not,
:func:`front_rear_mismatch` says so and the assemble stage flags the record — except for a
trailer (挂) plate at the rear, which legitimately differs from its tractor's front plate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace

from agent.domain import PlateRead

TRAILER_SUFFIX = "挂"


def vote(reads: Iterable[PlateRead], min_share: float = 0.6) -> PlateRead | None:
    """The plate most of ``reads`` agree on, or ``None`` when they do not agree.

    ``min_share`` is the share of the total confidence the winning text must hold. The result is
    the most confident read of the winning text with its confidence scaled by that share (a
    plate read the same way in 3 of 3 frames keeps its confidence; 2 against 1 loses some).
    """
    mass: dict[str, float] = defaultdict(float)
    best: dict[str, PlateRead] = {}
    for r in reads:
        mass[r.text] += r.confidence
        if r.text not in best or r.confidence > best[r.text].confidence:
            best[r.text] = r
    total = sum(mass.values())
    if not mass or total <= 0:
        return None
    text = max(mass, key=lambda t: mass[t])
    share = mass[text] / total
    if share < min_share:
        return None
    winner = best[text]
    return replace(winner, confidence=round(winner.confidence * share, 4))


def vote_cameras(reads: Iterable[PlateRead], min_share: float = 0.6) -> PlateRead | None:
    """The plate of one position: each camera's frames voted on their own, then the cameras
    must name the same plate (else ``None``). The result is the vote over all the reads (its
    confidence discounted by any dissenting frame), which then is that common plate."""
    reads = list(reads)
    by_camera: dict[str, list[PlateRead]] = defaultdict(list)
    for r in reads:
        by_camera[r.camera_id].append(r)
    winners = [vote(group, min_share) for group in by_camera.values()]
    if any(w is None for w in winners) or len({w.text for w in winners if w}) != 1:
        return None
    return vote(reads, min_share)


def vote_by_position(reads: Iterable[PlateRead], min_share: float = 0.6) -> list[PlateRead]:
    """One voted plate per position (front, rear), front first; positions without a majority
    (or whose cameras disagree) are left out."""
    groups: dict[str, list[PlateRead]] = defaultdict(list)
    for r in reads:
        groups[r.position].append(r)
    out: list[PlateRead] = []
    for position in sorted(groups, key=lambda p: (p != "front", p)):
        winner = vote_cameras(groups[position], min_share)
        if winner is not None:
            out.append(winner)
    return out


def front_rear_mismatch(plates: Iterable[PlateRead]) -> str | None:
    """Why the voted front and rear plates cannot both be this vehicle's, or ``None``.

    ``None`` when one of them is missing, when they agree, or when the rear plate is a trailer
    (挂) plate: a tractor's front plate and its semi-trailer's rear plate are different
    registrations by law, and both belong in the record.
    """
    by_position = {p.position: p for p in plates}
    front, rear = by_position.get("front"), by_position.get("rear")
    if front is None or rear is None or front.text == rear.text:
        return None
    if rear.text.endswith(TRAILER_SUFFIX) and not front.text.endswith(TRAILER_SUFFIX):
        return None
    return f"front plate {front.text} and rear plate {rear.text} differ (not a 挂 trailer plate)"
