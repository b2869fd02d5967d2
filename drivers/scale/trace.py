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
    speed = truck.speed_kmh / 3.6
    dt = 1.0 / rate_hz
    end_x = offsets[-1] + platform_m + contact_m
    front = -truck.approach_m
    pending_stops = sorted(truck.stops)
    reverse = truck.reverse
    backing_to: float | None = None
    stopped_until: float | None = None
    phase = rng.uniform(0, 2 * math.pi)
    bounce_hz = rng.uniform(2.0, 3.0)
    out: list[tuple[float, float]] = []
    t = 0.0
    finished_at: float | None = None
    while True:
        weight = 0.0
        for load, off in zip(truck.axle_loads_kg, offsets, strict=True):
            weight += load * _coverage(front - off, platform_m, contact_m)
        if weight > 0:
            weight *= 1.0 + bounce_pct / 100.0 * math.sin(2 * math.pi * bounce_hz * t + phase)
        weight += rng.gauss(0.0, noise_kg)
        out.append((start_s + t, weight))
        t += dt
        # Move the truck.
        if stopped_until is not None:
            if t >= stopped_until:
                stopped_until = None
            continue
        if pending_stops and front >= pending_stops[0][0]:
            stopped_until = t + pending_stops.pop(0)[1]
            continue
        if backing_to is not None:
            front -= speed * dt
            if front <= backing_to:
                backing_to = None
            continue
        if reverse is not None and front >= reverse[0]:
            backing_to = reverse[0] - reverse[1]
            reverse = None
            continue
        front += speed * dt
        if front - end_x > 0 and finished_at is None:
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
