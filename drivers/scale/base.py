"""The scale contract every backend fulfils.

A scale yields :data:`Measurement` s through :meth:`Scale.recv`:

* :class:`WeightSample` – the platform weight of an indicator or axle scale, continuously;
* :class:`WimRecord` – one whole vehicle from a weigh-in-motion controller;
* :class:`DetectorEdge` – a vehicle detector (loop, light curtain) going occupied or free.

``recv`` does the timeout, the closed check and the health bookkeeping once; a backend only
implements ``_recv_internal`` (python-can's ``BusABC.recv`` / ``_recv_internal`` split).
"""

from __future__ import annotations

import collections
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from drivers.clock import Clock, SystemClock


class ScaleError(Exception):
    """A scale could not be read (port gone, timeout, bad frame). Names the device."""


class ScaleConfigError(ScaleError):
    """The scale's settings cannot work (unknown register map, bad field mapping)."""


#: The longest log line a device may write, and the raw bytes one may carry (issue 17.8: a
#: babbling device wrote 68 MB in 8 minutes, lines of 98 590 characters). The bytes
#: themselves stay in the scale's raw ring buffer, which ``probe`` and diag dumps show.
MAX_LOG_CHARS = 600
MAX_LOG_RAW_BYTES = 96


def hex_tail(frames: Iterable[bytes], limit: int = 8, max_bytes: int = MAX_LOG_RAW_BYTES) -> str:
    """The last ``limit`` raw frames as space-separated hex, oldest first, for log lines;
    at most ``max_bytes`` bytes in all (the newest), the cut marked with the bytes left out."""
    tail = list(frames)[-limit:]
    if not tail:
        return "(no bytes)"
    kept: list[str] = []
    budget = max_bytes
    for f in reversed(tail):
        if budget <= 0:
            break
        part = f[-budget:]
        cut = len(f) - len(part)
        kept.append((f"(+{cut} bytes) " if cut else "") + part.hex(" "))
        budget -= len(part)
    left = len(tail) - len(kept)
    return (f"({left} older frames) | " if left else "") + " | ".join(reversed(kept))


def cap_line(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}… ({len(text) - limit + 30} chars cut)"


class Backoff:
    """Exponential retry delay for one device: 0 after a success, then ``first_s`` doubling to
    ``max_s``. A dead device on a shared bus waits here instead of holding the bus.

    Times come from ``clock.monotonic()`` so tests can step them.
    """

    def __init__(self, clock: Clock, first_s: float = 0.2, max_s: float = 2.0) -> None:
        self.clock = clock
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0
        self._not_before = 0.0

    def ready(self) -> bool:
        return self.clock.monotonic() >= self._not_before

    def wait_s(self) -> float:
        return max(0.0, self._not_before - self.clock.monotonic())

    def failed(self) -> float:
        """Record a failure; returns the delay until the next attempt in seconds."""
        self.failures += 1
        delay = min(self.max_s, self.first_s * 2.0 ** min(self.failures - 1, 30))
        self._not_before = self.clock.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self._not_before = 0.0


class FaultLog:
    """One device's journal lines: a fault once at ERROR, repeats at DEBUG, the recovery at
    WARNING; rejected frames at DEBUG.

    Bounded whatever the device does: every line is capped (:data:`MAX_LOG_CHARS`, raw bytes
    :data:`MAX_LOG_RAW_BYTES`), and within one ``interval_s`` at most ``burst`` ERROR/WARNING
    lines and ``burst`` DEBUG lines are written; what was held back is counted and written as
    one summary line per interval (faults, recoveries, rejected frames by reason). A device
    flapping between garbage and good frames costs a few lines a minute, not megabytes.
    """

    def __init__(
        self,
        logger: logging.Logger,
        device: str,
        clock: Clock | None = None,
        interval_s: float = 60.0,
        burst: int = 3,
    ) -> None:
        self.logger = logger
        self.device = device
        self.clock: Clock = clock or SystemClock()
        self.interval_s = interval_s
        self.burst = burst
        self.failing = False
        self.repeats = 0
        self._window_start = self.clock.monotonic()
        self._loud = 0
        self._quiet = 0
        self._held: collections.Counter[str] = collections.Counter()

    def _tick(self) -> None:
        now = self.clock.monotonic()
        if now - self._window_start < self.interval_s:
            return
        if self._held:
            parts = ", ".join(f"{k} ×{v}" for k, v in self._held.most_common(6))
            self.logger.warning(
                "%s: in the last %.0f s, not logged one by one: %s (raw bytes: the ring "
                "buffer, `roadside-agent probe scale`)",
                self.device,
                now - self._window_start,
                parts,
            )
        self._window_start = now
        self._loud = self._quiet = 0
        self._held.clear()

    def _emit(self, level: int, text: str, what: str) -> None:
        self._tick()
        loud = level >= logging.WARNING
        used = self._loud if loud else self._quiet
        if used >= self.burst:
            self._held[what] += 1
            return
        if loud:
            self._loud += 1
        else:
            self._quiet += 1
        self.logger.log(level, "%s", cap_line(text))

    def failure(self, message: str, raw: str = "") -> None:
        text = f"{self.device}: {message}" + (f"; last raw frames: {raw}" if raw else "")
        if self.failing:
            self.repeats += 1
            self._emit(logging.DEBUG, f"{text} (repeat {self.repeats})", "repeated faults")
        else:
            self.failing = True
            self.repeats = 0
            self._emit(logging.ERROR, text, "faults")

    def success(self) -> None:
        if self.failing:
            self._emit(
                logging.WARNING,
                f"{self.device}: working again after {self.repeats + 1} repeated failures",
                "recoveries",
            )
        self.failing = False
        self.repeats = 0

    def rejected(self, reason: str, raw: bytes, level: int = logging.DEBUG) -> None:
        """A frame or line the framer threw away (its bytes stay in the ring buffer)."""
        text = f"{self.device}: rejected {reason}: {hex_tail([raw])}"
        self._emit(level, text, f"rejected ({reason.split(' (', maxsplit=1)[0]})")


@dataclass(frozen=True)
class WeightSample:
    at: datetime
    gross_kg: float
    stable: bool = True
    flags: frozenset[str] = frozenset()  # zero | overload | fault | negative | motion
    raw: bytes | None = None


@dataclass(frozen=True)
class WimRecord:
    """One vehicle as a WIM controller reports it. Values exactly as the controller sent."""

    lane: int
    at: datetime
    axle_loads_kg: tuple[int, ...]
    gross_kg: int
    axle_spacings_mm: tuple[int, ...] = ()
    speed_kmh: float | None = None
    flags: frozenset[str] = frozenset()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class DetectorEdge:
    at: datetime
    occupied: bool


Measurement = WeightSample | WimRecord | DetectorEdge


class ScaleConfig(BaseModel):
    """Settings every scale backend has. Backends subclass it with their own keys."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="backend name: simulated, modbus_tcp, modbus_rtu, xk3190, ...")
    id: str = Field(default="scale-1", description="scale id written into every record")
    accuracy_class: str = Field(default="5", description="OIML R134 / JJG 907 accuracy class")
    certificate: str = Field(default="", description="verification certificate number")
    certificate_valid_until: date | None = Field(
        default=None, description="last day the verification certificate is valid (YYYY-MM-DD)"
    )
    min_speed_kmh: float = Field(default=0.0, description="lowest speed the approval covers")
    max_speed_kmh: float = Field(default=100.0, description="highest speed the approval covers")
    verified_by: str | None = Field(
        default=None, min_length=1, description="the body that verified the scale (检定机构)"
    )
    verified_on: date | None = Field(
        default=None, description="date of the verification (检定日期, YYYY-MM-DD)"
    )
    type_approval: str | None = Field(
        default=None, min_length=1, description="type approval number of the model (型式批准)"
    )
    review_ref: str | None = Field(
        default=None,
        min_length=1,
        description="reference of the site's legal and technical review (法制和技术审核)",
    )


@dataclass
class ScaleHealth:
    state: str = "starting"  # starting | ok | fault | closed
    last_good_at: datetime | None = None
    last_error: str = ""
    errors: int = 0
    reads: int = 0


class Scale(ABC):
    """Base of every scale backend. Thread-compatible: one reader thread calls ``recv``."""

    Config: ClassVar[type[ScaleConfig]] = ScaleConfig
    RAW_TAIL = 32

    def __init__(self, config: ScaleConfig, clock: Clock | None = None, lane: int = 1) -> None:
        self.config = config
        self.lane = lane
        self.clock: Clock = clock or SystemClock()
        self.health = ScaleHealth()
        self.raw_tail: collections.deque[bytes] = collections.deque(maxlen=self.RAW_TAIL)
        self._closed = threading.Event()

    def _note_raw(self, data: bytes) -> None:
        """Keep ``data`` (one frame or chunk as it came) in the raw ring buffer."""
        if data:
            self.raw_tail.append(bytes(data))

    def _alive(self) -> None:
        """The device answered correctly though no measurement came (a WIM controller's
        unchanged record counter, a quiet road): health is "ok" again."""
        self.health.state = "ok"
        self.health.last_good_at = self.clock.now()

    def raw_tail_hex(self, limit: int = 8) -> str:
        """The last raw frames as hex, for error messages and ``probe``."""
        return hex_tail(self.raw_tail, limit)

    @property
    def id(self) -> str:
        return self.config.id

    def recv(self, timeout_s: float | None = None) -> Measurement | None:
        """The next measurement, or ``None`` when none arrived within ``timeout_s``.

        Raises :class:`ScaleError` on a device fault; the caller logs it and calls again
        (backends reconnect by themselves).
        """
        if self._closed.is_set():
            raise ScaleError(f"scale {self.id}: already shut down")
        try:
            m = self._recv_internal(timeout_s)
        except ScaleError as err:
            self.health.state = "fault"
            self.health.errors += 1
            self.health.last_error = str(err)
            raise
        if m is not None:
            self.health.state = "ok"
            self.health.reads += 1
            self.health.last_good_at = m.at
        return m

    @abstractmethod
    def _recv_internal(self, timeout_s: float | None) -> Measurement | None:
        """Read one measurement; return ``None`` on timeout, raise ``ScaleError`` on faults."""

    def shutdown(self) -> None:
        """Release the device. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.health.state = "closed"
        self._shutdown_internal()

    def _shutdown_internal(self) -> None:  # noqa: B027 - optional hook
        """Backends with a port or socket close it here."""

    def __enter__(self) -> Scale:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
