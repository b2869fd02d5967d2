"""Progress shows on a technician's terminal and never in the journal or a pipe."""

from __future__ import annotations

import io
import os

from agent.commands.progress import Progress, track


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_silent_when_stderr_is_not_a_terminal() -> None:
    out = io.StringIO()  # a pipe, a file, the journal
    with Progress("verify", total=10, stream=out) as p:
        for _ in range(10):
            p.advance()
    assert out.getvalue() == ""
    assert list(track(range(3), "export", stream=out)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_draws_on_a_real_terminal() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as tty:
            assert list(track(range(5), "export", total=5, stream=tty)) == [0, 1, 2, 3, 4]
        chunks = []
        while True:  # everything written, until the closed slave side gives EIO
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        shown = b"".join(chunks).decode()
    finally:
        os.close(master)
    assert "\r" in shown
    assert "export  5/5" in shown
    assert shown.endswith("\n") or shown.endswith("\r\n")  # the prompt starts clean


def test_redraws_are_limited_and_show_rate_and_eta() -> None:
    clock = Clock()
    out = io.StringIO()
    p = Progress("verify", total=1000, unit="records", stream=out, enabled=True, monotonic=clock)
    for _ in range(100):
        p.advance()  # all within the same instant: one redraw
    assert out.getvalue().count("\r") == 1
    clock.t += 10
    p.advance()
    assert out.getvalue().count("\r") == 2
    assert p.line(clock.t) == "verify  101/1000 records   10.1%  10/s eta 1m29s"
    p.finish()
    assert out.getvalue().endswith("done in 10s\n")
    p.advance()  # after finish: nothing more
    assert out.getvalue().endswith("\n")


def test_unknown_total_counts_without_percentage() -> None:
    clock = Clock()
    p = Progress("resend", stream=io.StringIO(), enabled=True, monotonic=clock)
    p.advance(50)
    clock.t += 5
    assert p.line(clock.t) == "resend  50  10/s"
