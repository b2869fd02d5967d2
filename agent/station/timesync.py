"""Is the system clock NTP-synchronised? Asked of the kernel with ``adjtimex(2)``.

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
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

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


class ClockMonitor:
    """Polls a sync source and raises ``clock_unsynchronized`` alarms on the way down.

    ``alarm(message, at)`` is called once when the clock becomes unsynchronised (or is
    found so at start-up) and again only after it was synchronised in between; the recovery is
    logged at WARNING. :attr:`synchronized` is what records and heartbeats should carry.

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
        simulated: bool = False,
    ) -> None:
        self.source = source
        self.alarm = alarm
        self.simulated = simulated
        self.synchronized: bool | None = None
        self._alarmed = False

    def poll(self, at: datetime) -> bool | None:
        """Ask the source now; raise or clear the alarm. Returns the new state."""
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
                self.alarm(message, at)
        elif state is True and self._alarmed:
            self._alarmed = False
            log.warning("timesync: system clock is NTP-synchronised again")
        return state


def outbox_alarm(db: Database, station_id: str) -> Callable[[str, datetime], None]:
    """An ``alarm`` callback for :class:`ClockMonitor` that queues it in the station outbox."""
    from agent.store.alarms import raise_alarm

    def alarm(message: str, at: datetime) -> None:
        with db.write() as conn:
            raise_alarm(
                conn,
                station_id=station_id,
                kind="clock_unsynchronized",
                at=at,
                message=message,
            )

    return alarm
