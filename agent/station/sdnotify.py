"""systemd's notification protocol (``sd_notify(3)``) in plain Python, and the watchdog gate.

The unit is ``Type=notify`` with ``WatchdogSec=``: systemd waits for ``READY=1`` before it
calls the service started, shows the last ``STATUS=`` line in ``systemctl status``, and kills
and restarts the service when ``WATCHDOG=1`` stops arriving. The protocol is one datagram per
message on the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``: newline-separated
``KEY=value`` lines. A name starting with ``@`` is an abstract socket (the ``@`` stands for a
leading NUL byte). Outside systemd (a terminal, the tests, the demo) ``$NOTIFY_SOCKET`` is
unset and every call here does nothing and returns ``False``.

How the supervisor uses it::

    notifier = Notifier.from_environment()
    watchdog = Watchdog(notifier)                  # interval from $WATCHDOG_USEC
    notifier.status("starting: loading config")
    ... config loaded, stages started ...
    wait_for_first_readings(notifier, pending, stop_event, timeout_s=60)  # sends READY=1
    while not stop_event.wait(2.0):                # the status loop
        watchdog.tick(stages_fresh=..., stale=[...])
        notifier.status(status_line(...))
    notifier.stopping("stopping: flushing the evidence store")

``WATCHDOG=1`` is sent only while every stage's heartbeat is fresh, so a hung stage (a scale
thread stuck in a driver call, a wedged pipeline) stops the pings and systemd restarts the
service after ``WatchdogSec``, even though the process is still alive. Sending never raises:
a notification that cannot be delivered is logged once and the station goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

# Watchdog pings go out at this fraction of systemd's interval: with the supervisor ticking
# every 2 s and WatchdogSec=30, a ping leaves at the latest 12 s after the previous one.
PING_FRACTION = 1 / 3


class Notifier:
    """One connection-less sender to ``$NOTIFY_SOCKET``. Thread-safe; never raises on send."""

    def __init__(self, address: str | None) -> None:
        """``address`` as systemd gives it in ``$NOTIFY_SOCKET`` (``None``/empty: disabled)."""
        self.address = address or None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False
        self.last_status = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _sockaddr(self) -> str | bytes | None:
        assert self.address is not None
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        if self.address.startswith("/"):
            return self.address
        return None  # vsock:… (systemd ≥ 254) and anything else: not for a station

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram. True when the datagram left."""
        if self.address is None:
            return False
        addr = self._sockaddr()
        if addr is None:
            self._fail_once(f"unsupported NOTIFY_SOCKET {self.address!r}")
            return False
        payload = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(payload, addr)
            except OSError as err:
                self._fail_once(f"systemd notification to {self.address} failed: {err}")
                self._close_locked()
                return False
        if self._failed:
            self._failed = False
            log.warning("systemd notifications delivered again")
        return True

    def _fail_once(self, message: str) -> None:
        if not self._failed:
            log.error("%s", message)
        else:
            log.debug("%s", message)
        self._failed = True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up finished (systemd stops waiting; ``After=`` units start)."""
        return self._send_with_status(["READY=1"], status)

    def status(self, text: str) -> bool:
        """``STATUS=``: the one line ``systemctl status`` shows. Repeats are not re-sent."""
        if text == self.last_status:
            return self.enabled
        return self._send_with_status([], text)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shut-down began (sent on SIGTERM before flushing)."""
        return self._send_with_status(["STOPPING=1"], status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive. Prefer :class:`Watchdog`, which gates it."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float, status: str | None = None) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for ``seconds`` more of start-up or shut-down time."""
        return self._send_with_status([f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}"], status)

    def _send_with_status(self, fields: list[str], status: str | None) -> bool:
        if status is not None:
            # one line: a newline would start a new field
            fields = [*fields, "STATUS=" + " ".join(status.split())]
        sent = self.notify(*fields)
        if sent and status is not None:
            self.last_status = status
        return sent

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """systemd's watchdog interval in seconds from ``$WATCHDOG_USEC``, or ``None`` if off.

    ``$WATCHDOG_PID``, when set, must be this process: a child that inherited the
    environment is not the one systemd watches.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


class Watchdog:
    """Sends ``WATCHDOG=1`` at a third of systemd's interval, but only while stages are fresh.

    The supervisor calls :meth:`tick` from its periodic loop (every few seconds, always well
    under the interval). With the watchdog off (no ``$WATCHDOG_USEC``) ticks do nothing.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s(environ)
        self._monotonic = monotonic
        self._last_ping: float | None = None
        self._withheld_for: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled and self.interval_s is not None

    def tick(self, stages_fresh: bool, stale: Iterable[str] = ()) -> bool:
        """One supervisor tick. Returns True when a ``WATCHDOG=1`` was sent.

        ``stages_fresh``: every stage's heartbeat is recent. ``stale``: the names of the stages
        that are not (for the log line; the first time a stage goes stale is an ERROR, the
        recovery a WARNING).
        """
        if not stages_fresh:
            names = tuple(stale) or ("(unnamed)",)
            if names != self._withheld_for:
                if self.enabled:
                    log.error(
                        "watchdog: stage(s) %s not responding; systemd restarts the service "
                        "if they do not recover within %g s",
                        ", ".join(names),
                        self.interval_s,
                    )
                else:
                    log.error("stage(s) %s not responding", ", ".join(names))
                self._withheld_for = names
            return False
        if self._withheld_for:
            log.warning("watchdog: all stages responding again")
            self._withheld_for = ()
        if not self.enabled:
            return False
        assert self.interval_s is not None
        now = self._monotonic()
        if self._last_ping is not None and now - self._last_ping < self.interval_s * PING_FRACTION:
            return False
        if self.notifier.watchdog():
            self._last_ping = now
            return True
        return False


def stale_stages(beats: Mapping[str, float], now: float, max_age_s: float) -> list[str]:
    """Names of the stages whose last heartbeat (monotonic s) is older than ``max_age_s``."""
    return sorted(name for name, last in beats.items() if now - last > max_age_s)


def status_line(
    vehicles_today: int,
    queue_pending: int,
    broker: str,
    problems: Iterable[str] = (),
) -> str:
    """The ``STATUS=`` text a technician reads in ``systemctl status``.

    ``broker`` is a word or two (``connected``, ``NOT connected``, ``not configured``);
    ``problems`` are short device or stage faults, shown first so they are not cut off.
    """
    parts = [
        *problems,
        f"{vehicles_today} vehicles today",
        f"queue {queue_pending}",
        f"broker {broker}",
    ]
    return "; ".join(parts)


def wait_for_first_readings(
    notifier: Notifier,
    pending: Callable[[], list[str]],
    stop: threading.Event,
    timeout_s: float,
    poll_s: float = 0.5,
) -> bool:
    """Hold ``READY=1`` back until every scale gave a good reading, at most ``timeout_s``.

    ``pending()`` names the devices still without a first good reading (e.g.
    ``["scale wim-1 (lane 1)"]``). While waiting, ``STATUS=`` says which. At the timeout the
    station still becomes ready (records wait for the scale; the platform sees the fault in the
    heartbeat) and ``STATUS=`` says which device never answered. Returns True when every
    device answered, False on timeout or stop. Keep ``timeout_s`` below the unit's
    ``TimeoutStartSec=`` (120 s).
    """
    deadline = time.monotonic() + timeout_s
    waiting = pending()
    while waiting:
        if stop.is_set():
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            notifier.ready(
                f"started WITHOUT a reading from {', '.join(waiting)} after {timeout_s:g} s "
                "— check wiring and `roadside-agent probe`"
            )
            log.error(
                "start-up: no reading from %s after %g s; running anyway",
                ", ".join(waiting),
                timeout_s,
            )
            return False
        notifier.status(f"starting: waiting for the first reading from {', '.join(waiting)}")
        stop.wait(min(poll_s, remaining))
        waiting = pending()
    notifier.ready("ready: all scales reading")
    return True
