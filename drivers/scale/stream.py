"""Continuous-output indicators: the indicator talks, we listen (XK3190, Toledo, WIM lines).

Layers (pymodbus style): :class:`~drivers.scale.serial_line.SerialStream` (transport, one
owner per port, reopen by name) → a *framer* (bytes → frames or rejects, stateful across
reads, never raises on bad input) → the backend's ``_measurement`` (frame → measurement).

What a technician needs from a stream is in the errors: nothing at all on the port (wiring,
wrong port) after ``silence_s``; bytes but no valid frame (baud rate, protocol, checksum
setting) after ``garbage_frames`` rejects in a row. Each names the port and carries the last
raw bytes.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from pydantic import Field

from drivers.clock import Clock
from drivers.scale.base import (
    Backoff,
    FaultLog,
    Measurement,
    Scale,
    ScaleConfig,
    ScaleError,
)
from drivers.scale.modbus import ModbusDetector, ModbusDetectorConfig
from drivers.scale.serial_line import LinkError, SerialStream

log = logging.getLogger(__name__)

F = TypeVar("F")


@dataclass(frozen=True)
class Reject:
    """Bytes a framer threw away, and why (wrong checksum, bad digit, wrong length)."""

    reason: str
    raw: bytes


class Framer(Protocol[F]):
    def feed(self, data: bytes) -> list[F | Reject]:
        """Frames (and rejects) completed by ``data``; keeps partial frames for the next call."""


def cut_frames(
    buf: bytearray, start: int, cut: Callable[[bytearray], F | Reject | None]
) -> list[F | Reject]:
    """The framers' loop over ``buf``: throw away what precedes the next ``start`` byte
    (STX) as a "no STX" reject, then let ``cut`` take one frame or reject off the front of
    ``buf`` (which begins with ``start``); ``cut`` returns ``None`` while the bytes of the
    frame have not all come, and they wait in ``buf`` for the next read."""
    out: list[F | Reject] = []
    while True:
        at = buf.find(start)
        junk = len(buf) if at < 0 else at
        if junk:
            out.append(cut_reject(buf, junk, "no STX"))
        if not buf:
            return out
        item = cut(buf)
        if item is None:
            return out
        out.append(item)


def cut_reject(buf: bytearray, length: int, reason: str) -> Reject:
    """The first ``length`` bytes of ``buf``, cut off as a reject."""
    reject = Reject(reason, bytes(buf[:length]))
    del buf[:length]
    return reject


class SerialScaleConfig(ScaleConfig):
    """Keys of every scale on a serial port."""

    port: str = Field(
        description="serial port: /dev/ttyUSB0, /dev/serial/by-id/..., or a pyserial URL "
        "(socket://host:port for a serial server, loop:// for tests)"
    )
    baudrate: int = Field(default=9600, description="bits per second")
    bytesize: Literal[7, 8] = Field(default=8, description="data bits")
    parity: Literal["N", "E", "O"] = Field(default="N", description="N, E or O")
    stopbits: Literal[1, 2] = Field(default=1, description="stop bits")
    silence_s: float = Field(
        default=3.0, gt=0, description="no bytes this long is a fault (wiring, wrong port)"
    )
    garbage_frames: int = Field(
        default=20, ge=1, description="this many rejected frames in a row is a fault"
    )
    reconnect_max_s: float = Field(
        default=2.0, gt=0, description="longest wait between attempts to reopen the port"
    )
    detector: ModbusDetectorConfig | None = Field(
        default=None,
        description="vehicle detector on a Modbus I/O module's discrete input "
        "([lanes.scale.detector]: host/port, device_id, address)",
    )


class WeightStreamConfig(SerialScaleConfig):
    unit: Literal["kg", "t"] = Field(
        default="kg", description="the indicator's display unit (kg or t)"
    )
    stable_window_s: float = Field(
        default=0.5,
        gt=0,
        description="for protocols without a motion flag: readings within stable_band_kg "
        "for this long are stable",
    )
    stable_band_kg: float = Field(default=20.0, ge=0, description="see stable_window_s")


class StreamScale(Scale, Generic[F]):
    """A scale that reads a continuous stream; subclasses give the framer and the decoding.

    A device that talks only when asked (XK3190 tF=1) sets ``poll_request``: it is written
    every ``poll_interval_s`` before reading."""

    config: SerialScaleConfig
    poll_request: bytes = b""
    poll_interval_s = 0.1

    def __init__(self, config: SerialScaleConfig, clock: Clock | None = None, lane: int = 1):
        super().__init__(config, clock)
        self.lane = lane
        self.device = f"scale {config.id} ({config.type} on {config.port})"
        self.stream = SerialStream(
            config.port,
            self.device,
            baudrate=config.baudrate,
            bytesize=config.bytesize,
            parity=config.parity,
            stopbits=config.stopbits,
        )
        self.framer: Framer[F] = self._make_framer()
        self.backoff = Backoff(self.clock, first_s=0.2, max_s=config.reconnect_max_s)
        self.fault_log = FaultLog(log, self.device, self.clock)
        self._pending: collections.deque[Measurement] = collections.deque()
        self._last_bytes_at = self.clock.monotonic()
        self._rejects_in_row = 0
        self._next_request = 0.0
        self.rejects: collections.Counter[str] = collections.Counter()
        self.frames = 0
        self.detector: ModbusDetector | None = None
        if config.detector is not None:
            try:
                self.detector = ModbusDetector(
                    config.detector, self.clock, self.raw_tail, self.device
                )
            except BaseException:
                self.stream.release()
                raise

    def _make_framer(self) -> Framer[F]:
        raise NotImplementedError

    def _measurement(self, frame: F) -> Measurement | None:
        raise NotImplementedError

    def _fail(self, message: str, err: Exception | None = None) -> ScaleError:
        delay = self.backoff.failed()
        text = f"{message}; next attempt in {delay:.1f} s"
        self.fault_log.failure(text, self.raw_tail_hex())
        exc = ScaleError(f"{self.device}: {text}; last raw bytes: {self.raw_tail_hex()}")
        if err is not None:
            exc.__cause__ = err
        return exc

    def _recv_internal(self, timeout_s: float | None) -> Measurement | None:
        if self._pending:
            return self._pending.popleft()
        deadline = None if timeout_s is None else self.clock.monotonic() + timeout_s
        while True:
            now = self.clock.monotonic()
            remaining = None if deadline is None else deadline - now
            wait = self.backoff.wait_s()
            if wait > 0:
                if not self._sit_out_backoff(wait, remaining):
                    return None
                continue
            if self.detector is not None:
                edge = self.detector.poll()
                if edge is not None:
                    return edge
            self._ask()
            data = self._read_slice(remaining)
            if data:
                m = self._take(data)
                if m is not None:
                    return m
            elif self.clock.monotonic() - self._last_bytes_at > self.config.silence_s:
                self._last_bytes_at = self.clock.monotonic()
                raise self._fail(
                    f"no bytes for {self.config.silence_s:.1f} s: check the cable, the port "
                    "name and that the indicator's continuous output is on"
                )
            if deadline is not None and self.clock.monotonic() >= deadline:
                return None

    def _ask(self) -> None:
        """Write ``poll_request`` when it is due (devices in command mode)."""
        if not self.poll_request or self.clock.monotonic() < self._next_request:
            return
        self._next_request = self.clock.monotonic() + self.poll_interval_s
        try:
            self.stream.write(self.poll_request)
        except LinkError as err:
            raise self._link_failed(err) from err

    def _link_failed(self, err: LinkError) -> ScaleError:
        """The error to raise for a failed port; bytes from before the failure must never
        join bytes after the reopen, so the framer starts afresh."""
        self._last_bytes_at = self.clock.monotonic()
        self.framer = self._make_framer()
        return self._fail(str(err), err)

    def _sit_out_backoff(self, wait_s: float, remaining_s: float | None) -> bool:
        """Wait out the reconnect backoff; ``False`` when the timeout or the shutdown comes
        first (the caller returns ``None``)."""
        if remaining_s is not None and remaining_s < wait_s:
            if remaining_s > 0:
                self._closed.wait(remaining_s)
            return False
        return not self._closed.wait(wait_s)

    def _read_slice(self, remaining_s: float | None) -> bytes:
        """What the port gives within 0.1 s (shorter when a detector wants polling or the
        timeout is near). Raises :class:`ScaleError` when the port fails."""
        if self.detector is not None:
            slice_s = min(0.1, max(0.005, self.detector.config.poll_interval_s))
        else:
            slice_s = 0.1
        if self.poll_request:
            slice_s = min(slice_s, self.poll_interval_s)
        if remaining_s is not None:
            slice_s = max(0.0, min(slice_s, remaining_s))
        try:
            return self.stream.read(slice_s)
        except LinkError as err:
            raise self._link_failed(err) from err

    def _take(self, data: bytes) -> Measurement | None:
        """Feed ``data`` to the framer; the first measurement it completed (the others wait
        in ``_pending``), or ``None``. Raises :class:`ScaleError` after ``garbage_frames``
        rejects in a row."""
        self._last_bytes_at = self.clock.monotonic()
        self._note_raw(data)
        for item in self.framer.feed(data):
            self._queue(item)
        if self._rejects_in_row >= self.config.garbage_frames:
            self._rejects_in_row = 0
            reasons = ", ".join(f"{k} ×{v}" for k, v in self.rejects.most_common(3))
            raise self._fail(
                f"bytes arrive but no valid {self.config.type} frame ({reasons}): "
                f"check baud rate {self.config.baudrate}, data bits/parity "
                f"{self.config.bytesize}{self.config.parity}{self.config.stopbits} "
                "and the indicator's output mode"
            )
        if not self._pending:
            return None
        self.backoff.succeeded()
        self.fault_log.success()
        return self._pending.popleft()

    def _queue(self, item: F | Reject) -> None:
        """Count a reject, or queue the frame's measurement; never raises (a frame must
        never kill the reader thread)."""
        if isinstance(item, Reject):
            self.rejects[item.reason] += 1
            self._rejects_in_row += 1
            # An over-long record line is a lost vehicle record: worth a WARNING.
            level = logging.WARNING if item.reason.startswith("line too long") else logging.DEBUG
            self.fault_log.rejected(item.reason, item.raw, level)
            return
        self._rejects_in_row = 0
        self.frames += 1
        try:
            m = self._measurement(item)
        except Exception as err:  # a frame must never kill the reader thread
            self.rejects["decode error"] += 1
            self.fault_log.failure(f"cannot decode {item!r}: {err}")
            return
        if m is not None:
            self._pending.append(m)

    def _shutdown_internal(self) -> None:
        self.stream.release()
        if self.detector is not None:
            self.detector.release()


class Stability:
    """Stable when every reading of the last ``window_s`` lies within ``band_kg``.

    For protocols that carry no motion flag (XK3190 continuous mode).
    """

    def __init__(self, window_s: float, band_kg: float) -> None:
        self.window_s = window_s
        self.band_kg = band_kg
        self._history: collections.deque[tuple[float, float]] = collections.deque()

    def update(self, t: float, kg: float) -> bool:
        h = self._history
        h.append((t, kg))
        while h and t - h[0][0] > self.window_s:
            h.popleft()
        if t - h[0][0] < self.window_s * 0.8:
            # Not enough history yet: a window must be (nearly) full to call it stable.
            return False
        values = [v for _, v in h]
        return max(values) - min(values) <= self.band_kg
