"""Progress of long technician commands (export, verify, resend, diag) — on a terminal only.

A technician running ``roadside-agent verify`` over SSH wants to see it move; the journal and
a pipe into a file want none of it. So progress goes to stderr, redrawn in place with ``\\r``,
and only when stderr is a terminal (never under systemd, where stderr is the journal)::

    with Progress("verify", total=n_records) as progress:
        for record in records:
            check(record)
            progress.advance()

    for path in track(paths, "export", total=len(paths)):
        ...

Redraws are limited to a few per second so a fast loop is not slowed by the terminal.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TextIO, TypeVar

T = TypeVar("T")

REDRAW_INTERVAL_S = 0.2


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is an interactive terminal (not a pipe, file or the journal)."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """A one-line progress display: ``label  done/total  pct  rate/s  eta``.

    Silent (every method a cheap no-op) unless the stream is a terminal; ``enabled=True``
    forces it on (tests). ``total=None`` shows a running count without percentage or ETA.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.enabled = is_terminal(self.stream) if enabled is None else enabled
        self.done = 0
        self._monotonic = monotonic
        self._started = monotonic()
        self._last_draw = float("-inf")
        self._width = 0

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more items done; ``note`` (e.g. the current item) is shown at the end."""
        self.done += n
        if not self.enabled:
            return
        now = self._monotonic()
        if now - self._last_draw >= REDRAW_INTERVAL_S:
            self._draw(now, note)

    def line(self, now: float | None = None, note: str = "") -> str:
        """The text shown for the current state."""
        now = self._monotonic() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            parts = [
                self.label,
                f"{self.done}/{self.total}{unit}",
                f"{100 * self.done / self.total:5.1f}%",
            ]
            if rate > 0 and self.done < self.total:
                parts.append(f"{rate:.0f}/s eta {_duration((self.total - self.done) / rate)}")
        else:
            parts = [self.label, f"{self.done}{unit}", f"{rate:.0f}/s"]
        if note:
            parts.append(note)
        return "  ".join(parts)

    def _draw(self, now: float, note: str = "") -> None:
        text = self.line(now, note)
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)
        self._last_draw = now

    def finish(self, note: str = "done") -> None:
        """Draw the final state and end the line (the shell prompt starts clean)."""
        if not self.enabled:
            return
        now = self._monotonic()
        self._draw(now, f"{note} in {_duration(now - self._started)}")
        self.stream.write("\n")
        self.stream.flush()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self._width == 0:
            # failed before anything was shown (no database, bad config): the error message
            # stands alone, without an empty progress line in front of it
            self.enabled = False
            return
        self.finish("done" if exc_type is None else "stopped")


def track(
    items: Iterable[T],
    label: str,
    total: int | None = None,
    unit: str = "",
    stream: TextIO | None = None,
) -> Iterator[T]:
    """Yield ``items`` unchanged, showing progress on a terminal."""
    with Progress(label, total=total, unit=unit, stream=stream) as progress:
        for item in items:
            yield item
            progress.advance()
