"""Weighing: a stream of measurements from one scale becomes :class:`VehicleWeighing` s.

A pure state machine, no I/O, no threads, no clock reads: the daemon's scale thread feeds it
what ``Scale.recv`` returned and calls :meth:`WeighingStage.flush` with the current time when
``recv`` times out, so vehicles that ended with a quiet gap come out too (a streaming
indicator's own samples also advance the gap rule, by their ``at``)::

    stage = WeighingStage(lane=1, scale=scale.config, config=WeighingConfig(mode="axle"))
    while not stop.is_set():
        m = scale.recv(0.2)
        out = stage.feed(m) if m is not None else stage.flush(clock.now())
        for weighing in out: ...

Three modes (DESIGN §2):

* **wim** – a WIM controller's :class:`WimRecord` is validated (axle count against loads,
  gross against their sum, spacings, speed inside the scale's approved range) and passed
  through with its ``raw`` unchanged.
* **axle** – a low-speed axle scale: the platform weight is cut into axles by hysteresis
  (rise above ``on_threshold_kg``, fall below ``off_threshold_kg`` for ``min_gap_s``), each
  axle's load is the median of its plateau (samples at ≥ 85 % of its 90th percentile, which
  leaves out the ramps and survives bounce and a stop on the platform). A vehicle ends on a
  vehicle-detector "free" edge or, without a detector, after ``vehicle_gap_s`` with no axle.
  What the trace cannot tell is flagged, not guessed: a dip inside an axle (reversing,
  creeping off and back, two axles on the platform), an axle that never settles, more axles
  than a truck has, an axle outside the detector's vehicle, a spike too short to be an axle.
* **static** – a weighbridge: the gross is the median of the last window of
  ``static_stable_s`` in which the indicator said "stable" and the readings stayed within
  ``static_band_kg``; without one the vehicle carries :attr:`WeighingFlag.MOTION`.

The scale's own flags carry over: ``fault`` → SCALE_FAULT, ``overload`` → OUT_OF_RANGE,
``net`` (the indicator showed a net, tared weight) → NET_WEIGHT, which the legal engine treats
like every weighing flag: the verdict is ``undetermined``, a net reading is never judged as a
gross; an expired verification certificate (``certificate_valid_until``) → CALIBRATION_EXPIRED.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.domain import VehicleWeighing, WeighingFlag
from drivers.scale.base import DetectorEdge, Measurement, ScaleConfig, WeightSample, WimRecord

log = logging.getLogger(__name__)

TRACE_LIMIT = 4000  # samples kept in raw["trace"] (50 Hz × 80 s); longer traces are decimated


class WeighingConfig(BaseModel):
    """How a lane turns its scale's measurements into vehicles. Every threshold is named in
    the problems a weighing reports, so a technician can see which one decided."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "wim", "axle", "static"] = Field(
        default="auto",
        description="auto: WIM records pass through, weight samples are an axle scale",
    )
    # --- low-speed axle scale
    on_threshold_kg: float = Field(default=500.0, gt=0, description="an axle starts above this")
    off_threshold_kg: float = Field(
        default=250.0, ge=0, description="an axle ends below this (hysteresis)"
    )
    min_gap_s: float = Field(
        default=0.06, ge=0, description="a dip below off_threshold shorter than this is bounce"
    )
    min_axle_s: float = Field(
        default=0.1, ge=0, description="a rise shorter than this is a spike, not an axle"
    )
    vehicle_gap_s: float = Field(
        default=10.0, gt=0, description="no axle this long ends the vehicle (without detector)"
    )
    detector_timeout_s: float = Field(
        default=300.0, gt=0, description="a detector occupied this long closes the vehicle"
    )
    detector_hold_s: float = Field(
        default=0.0,
        ge=0,
        description="after the detector goes free, axles starting within this time still "
        "belong to the vehicle (a loop that ends before the platform)",
    )
    max_axles: int = Field(default=6, ge=1, description="more axles than this is flagged")
    min_axle_kg: float = Field(default=1000.0, ge=0, description="a lighter axle is flagged")
    plateau_band_pct: float = Field(
        default=7.0, gt=0, description="a plateau: readings within this of their running mean"
    )
    min_plateau_s: float = Field(
        default=0.08, ge=0, description="the shortest plateau an axle's load is taken from"
    )
    max_spacing_m: float = Field(
        default=9.0,
        gt=0,
        description="longest axle spacing; with a speed estimate, the gap "
        "that ends a vehicle is at least this long in time",
    )
    plateau_spread_pct: float = Field(
        default=12.0, gt=0, description="plateau p10..p90 spread above this: not settled"
    )
    dip_pct: float = Field(
        default=35.0, gt=0, lt=100, description="a drop this deep inside an axle is a dip"
    )
    platform_length_m: float = Field(
        default=0.0, ge=0, description="axle scale length along the lane (0: no speed estimate)"
    )
    tyre_contact_m: float = Field(default=0.25, ge=0, description="tyre patch length")
    # --- static weighbridge
    static_stable_s: float = Field(default=1.0, gt=0, description="stable window length")
    static_band_kg: float = Field(default=20.0, ge=0, description="max spread in that window")
    # --- WIM validation
    gross_tolerance_kg: float = Field(
        default=50.0, ge=0, description="gross may differ from the axle sum by this much"
    )
    gross_tolerance_pct: float = Field(
        default=0.5, ge=0, description="...or by this percentage of the gross, if larger"
    )


@dataclass
class _Axle:
    start: datetime
    samples: list[tuple[float, float]] = field(default_factory=list)  # (t_rel_s, kg)
    below_since: float | None = None
    end: datetime | None = None


@dataclass
class _Vehicle:
    started: datetime
    axles: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    flags: set[WeighingFlag] = field(default_factory=set)
    trace: list[tuple[float, float]] = field(default_factory=list)
    spikes: int = 0
    last_activity: datetime | None = None
    detector: bool = False  # opened by the detector
    free_at: datetime | None = None  # the detector went free


class WeighingStage:
    """One lane's weighing state machine. Not thread-safe: one scale thread feeds it."""

    def __init__(self, lane: int, scale: ScaleConfig, config: WeighingConfig | None = None):
        self.lane = lane
        self.scale = scale
        self.config = config or WeighingConfig()
        self._vehicle: _Vehicle | None = None
        self._axle: _Axle | None = None
        self._detector = False
        self._detector_since: datetime | None = None
        self._detector_seen = False
        self._t0: datetime | None = None
        # static
        self._static: list[WeightSample] = []
        self._static_below_since: datetime | None = None

    # ----- public -------------------------------------------------------------------------
    def feed(self, m: Measurement) -> list[VehicleWeighing]:
        """Take one measurement; returns the vehicles it completed (usually none)."""
        mode = self.config.mode
        if isinstance(m, WimRecord):
            return [self._wim(m)]
        if isinstance(m, DetectorEdge):
            return self._detector_edge(m)
        if mode == "static":
            return self._static_sample(m)
        if mode == "wim":
            log.debug("lane %d: weight sample ignored in wim mode", self.lane)
            return []
        out = self._axle_sample(m)
        # An indicator streams all the time: its samples are the clock for the gap rule.
        return out + self.flush(m.at) if self._vehicle is not None else out

    def close_incomplete(self, reason: str) -> list[VehicleWeighing]:
        """Close an open vehicle now (the station is stopping): flagged incomplete.

        An axle still on the scale is dropped (its weight never settled); the vehicle is kept
        as evidence that a truck passed, and its verdict will be ``undetermined``.
        """
        v = self._vehicle
        if v is None:
            return []
        self._axle = None
        v.flags.add(WeighingFlag.INCOMPLETE)
        v.problems.append(reason)
        return self._close()

    def flush(self, now: datetime) -> list[VehicleWeighing]:
        """Close a vehicle whose gap (or detector) timed out at ``now``."""
        v = self._vehicle
        if v is None or self._axle is not None:
            return []
        cfg = self.config
        if v.free_at is not None and not self._detector:
            if (now - v.free_at).total_seconds() >= cfg.detector_hold_s:
                return self._close()
            return []
        if self._detector_seen and self._detector:
            since = self._detector_since or v.started
            if (now - since).total_seconds() >= cfg.detector_timeout_s:
                v.problems.append(
                    f"detector occupied over detector_timeout_s={cfg.detector_timeout_s}"
                )
                v.flags.add(WeighingFlag.INCOMPLETE)
                return self._close()
            return []
        last = v.last_activity or v.started
        if (now - last).total_seconds() >= self._gap_s(v):
            return self._close()
        return []

    def _gap_s(self, v: _Vehicle) -> float:
        """The quiet time that ends a vehicle: ``vehicle_gap_s``, longer for a slow truck
        (with a speed estimate, the time its longest axle spacing takes to pass)."""
        gap = self.config.vehicle_gap_s
        if v.axles and v.axles[-1]["speed_kmh"]:
            gap = max(gap, self.config.max_spacing_m / (v.axles[-1]["speed_kmh"] / 3.6))
        return gap

    # ----- WIM --------------------------------------------------------------------------------
    def _wim(self, r: WimRecord) -> VehicleWeighing:
        cfg = self.config
        flags: set[WeighingFlag] = set()
        problems: list[str] = []
        n = len(r.axle_loads_kg)
        if n == 0:
            flags.add(WeighingFlag.INCOMPLETE)
            problems.append("no axle loads")
        declared = r.raw.get("axle_count")
        if isinstance(declared, int) and declared != n:
            flags.add(WeighingFlag.INCONSISTENT)
            problems.append(f"controller counted {declared} axles but sent {n} loads")
        if n:
            total = sum(r.axle_loads_kg)
            allowed = max(cfg.gross_tolerance_kg, r.gross_kg * cfg.gross_tolerance_pct / 100)
            if abs(r.gross_kg - total) > allowed:
                flags.add(WeighingFlag.INCONSISTENT)
                problems.append(f"gross {r.gross_kg} kg ≠ axle sum {total} kg (±{allowed:.0f})")
        if r.axle_spacings_mm and len(r.axle_spacings_mm) != n - 1:
            flags.add(WeighingFlag.INCONSISTENT)
            problems.append(f"{len(r.axle_spacings_mm)} spacings for {n} axles")
        if any(load < 0 for load in r.axle_loads_kg):
            flags.add(WeighingFlag.INCONSISTENT)
            problems.append("negative axle load")
        if r.speed_kmh is not None and not (
            self.scale.min_speed_kmh <= r.speed_kmh <= self.scale.max_speed_kmh
        ):
            flags.add(WeighingFlag.SPEED_OUT_OF_RANGE)
            problems.append(
                f"speed {r.speed_kmh} km/h outside {self.scale.min_speed_kmh}"
                f"..{self.scale.max_speed_kmh}"
            )
        flags |= _device_flags(r.flags)
        flags |= self._calibration(r.at)
        if problems:
            log.warning("lane %d WIM record flagged: %s", self.lane, "; ".join(problems))
        return VehicleWeighing(
            lane=self.lane,
            measured_at=r.at,
            axle_loads_kg=tuple(r.axle_loads_kg),
            gross_kg=int(r.gross_kg),
            scale_id=self.scale.id,
            axle_spacings_mm=tuple(r.axle_spacings_mm),
            speed_kmh=r.speed_kmh,
            flags=frozenset(flags),
            raw=r.raw,
        )

    # ----- detector -------------------------------------------------------------------------
    def _detector_edge(self, e: DetectorEdge) -> list[VehicleWeighing]:
        self._detector_seen = True
        out: list[VehicleWeighing] = []
        if e.occupied and not self._detector:
            if self._vehicle is not None and self._axle is None:
                out += self._close()  # a vehicle still open from the gap rule
            if self._vehicle is None:
                self._vehicle = _Vehicle(started=e.at, detector=True, last_activity=e.at)
            else:
                self._vehicle.detector = True
                self._vehicle.free_at = None
            self._detector_since = e.at
        elif not e.occupied and self._detector:
            v = self._vehicle
            self._detector = False
            if v is not None:
                v.last_activity = e.at
                v.free_at = e.at
                out += self.flush(e.at)
        self._detector = e.occupied
        return out

    # ----- axle scale -------------------------------------------------------------------------
    def _rel(self, at: datetime) -> float:
        if self._t0 is None:
            self._t0 = at
        return (at - self._t0).total_seconds()

    def _axle_sample(self, s: WeightSample) -> list[VehicleWeighing]:
        cfg = self.config
        t = self._rel(s.at)
        kg = s.gross_kg
        out: list[VehicleWeighing] = []
        v = self._vehicle
        if v is not None:
            v.trace.append((t, kg))
            v.flags |= _device_flags(s.flags)
        a = self._axle
        if a is None:
            if kg >= cfg.on_threshold_kg:
                if v is None or (
                    not self._detector_seen
                    and v.last_activity is not None
                    and (s.at - v.last_activity).total_seconds() >= self._gap_s(v)
                ):
                    if v is not None:
                        out += self._close()
                    v = self._vehicle = _Vehicle(started=s.at, last_activity=s.at)
                    v.trace.append((t, kg))
                    v.flags |= _device_flags(s.flags)
                    if self._detector_seen and not self._detector:
                        v.problems.append("axle while the vehicle detector was free")
                        v.flags.add(WeighingFlag.INCONSISTENT)
                self._axle = _Axle(start=s.at, samples=[(t, kg)])
            return out
        a.samples.append((t, kg))
        if kg < cfg.off_threshold_kg:
            if a.below_since is None:
                a.below_since = t
            if t - a.below_since >= cfg.min_gap_s:
                while a.samples and a.samples[-1][1] < cfg.off_threshold_kg:
                    a.samples.pop()
                a.end = s.at
                self._axle = None
                self._finish_axle(a)
                if self._vehicle is not None and self._vehicle.free_at is not None:
                    out += self.flush(s.at)
        else:
            a.below_since = None
        return out

    def _finish_axle(self, a: _Axle) -> None:
        cfg = self.config
        v = self._vehicle
        assert v is not None
        v.last_activity = a.end
        if not a.samples:
            v.spikes += 1
            return
        t_start, t_end = a.samples[0][0], a.samples[-1][0]
        duration = t_end - t_start
        if duration < cfg.min_axle_s:
            v.spikes += 1
            return
        values = [kg for _, kg in a.samples]
        level, problems = _axle_level(a.samples, cfg)
        if _dipped(a.samples, level, cfg):
            problems.append(
                "weight dropped and came back inside one axle "
                "(reversing, creeping off, or two axles on the platform)"
            )
        if level < cfg.min_axle_kg:
            problems.append(
                f"axle of {level:.0f} kg lighter than min_axle_kg={cfg.min_axle_kg:.0f}"
            )
        # Samples at mid-level for long: two axles on the platform at once (merged levels).
        mid = sum(1 for kg in values if 0.3 * level < kg < 0.8 * level) / len(values)
        if mid > 0.45:
            problems.append(f"{mid:.0%} of the axle at an intermediate level (merged axles?)")
        speed = None
        if cfg.platform_length_m > 0 and duration > 0:
            speed = (cfg.platform_length_m + cfg.tyre_contact_m) / duration * 3.6
        v.axles.append(
            {
                "start": a.start.isoformat(),
                "t_start_s": round(t_start, 3),
                "duration_s": round(duration, 3),
                "load_kg": round(level),
                "peak_kg": round(max(values)),
                "samples": len(values),
                "speed_kmh": round(speed, 1) if speed is not None else None,
                "problems": problems,
            }
        )
        if problems:
            v.flags.add(WeighingFlag.INCONSISTENT)

    def _close(self) -> list[VehicleWeighing]:
        v = self._vehicle
        self._vehicle = None
        if v is None:
            return []
        cfg = self.config
        if not v.axles:
            if v.spikes:
                log.info("lane %d: %d spike(s) and no axle, no vehicle", self.lane, v.spikes)
            return []
        loads = tuple(int(a["load_kg"]) for a in v.axles)
        problems = list(v.problems)
        for i, a in enumerate(v.axles, 1):
            problems += [f"axle {i}: {p}" for p in a["problems"]]
        if len(loads) > cfg.max_axles:
            v.flags.add(WeighingFlag.INCONSISTENT)
            problems.append(
                f"{len(loads)} axles > max_axles={cfg.max_axles}: two vehicles, or a reversal"
            )
        speeds = [a["speed_kmh"] for a in v.axles if a["speed_kmh"] is not None]
        speed = round(statistics.median(speeds), 1) if speeds else None
        spacings: tuple[int, ...] = ()
        if speed is not None and len(loads) > 1:
            if max(speeds) <= 1.3 * min(speeds):
                gaps = [
                    b["t_start_s"] - a["t_start_s"]
                    for a, b in zip(v.axles, v.axles[1:], strict=False)
                ]
                spacings = tuple(round(g * speed / 3.6 * 1000 / 10) * 10 for g in gaps)
            else:
                problems.append("speed changed on the scale: spacings unknown")
        if speed is not None and not (
            self.scale.min_speed_kmh <= speed <= self.scale.max_speed_kmh
        ):
            v.flags.add(WeighingFlag.SPEED_OUT_OF_RANGE)
            problems.append(f"speed {speed} km/h outside the scale's approved range")
        v.flags |= self._calibration(v.started)
        if problems:
            log.warning("lane %d vehicle flagged: %s", self.lane, "; ".join(problems))
        return [
            VehicleWeighing(
                lane=self.lane,
                measured_at=v.started,
                axle_loads_kg=loads,
                gross_kg=sum(loads),
                scale_id=self.scale.id,
                axle_spacings_mm=spacings,
                speed_kmh=speed,
                flags=frozenset(v.flags),
                raw={
                    "mode": "axle",
                    "axles": v.axles,
                    "problems": problems,
                    "spikes": v.spikes,
                    "trace": _decimate(v.trace),
                },
            )
        ]

    # ----- static weighbridge ---------------------------------------------------------------
    def _static_sample(self, s: WeightSample) -> list[VehicleWeighing]:
        cfg = self.config
        on = bool(self._static)
        if not on:
            if s.gross_kg >= cfg.on_threshold_kg:
                self._static = [s]
            return []
        self._static.append(s)
        if s.gross_kg < cfg.off_threshold_kg:
            if self._static_below_since is None:
                self._static_below_since = s.at
            if (s.at - self._static_below_since).total_seconds() >= cfg.min_gap_s:
                samples = [x for x in self._static if x.gross_kg >= cfg.off_threshold_kg]
                self._static = []
                self._static_below_since = None
                return self._static_vehicle(samples)
        else:
            self._static_below_since = None
        return []

    def _static_vehicle(self, samples: list[WeightSample]) -> list[VehicleWeighing]:
        cfg = self.config
        if not samples:
            return []
        best: list[WeightSample] | None = None
        run: list[WeightSample] = []
        for x in samples:
            if x.stable and "motion" not in x.flags:
                run.append(x)
                while run and (
                    max(r.gross_kg for r in run) - min(r.gross_kg for r in run) > cfg.static_band_kg
                ):
                    run.pop(0)
                if run and (run[-1].at - run[0].at).total_seconds() >= cfg.static_stable_s:
                    best = list(run)
            else:
                run = []
        flags: set[WeighingFlag] = set()
        for x in samples:
            flags |= _device_flags(x.flags)
        if best is not None:
            gross = round(statistics.median(r.gross_kg for r in best))
            window = {"from": best[0].at.isoformat(), "to": best[-1].at.isoformat()}
        else:
            flags.add(WeighingFlag.MOTION)
            top = sorted(x.gross_kg for x in samples)
            gross = round(_quantile(top, 0.5))
            window = {}
        flags |= self._calibration(samples[0].at)
        return [
            VehicleWeighing(
                lane=self.lane,
                measured_at=best[0].at if best else samples[0].at,
                axle_loads_kg=(),
                gross_kg=gross,
                scale_id=self.scale.id,
                flags=frozenset(flags),
                raw={
                    "mode": "static",
                    "stable_window": window,
                    "samples": len(samples),
                    "trace": _decimate(
                        [((x.at - samples[0].at).total_seconds(), x.gross_kg) for x in samples]
                    ),
                },
            )
        ]

    # ----- shared -----------------------------------------------------------------------------
    def _calibration(self, at: datetime) -> set[WeighingFlag]:
        expiry = self.scale.certificate_valid_until
        if expiry is None:
            return set()
        return {WeighingFlag.CALIBRATION_EXPIRED} if at.date() > expiry else set()


def _device_flags(flags: frozenset[str]) -> set[WeighingFlag]:
    out: set[WeighingFlag] = set()
    if "fault" in flags:
        out.add(WeighingFlag.SCALE_FAULT)
    if "overload" in flags or "out_of_range" in flags:
        out.add(WeighingFlag.OUT_OF_RANGE)
    if "straddling" in flags:
        out.add(WeighingFlag.STRADDLING)
    if "axles_truncated" in flags:
        out.add(WeighingFlag.INCOMPLETE)
    if "net" in flags:
        # A tared indicator's net weight is not the vehicle's gross: kept, never judged.
        out.add(WeighingFlag.NET_WEIGHT)
    return out


def _axle_level(samples: list[tuple[float, float]], cfg: WeighingConfig) -> tuple[float, list[str]]:
    """An axle's load (kg): the median of its plateau, and what makes that level doubtful."""
    run = _plateau(samples, cfg.plateau_band_pct, cfg.min_plateau_s)
    if run is None:
        # No level held long enough: the median of the top band is the best estimate,
        # and the axle says so.
        values = [kg for _, kg in samples]
        ordered = sorted(values)
        top = [kg for kg in values if kg >= 0.85 * _quantile(ordered, 0.9)]
        return statistics.median(top), [
            f"no plateau of min_plateau_s={cfg.min_plateau_s} s (too fast?)"
        ]
    level = statistics.median(run)
    ps = sorted(run)
    spread = (_quantile(ps, 0.9) - _quantile(ps, 0.1)) / max(level, 1.0) * 100
    if spread > cfg.plateau_spread_pct:
        return level, [f"plateau not settled (spread {spread:.0f} %)"]
    return level, []


def _dipped(samples: list[tuple[float, float]], level: float, cfg: WeighingConfig) -> bool:
    """After reaching ``level``, the weight fell well below it (``dip_pct``) for at least
    ``min_gap_s`` and came back: reversing, creeping off, or two axles on the platform."""
    reached = False
    dipped_at: float | None = None
    for t, kg in samples:
        if kg >= 0.85 * level:
            if dipped_at is not None and t - dipped_at >= cfg.min_gap_s:
                return True
            reached, dipped_at = True, None
        elif reached and kg < (1 - cfg.dip_pct / 100) * level and dipped_at is None:
            dipped_at = t
    return False


def _plateau(
    samples: list[tuple[float, float]], band_pct: float, min_s: float
) -> list[float] | None:
    """The highest level held for at least ``min_s``: runs of readings within ``band_pct`` of
    their running mean; ramps make short runs, bounce stays inside the band. Taking the
    highest run (not the longest) keeps a truck that stopped with a tyre half on the platform
    edge from lowering the axle's load."""
    best: list[float] | None = None
    best_mean = float("-inf")
    run: list[tuple[float, float]] = []
    total = 0.0

    def consider() -> None:
        nonlocal best, best_mean
        if run and run[-1][0] - run[0][0] >= min_s:
            mean = total / len(run)
            if mean > best_mean:
                best, best_mean = [kg for _, kg in run], mean

    for t, kg in samples:
        if run:
            mean = total / len(run)
            if abs(kg - mean) <= abs(mean) * band_pct / 100:
                run.append((t, kg))
                total += kg
                continue
            consider()
        run = [(t, kg)]
        total = kg
    consider()
    return best


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    i = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[i]


def _decimate(trace: list[tuple[float, float]]) -> list[list[float]]:
    step = max(1, -(-len(trace) // TRACE_LIMIT))
    return [[round(t, 3), round(kg)] for t, kg in trace[::step]]
