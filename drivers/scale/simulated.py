"""Simulated twin of a WIM controller lane: trucks from the shared simulated road.

It reports what a real class-5 WIM controller would: axle loads that scatter around the static
truth (axle loads more than the gross), spacings to the nearest 10 mm, speed, and the gross as
the sum of the reported axles. The truth travels in ``raw["sim"]`` so tests can compare.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from drivers import traffic
from drivers.clock import Clock
from drivers.paths import ConfigPath
from drivers.scale.base import Measurement, Scale, ScaleConfig, WimRecord


class SimulatedWimConfig(ScaleConfig):
    lane: int = Field(default=0, description="lane the trucks use (0: the lane this scale is on)")
    vehicles_per_min: float = Field(default=30.0, gt=0, description="mean arrival rate")
    count: int = Field(default=0, ge=0, description="stop after this many trucks (0: never)")
    overload_share: float = Field(default=0.3, ge=0, le=1, description="share of overloaded trucks")
    gross_scatter_pct: float = Field(
        default=1.5, ge=0, description="1-sigma scatter of the reported gross, percent"
    )
    axle_scatter_pct: float = Field(
        default=3.0, ge=0, description="1-sigma scatter of each axle load, percent"
    )
    road: str = Field(default="default", description="name of the shared simulated road")
    photos: ConfigPath = Field(
        default="", description="folder of labelled photos (labels.csv); empty: generated"
    )
    seed: int = Field(default=1, description="random seed of the road")


class SimulatedWimLane(Scale):
    """A WIM lane that produces one :class:`WimRecord` per simulated truck."""

    Config = SimulatedWimConfig
    config: SimulatedWimConfig

    def __init__(self, config: SimulatedWimConfig, clock: Clock | None = None, lane: int = 1):
        super().__init__(config, clock, config.lane or lane)
        self.road = traffic.road(
            config.road,
            Path(config.photos) if config.photos else None,
            seed=config.seed,
            overload_share=config.overload_share,
        )
        self._produced = 0
        self._next_due = self.clock.monotonic() + self._gap_s()

    def _gap_s(self) -> float:
        mean = 60.0 / self.config.vehicles_per_min
        return max(0.001, self.road.uniform(0.5 * mean, 1.5 * mean))

    def _recv_internal(self, timeout_s: float | None) -> Measurement | None:
        if self.config.count and self._produced >= self.config.count:
            self._closed.wait(timeout_s if timeout_s is not None else 1.0)
            return None
        wait = self._next_due - self.clock.monotonic()
        if wait > 0:
            limit = wait if timeout_s is None else min(wait, timeout_s)
            if self._closed.wait(limit):
                return None
            if self._next_due - self.clock.monotonic() > 0:
                return None
        self._next_due = self.clock.monotonic() + self._gap_s()
        self._produced += 1
        at = self.clock.now()
        truck = self.road.next_truck(self.lane, at)
        # Gross scatter is common to all axles (dynamic load), axle scatter individual.
        common = 1.0 + self.road.gauss(0.0, self.config.gross_scatter_pct / 100.0)
        loads = tuple(
            max(
                0,
                round(
                    load
                    * common
                    * (1.0 + self.road.gauss(0.0, self.config.axle_scatter_pct / 300.0))
                    / 10
                )
                * 10,
            )
            for load in truck.static_axle_loads_kg
        )
        spacings = tuple(round(s / 10) * 10 for s in truck.axle_spacings_mm)
        return WimRecord(
            lane=self.lane,
            at=at,
            axle_loads_kg=loads,
            gross_kg=sum(loads),
            axle_spacings_mm=spacings,
            speed_kmh=truck.speed_kmh,
            raw={
                "sim": {
                    "truck": truck.number,
                    "plate": truck.plate,
                    "build": truck.build,
                    "static_gross_kg": truck.static_gross_kg,
                    "photo": str(truck.photo),
                }
            },
        )
