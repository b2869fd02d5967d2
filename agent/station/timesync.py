"""Is the system clock NTP-synchronised (``adjtimex(2)``), and was it stepped?

Steps: :class:`ClockMonitor` compares the wall clock with the monotonic clock at every poll;
a jump of their difference is a step (``date -s``, an NTP ``makestep``, a bad RTC), which the
kernel's sync bit does not show.

chrony, systemd-timesyncd and ntpd clear the kernel's ``STA_UNSYNC`` status bit while they
discipline the clock and the kernel sets it again when they stop (after ``maxerror`` grows past
16 s). ``adjtimex`` with ``modes = 0`` only reads, needs no privileges and returns the clock state;
``TIME_ERROR`` (5) also means "not synchronised". No shell-out to ``timedatectl``: it is slow,
needs D-Bus, and its output is not an interface.

``struct timex`` is declared with C ``long`` fields, so the layout is right on 64-bit and on
32-bit userlands with 32-bit ``time_t``. (A 32-bit build with 64-bit ``time_t`` maps
``adjtimex`` to ``__adjtimex64``; glibc keeps the old symbol, whose status bits are the same.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.store.db import Database

log = logging.getLogger(__name__)

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """``struct timex`` from ``<sys/timex.h>`` (the trailing padding is 11 ints)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


_adjtimex: Callable[[ctypes._Pointer[Timex]], int] | None = None


def _libc_adjtimex() -> Callable[[ctypes._Pointer[Timex]], int] | None:
    global _adjtimex  # noqa: PLW0603 (resolved once, on first use)
    if _adjtimex is None and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = libc.adjtimex
        except (OSError, AttributeError):
            return None
        fn.argtypes = [ctypes.POINTER(Timex)]
        fn.restype = ctypes.c_int
        _adjtimex = fn
    return _adjtimex


def read_timex() -> tuple[int, Timex] | None:
    """``(clock state, struct timex)`` from the kernel, or ``None`` when unavailable."""
    fn = _libc_adjtimex()
    if fn is None:
        return None
    tx = Timex()
    tx.modes = 0  # read only
    state = fn(ctypes.pointer(tx))
    if state < 0:
        log.debug("timesync: adjtimex failed, errno %d", ctypes.get_errno())
        return None
    return state, tx


def clock_synchronized() -> bool | None:
    """``True`` when the kernel clock is NTP-disciplined, ``False`` when not, ``None`` when the
    kernel cannot be asked (not Linux, no libc ``adjtimex``)."""
    result = read_timex()
    if result is None:
        return None
    state, tx = result
    return state != TIME_ERROR and not (tx.status & STA_UNSYNC)


class SyncSource(Protocol):
    def __call__(self) -> bool | None: ...


class Clock(Protocol):
    """The station clock (:class:`drivers.clock.Clock`): wall time and monotonic seconds."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


#: A wall-clock jump against the monotonic clock larger than this between two polls is a step.
#: NTP slews at most 500 ppm (1 ms in 2 s); chrony's ``makestep`` and ntpd step at ≥ 0.128 s,
#: a technician's ``date -s`` or a wrong RTC at boot by seconds to days.
STEP_THRESHOLD_S = 1.0

#: Steps kept (for status and for flagging the records taken across them).
MAX_STEPS = 100
#: A step is found at the next poll, after it happened: records measured this much before
#: the detection are taken as across it.
STEP_MARGIN_S = 2.5

AlarmFn = Callable[..., None]


@dataclass(frozen=True)
class ClockStep:
    """One detected step: ``step_s`` (wall minus monotonic moved by this much, + forward),
    found at monotonic ``detected_mono``, somewhere after the poll at ``after_mono``."""

    step_s: float
    detected_mono: float
    after_mono: float
    detected_at: datetime
    #: ``wall − monotonic`` after the step
    offset: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_s": round(self.step_s, 3),
            "detected_at": self.detected_at.isoformat(timespec="milliseconds"),
        }


class ClockMonitor:
    """Polls a sync source and the clock: ``clock_unsynchronized`` and ``clock_step`` alarms.

    ``alarm(message, at)`` is called once when the clock becomes unsynchronised (or is
    found so at start-up) and again only after it was synchronised in between; the recovery is
    logged at WARNING. :attr:`synchronized` is what records and heartbeats should carry.

    With ``clock`` (the station's injected clock) every poll also compares the wall clock with
    the monotonic one: when ``now() − monotonic()`` moved by more than ``step_threshold_s`` since
    the last poll, the wall clock was stepped. Each step is logged at ERROR, kept
    (:attr:`steps`) and given to ``step_alarm(message, at, details)``; :meth:`stepped_since`
    tells the supervisor which records were taken across it. Thread-safe.

    The journal line is an ERROR on a station whose records can reach an officer. With
    ``simulated`` (every scale of the station is a simulated one: the demo, a bench) nothing it
    stores is evidence, so a machine without NTP is said once as a WARNING with what it would
    mean; the records are flagged and the alarm raised all the same.
    """

    def __init__(
        self,
        source: SyncSource = clock_synchronized,
        alarm: Callable[[str, datetime], None] | None = None,
        *,
        clock: Clock | None = None,
        step_alarm: AlarmFn | None = None,
        step_threshold_s: float = STEP_THRESHOLD_S,
        simulated: bool = False,
    ) -> None:
        self.source = source
        self.alarm = alarm
        self.clock = clock
        self.step_alarm = step_alarm
        self.step_threshold_s = step_threshold_s
        self.simulated = simulated
        self.synchronized: bool | None = None
        self.steps: list[ClockStep] = []
        self._alarmed = False
        self._offset: float | None = None
        self._base_offset: float | None = None  # wall − monotonic before the first kept step
        self._last_mono = 0.0
        self._lock = threading.Lock()

    def poll(self, at: datetime | None = None) -> bool | None:
        """Ask the source (and the clock) now; raise or clear the alarms. Returns the state."""
        with self._lock:
            if at is None:
                at = self.clock.now() if self.clock is not None else datetime.now().astimezone()
            self._check_step()
            return self._check_sync(at)

    def _check_sync(self, at: datetime) -> bool | None:
        try:
            state = self.source()
        except Exception:  # a broken source must not stop the station
            log.exception("timesync: cannot read the clock state")
            state = None
        self.synchronized = state
        if state is False and not self._alarmed:
            self._alarmed = True
            message = (
                "system clock is not NTP-synchronised (kernel STA_UNSYNC): records are "
                "flagged clock.synchronized=false until it is"
            )
            if self.simulated:
                log.warning(
                    "timesync: %s. This station is simulated, so no evidence is at stake; on a "
                    "real station an officer cannot rely on the time of such records "
                    "(it is an ERROR there): run an NTP client (chrony, systemd-timesyncd)",
                    message,
                )
            else:
                log.error("timesync: %s", message)
            if self.alarm is not None:
                try:
                    self.alarm(message, at)
                except Exception:  # best effort (a full disk); records still carry the flag
                    log.exception("timesync: clock_unsynchronized alarm not queued")
        elif state is True and self._alarmed:
            self._alarmed = False
            log.warning("timesync: system clock is NTP-synchronised again")
        return state

    def _check_step(self) -> None:
        if self.clock is None:
            return
        mono = self.clock.monotonic()
        wall = self.clock.now()
        offset = wall.timestamp() - mono
        previous, after = self._offset, self._last_mono
        self._offset, self._last_mono = offset, mono
        if previous is None or abs(offset - previous) <= self.step_threshold_s:
            return
        step = ClockStep(offset - previous, mono, after, wall, offset)
        if self._base_offset is None:
            self._base_offset = previous
        self.steps.append(step)
        if len(self.steps) > MAX_STEPS:  # the oldest era merges into the one before it
            self._base_offset = self.steps.pop(0).offset
        message = (
            f"system clock stepped by {step.step_s:+.3f} s against the monotonic clock "
            f"(now {wall.isoformat(timespec='seconds')}): records taken across the step carry "
            "clock.stepped_s"
        )
        log.error("timesync: %s", message)
        if self.step_alarm is not None:
            try:
                self.step_alarm(message, wall, {"step_s": round(step.step_s, 3)})
            except Exception:  # the alarm is best effort; the records still carry the flag
                log.exception("timesync: clock_step alarm not queued")

    def stepped_during(self, measured_at: datetime) -> float | None:
        """The steps made since a vehicle was measured at ``measured_at`` (its wall time as
        the clock then said), summed; ``None`` when there was none (``clock.stepped_s``).

        Each step starts an era of constant ``wall − monotonic``; the measurement belongs to
        the newest era in which ``measured_at`` maps to a monotonic time inside it (and not in
        the future). Every step after that era was taken across; a measurement within a
        step's uncertainty (between the poll before it and the poll that found it) counts it
        too. Call :meth:`poll` first so a step just made is seen.
        """
        if self.clock is None:
            return None
        with self._lock:
            steps, base = list(self.steps), self._base_offset
            if not steps or base is None:
                return None
            now_mono = self.clock.monotonic()
            wall = measured_at.timestamp()
            starts = [(-math.inf, base)] + [(s.after_mono, s.offset) for s in steps]
            for era in range(len(starts) - 1, -1, -1):
                start, offset = starts[era]
                # an era ends where the next step was found (it may have begun at the poll
                # before: both eras claim that stretch, the newer one is asked first)
                end = steps[era].detected_mono if era < len(steps) else now_mono + STEP_MARGIN_S
                mono = wall - offset
                if not start - STEP_MARGIN_S <= mono <= end:
                    continue
                found = [s.step_s for s in steps[era:]]
                if era and mono < steps[era - 1].detected_mono:
                    found.append(steps[era - 1].step_s)  # measured while the step was unseen
                return round(sum(found), 3) if found else None
        return round(sum(s.step_s for s in steps), 3)  # fits no era: across all of them

    def report(self) -> dict[str, Any]:
        """The clock part of the health report: sync state and the steps found."""
        with self._lock:
            steps = list(self.steps)
        return {
            "synchronized": self.synchronized,
            "steps": len(steps),
            "last_step": steps[-1].to_dict() if steps else None,
        }


def outbox_alarm(
    db: Database, station_id: str, kind: str = "clock_unsynchronized"
) -> Callable[..., None]:
    """An ``alarm`` callback for :class:`ClockMonitor` that queues it in the station outbox."""
    from agent.store.alarms import raise_alarm

    def alarm(message: str, at: datetime, details: dict[str, Any] | None = None) -> None:
        with db.write() as conn:
            raise_alarm(
                conn,
                station_id=station_id,
                kind=kind,
                at=at,
                message=message,
                details=details,
            )

    return alarm
