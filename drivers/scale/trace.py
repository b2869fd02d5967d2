"""Scripted weight traces of trucks crossing a low-speed axle scale, with known axle loads.

The simulated indicators play these, and the segmentation tests check the weighing stage
against the loads that made them. The model is simple and physical:

* the platform is ``platform_m`` long in the direction of travel; a tyre's load comes on over
  ``contact_m`` (the tyre patch rolling on) and goes off the same way;
* the platform reads the sum of the axle loads on it, times a bounce (the truck's suspension
  oscillating at 2-3 Hz after the step onto the platform), plus white noise;
* the truck's front axle moves along a script: constant speed, optional stops, an optional
  reverse (back ``reverse_m`` and forward again), optional creep (very low speed).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TruckPass:
    axle_loads_kg: tuple[int, ...]
    axle_spacings_mm: tuple[int, ...]
    speed_kmh: float = 5.0
    stops: tuple[tuple[float, float], ...] = ()  # (front axle position m, seconds stopped)
    reverse: tuple[float, float] | None = None  # (front position m, metres backwards)
    approach_m: float = 2.0  # front axle distance before the platform at t=0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def gross_kg(self) -> int:
        return sum(self.axle_loads_kg)


def _coverage(x: float, platform_m: float, contact_m: float) -> float:
    """Share of an axle's load on the platform with the axle centre at ``x`` (0: entry edge)."""
    half = contact_m / 2
    on = min(x + half, platform_m) - max(x - half, 0.0)
    return max(0.0, min(1.0, on / contact_m))


@dataclass
class _FrontAxle:
    """The truck's front axle playing its script: position in m from the platform's entry
    edge, moving at ``speed_ms``, stopping at ``stops``, backing up once at ``reverse``."""

    position_m: float
    speed_ms: float
    stops: list[tuple[float, float]]  # (position m, seconds stopped), in order
    reverse: tuple[float, float] | None  # (position m, metres backwards)
    backing_to: float | None = None
    stopped_until: float | None = None

    def move(self, t: float, dt: float) -> bool:
        """One step of ``dt`` seconds, ending at time ``t``; ``True`` when it went forward."""
        if self.stopped_until is not None:
            if t >= self.stopped_until:
                self.stopped_until = None
            return False
        if self.stops and self.position_m >= self.stops[0][0]:
            self.stopped_until = t + self.stops.pop(0)[1]
            return False
        if self.backing_to is not None:
            self.position_m -= self.speed_ms * dt
            if self.position_m <= self.backing_to:
                self.backing_to = None
            return False
        if self.reverse is not None and self.position_m >= self.reverse[0]:
            self.backing_to = self.reverse[0] - self.reverse[1]
            self.reverse = None
            return False
        self.position_m += self.speed_ms * dt
        return True


def axle_scale_trace(
    truck: TruckPass,
    *,
    rate_hz: float = 50.0,
    platform_m: float = 0.8,
    contact_m: float = 0.25,
    noise_kg: float = 15.0,
    bounce_pct: float = 2.0,
    seed: int = 0,
    start_s: float = 0.0,
    tail_s: float = 1.0,
) -> list[tuple[float, float]]:
    """``(t_s, platform_kg)`` samples of ``truck`` crossing the platform once."""
    rng = random.Random(seed)
    offsets = [0.0]
    for s in truck.axle_spacings_mm:
        offsets.append(offsets[-1] + s / 1000.0)
    dt = 1.0 / rate_hz
    end_x = offsets[-1] + platform_m + contact_m
    front = _FrontAxle(-truck.approach_m, truck.speed_kmh / 3.6, sorted(truck.stops), truck.reverse)
    phase = rng.uniform(0, 2 * math.pi)
    bounce_hz = rng.uniform(2.0, 3.0)
    out: list[tuple[float, float]] = []
    t = 0.0
    finished_at: float | None = None
    while True:
        weight = 0.0
        for load, off in zip(truck.axle_loads_kg, offsets, strict=True):
            weight += load * _coverage(front.position_m - off, platform_m, contact_m)
        if weight > 0:
            weight *= 1.0 + bounce_pct / 100.0 * math.sin(2 * math.pi * bounce_hz * t + phase)
        weight += rng.gauss(0.0, noise_kg)
        out.append((start_s + t, weight))
        t += dt
        if not front.move(t, dt):
            continue
        if front.position_m - end_x > 0 and finished_at is None:
            finished_at = t
        if finished_at is not None and t - finished_at >= tail_s:
            return out


def traffic(
    trucks: list[TruckPass],
    gaps_s: list[float],
    *,
    rate_hz: float = 50.0,
    seed: int = 0,
    **kw: float,
) -> list[tuple[float, float]]:
    """Several trucks one after the other, ``gaps_s[i]`` of empty platform after truck ``i``."""
    out: list[tuple[float, float]] = []
    t0 = 0.0
    for i, truck in enumerate(trucks):
        samples = axle_scale_trace(truck, rate_hz=rate_hz, seed=seed + i, start_s=t0, **kw)
        out.extend(samples)
        t0 = samples[-1][0] + 1.0 / rate_hz + (gaps_s[i] if i < len(gaps_s) else 1.0)
    out.sort(key=lambda s: s[0])
    return out
