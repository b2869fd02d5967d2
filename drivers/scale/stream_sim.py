"""Simulated twins of the continuous-output devices: an XK3190 or Toledo indicator, or a WIM
controller writing record lines, talking into a pty (or any writer) from a thread.

The indicator twins play a weight script (:mod:`drivers.scale.trace`: a truck crossing the
axle scale) at the indicator's output rate; the WIM twin writes one CSV record per truck.
``python -m drivers.scale.stream_sim --protocol xk3190 --link /tmp/ttyXK`` makes a pty whose
other end ``/tmp/ttyXK`` a scale (or ``probe``) can open.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from drivers.scale import toledo, xk3190, yaohua
from drivers.scale.modbus_sim import WeightScript, constant, playback
from drivers.scale.pty import PtyPair
from drivers.scale.trace import TruckPass, axle_scale_trace
from drivers.scale.wim_lines import format_csv

SIX_AXLE = TruckPass((7100, 9800, 9700, 11800, 11900, 11700), (3400, 1350, 7100, 1310, 1310))


def frame_maker(
    protocol: str, unit: str = "kg", fmt: str = "tf0"
) -> Callable[[float, bool], bytes]:
    """``(kg, stable) -> frame`` for ``xk3190`` (display in ``unit``, output ``fmt``: tf0,
    a12, reversed, in_order) or ``toledo`` (kg)."""
    if protocol == "xk3190" and fmt != "tf0":
        t = unit == "t"
        if fmt == "a12":
            return lambda kg, _s: yaohua.encode_a12(kg / 1000 if t else kg, 2 if t else 0)
        rev = fmt == "reversed"
        return lambda kg, _s: yaohua.encode_eq(kg / 1000 if t else kg, 2 if t else 0, rev) * 2
    if protocol == "xk3190":
        if unit == "t":
            return lambda kg, _stable: xk3190.encode(round(kg / 1000, 2), 2)
        return lambda kg, _stable: xk3190.encode(round(kg), 0)
    if protocol == "toledo":
        return lambda kg, stable: toledo.encode(round(kg), motion=not stable)
    raise ValueError(f"no frame maker for {protocol!r}")


class StreamTalker:
    """Writes what an indicator would, ``rate_hz`` times a second, until :meth:`stop`."""

    def __init__(
        self,
        write: Callable[[bytes], object],
        frame: Callable[[float], bytes],
        rate_hz: float = 20.0,
    ) -> None:
        self.write = write
        self.frame = frame
        self.period_s = 1.0 / rate_hz
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="stream-sim", daemon=True)

    def start(self) -> StreamTalker:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.write(self.frame(time.monotonic() - self._t0))
            except OSError:
                continue  # unplugged: keep talking into the void, like the real one

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


class CommandResponder:
    """An XK3190 in tF=1 command mode on a pty: answers each "read gross" request (``02 addr
    B XH XL 03``) with the weight of ``script``; other addresses are silent, like on RS-485."""

    def __init__(
        self, pty: PtyPair, script: WeightScript, address: str = "A", unit: str = "kg"
    ) -> None:
        self.pty = pty
        self.script = script
        self.address = address
        self.unit = unit
        self.requests = 0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="xk3190-tf1-sim", daemon=True)

    def start(self) -> CommandResponder:
        self._thread.start()
        return self

    def _run(self) -> None:
        import select

        want = yaohua.command(self.address, "B")
        buf = b""
        while not self._stop.is_set():
            fd = self.pty.master
            if fd is None:
                self._stop.wait(0.05)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if not ready:
                    continue
                buf = (buf + self.pty.read())[-64:]
            except OSError:
                continue
            while want in buf:
                buf = buf[buf.index(want) + len(want) :]
                self.requests += 1
                kg, _stable, _flags = self.script(time.monotonic() - self._t0)
                if self.unit == "t":
                    self.pty.write(yaohua.encode_reply(self.address, round(kg / 1000, 2), 2))
                else:
                    self.pty.write(yaohua.encode_reply(self.address, round(kg), 0))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


def indicator(
    protocol: str, write: Callable[[bytes], object], script: WeightScript | None = None, **kw: str
) -> StreamTalker:
    """An XK3190 / Toledo twin playing ``script`` (default: a 6-axle truck, looping)."""
    script = script or playback(axle_scale_trace(SIX_AXLE))
    make = frame_maker(protocol, kw.get("unit", "kg"), kw.get("format", "tf0"))

    def frame(t: float) -> bytes:
        kg, stable, _flags = script(t)
        return make(kg, stable)

    return StreamTalker(write, frame)


def wim_controller(
    write: Callable[[bytes], object], trucks: Sequence[TruckPass] = (SIX_AXLE,), every_s: float = 2
) -> StreamTalker:
    """A WIM twin writing one CSV record line every ``every_s`` seconds."""
    state = {"n": 0, "next": 0.0}

    def frame(t: float) -> bytes:
        if t < state["next"]:
            return b""
        state["next"] = t + every_s
        truck = trucks[int(state["n"]) % len(trucks)]
        state["n"] += 1
        line = format_csv(
            1, truck.speed_kmh, list(truck.axle_loads_kg), list(truck.axle_spacings_mm)
        )
        return line.encode()

    return StreamTalker(write, frame, rate_hz=10)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="simulated continuous-output device on a pty")
    parser.add_argument("--protocol", choices=["xk3190", "toledo", "wim_lines"], required=True)
    parser.add_argument("--link", required=True, help="path of the symlink to the pty to open")
    parser.add_argument("--unit", default="kg", choices=["kg", "t"], help="xk3190 display unit")
    parser.add_argument("--kg", type=float, default=None, help="constant weight")
    args = parser.parse_args(argv)
    pty = PtyPair(Path(args.link))
    if args.protocol == "wim_lines":
        talker = wim_controller(pty.write)
    else:
        script = constant(args.kg) if args.kg is not None else None
        talker = indicator(args.protocol, pty.write, script, unit=args.unit)
    talker.start()
    print(args.link, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()
    talker.stop()
    pty.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
