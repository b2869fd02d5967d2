"""Live cameras: a grabber thread, a ring buffer of recent frames, reconnection by itself.

A weighing is known only after the truck has crossed the scale, by which time the camera has
long seen its front plate. So a live camera never waits for the trigger to take a picture: a
named background thread (``camera-<id>``) reads the sensor or stream continuously and keeps the
last ``buffer_s`` seconds, ``buffer_fps`` frames a second, as JPEG in a bounded ring. A capture
for a weighing at ``at`` then picks the frames nearest ``at`` — a little before and after —
waiting at most ``capture_timeout_s`` for frames that are still to come.

When the device drops (USB unplugged, RTSP stream gone, network camera rebooting) the grabber
closes it and reopens it with exponential backoff (``reconnect_min_s`` doubling up to
``reconnect_max_s``). The first failure is logged at ERROR, repeats at DEBUG, the recovery at
WARNING; ``health`` tells the heartbeat the state. A capture while the camera is down raises
:class:`CameraError`, which the station turns into a record flagged ``no_image`` / ``no_plate``.

Backends implement three hooks: :meth:`LiveCamera._open`, :meth:`LiveCamera._grab` (one BGR
frame or ``None`` when the stream failed) and :meth:`LiveCamera._release`.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from abc import abstractmethod
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from drivers.camera.base import Camera, CameraConfig, CameraError, Frame
from drivers.clock import Clock

log = logging.getLogger(__name__)

BGR = npt.NDArray[np.uint8]


class LiveCameraConfig(CameraConfig):
    buffer_s: float = Field(
        default=4.0,
        gt=0,
        le=60,
        description="seconds of recent frames kept for a trigger (at least clip_before_s + "
        "clip_after_s when clips are on)",
    )
    buffer_fps: float = Field(
        default=5.0, gt=0, le=60, description="frames per second kept in the buffer"
    )
    jpeg_quality: int = Field(default=90, ge=30, le=100, description="JPEG quality of frames")
    max_gap_s: float = Field(
        default=1.0,
        gt=0,
        description="frames further than this from the trigger time are not used",
    )
    capture_timeout_s: float = Field(
        default=2.0, ge=0, description="how long a capture waits for frames still to come"
    )
    reconnect_min_s: float = Field(
        default=1.0, gt=0, description="first wait before reopening a dropped camera"
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, description="longest wait between reopen attempts"
    )
    failures_to_reconnect: int = Field(
        default=5, ge=1, description="failed reads in a row that count as a dropped camera"
    )


class LiveCamera(Camera):
    """Base of the live backends (OpenCV, picamera2); see the module docstring."""

    config: LiveCameraConfig

    def __init__(self, config: LiveCameraConfig, clock: Clock | None = None, lane: int = 1):
        super().__init__(config, clock, lane)
        # the ring also holds a whole clip (clip_before_s + clip_after_s) when clips are on
        keep_s = max(
            config.buffer_s, config.clip_before_s + config.clip_after_s if config.clip else 0
        )
        size = max(2, math.ceil(keep_s * config.buffer_fps) + 1)
        self._ring: collections.deque[Frame] = collections.deque(maxlen=size)
        self._cond = threading.Condition()
        self._last_kept_mono = -math.inf
        self.connects = 0  # successful opens (the first one included)
        self._thread = threading.Thread(
            target=self._run_guarded, name=f"camera-{config.id}", daemon=True
        )

    def start(self) -> LiveCamera:
        """Start the grabber thread (returns self). Idempotent."""
        if not self._thread.is_alive() and not self._closed.is_set():
            self._thread.start()
        return self

    # -- backend hooks -------------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Open the device; raise :class:`CameraError` (naming it) when it cannot be opened."""

    @abstractmethod
    def _grab(self) -> BGR | None:
        """The next frame (BGR), or ``None`` when the read failed."""

    @abstractmethod
    def _release(self) -> None:
        """Close the device. Must not raise."""

    def _pace_s(self) -> float:
        """Seconds to wait between grabs (file replays run at their own frame rate)."""
        return 0.0

    # -- grabber thread ------------------------------------------------------------------------
    def _run_guarded(self) -> None:
        try:
            self._run()
        except Exception:  # never a silent death: the heartbeat shows the camera as failed
            log.exception("camera %s: grabber thread stopped by an unexpected error", self.id)
            self.health.state = "fault"
            self._notify()

    def _run(self) -> None:
        backoff = self.config.reconnect_min_s
        down_since_logged = False
        while not self._closed.is_set():
            try:
                self._open()
            except CameraError as err:
                self._fault(str(err), first=not down_since_logged)
                down_since_logged = True
                if self._closed.wait(backoff):
                    break
                backoff = min(backoff * 2, self.config.reconnect_max_s)
                continue
            except Exception as err:  # a vendor library failing in an unforeseen way
                self._fault(f"camera {self.id}: cannot open: {err!r}", first=not down_since_logged)
                down_since_logged = True
                if self._closed.wait(backoff):
                    break
                backoff = min(backoff * 2, self.config.reconnect_max_s)
                continue
            if down_since_logged:
                log.warning("camera %s: reconnected", self.id)
            down_since_logged = False
            backoff = self.config.reconnect_min_s
            self.health.state = "ok"
            self.connects += 1
            self._notify()
            try:
                self._grab_until_failure()
            finally:
                self._release()
            if not self._closed.is_set():
                self._fault(f"camera {self.id}: stream lost, reopening", first=True)
                down_since_logged = True
                if self._closed.wait(backoff):
                    break

    def _grab_until_failure(self) -> None:
        failures = 0
        pace = self._pace_s()
        while not self._closed.is_set():
            try:
                image = self._grab()
            except Exception as err:  # one bad read must not kill the thread
                log.debug("camera %s: read failed: %r", self.id, err)
                image = None
            if image is None:
                failures += 1
                if failures >= self.config.failures_to_reconnect:
                    return
                continue
            try:
                self._keep(image)
            except Exception as err:  # an odd frame (format, size) must not kill the thread
                log.debug("camera %s: cannot store a frame: %r", self.id, err)
                failures += 1
                if failures >= self.config.failures_to_reconnect:
                    return
                continue
            failures = 0
            if pace and self._closed.wait(pace):
                return

    def _keep(self, image: BGR) -> None:
        import cv2

        mono = self.clock.monotonic()
        if mono - self._last_kept_mono < 1.0 / self.config.buffer_fps:
            return
        self._last_kept_mono = mono
        captured_at = self.clock.now()
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            log.debug("camera %s: JPEG encoding failed", self.id)
            return
        frame = Frame(
            camera_id=self.id,
            role=self.role,
            lane=self.lane,
            captured_at=captured_at,
            jpeg=jpeg.tobytes(),
        )
        with self._cond:
            self._ring.append(frame)
            self._cond.notify_all()
        self.health.state = "ok"
        self.health.last_good_at = captured_at

    def _fault(self, message: str, *, first: bool) -> None:
        self.health.state = "reconnecting"
        self.health.errors += 1
        self.health.last_error = message
        if first:
            log.error("%s", message)
        else:
            log.debug("%s", message)
        self._notify()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``predicate()`` holds, re-checked on every frame and state change
        (tests, probes). False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout=timeout_s)

    # -- capture -------------------------------------------------------------------------------
    def recent(self) -> list[Frame]:
        """A copy of the ring buffer, oldest first."""
        with self._cond:
            return list(self._ring)

    def wait_for_frames(self, count: int, timeout_s: float) -> bool:
        """Block until the ring holds ``count`` frames (tests, probes). False on timeout."""
        return self.wait_until(lambda: len(self._ring) >= count, timeout_s)

    def _capture_internal(self, at: datetime, count: int) -> list[Frame]:
        if not self._thread.is_alive() and not self._closed.is_set():
            self.start()
        gap = timedelta(seconds=self.config.max_gap_s)
        wanted_until = at + gap / 2

        def enough() -> bool:
            return bool(self._ring) and self._ring[-1].captured_at >= wanted_until

        with self._cond:
            self._cond.wait_for(enough, timeout=self.config.capture_timeout_s)
            near = [f for f in self._ring if abs(f.captured_at - at) <= gap]
        if not near:
            raise CameraError(
                f"camera {self.id} ({self.role}, lane {self.lane}): no frame within "
                f"{self.config.max_gap_s} s of {at.isoformat()} "
                f"(state {self.health.state}; last error: {self.health.last_error or 'none'})"
            )
        near.sort(key=lambda f: abs(f.captured_at - at))
        return sorted(near[:count], key=lambda f: f.captured_at)

    gives_clips = True

    def _clip_internal(self, start: datetime, end: datetime) -> tuple[Frame, ...]:
        """The ring's frames in ``[start, end]``, waiting (at most ``capture_timeout_s``) for
        the frames still to come (the ring is sized to hold a whole clip)."""
        with self._cond:
            self._cond.wait_for(
                lambda: bool(self._ring) and self._ring[-1].captured_at >= end,
                timeout=self.config.capture_timeout_s,
            )
            return tuple(f for f in self._ring if start <= f.captured_at <= end)

    def _shutdown_internal(self) -> None:
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


def describe_source(source: Any) -> str:
    """A source for log lines, without the password of an RTSP URL."""
    text = str(source)
    if "://" in text and "@" in text:
        scheme, rest = text.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return text
