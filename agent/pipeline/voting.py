"""Voting over the plate reads of several frames of one vehicle.

A camera takes a few frames of each truck; one of them may catch a reflection or motion blur and
read ``皖A67169`` where the others read ``皖A67168``. The vote weighs each distinct text by the
confidence of the frames that read it. A winner needs a clear majority of the confidence mass;
without one the vehicle's plate stays unread, because a coin toss between two plates is not
evidence.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace

from agent.domain import PlateRead


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


def vote_by_position(reads: Iterable[PlateRead], min_share: float = 0.6) -> list[PlateRead]:
    """One voted plate per position (front, rear), front first; positions without a majority
    are left out."""
    groups: dict[str, list[PlateRead]] = defaultdict(list)
    for r in reads:
        groups[r.position].append(r)
    out: list[PlateRead] = []
    for position in sorted(groups, key=lambda p: (p != "front", p)):
        winner = vote(groups[position], min_share)
        if winner is not None:
            out.append(winner)
    return out
