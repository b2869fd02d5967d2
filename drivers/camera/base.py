"""The camera contract.

A weighing triggers :meth:`Camera.capture` with the time the vehicle was measured; the camera
answers with the frames that best show that vehicle (live backends keep a ring buffer of recent
frames so they can return pictures taken just before the trigger).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.clock import Clock, SystemClock


@dataclass(frozen=True)
class OnboardRead:
    """A plate the camera itself read (an ITS camera's on-board ANPR), as the camera sent it.

    ``confidence`` and ``char_confidences`` are 0..1 (the vendors send percentages); the plate
    reader checks it like any other reading before it becomes a plate
    (:func:`drivers.plate.base.onboard_plate_reads`).
    """

    text: str
    color: str  # blue | yellow | green | white | black | unknown
    confidence: float
    char_confidences: tuple[float, ...] = ()
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in the frame, pixels


@dataclass(frozen=True)
class Frame:
    """One camera picture, kept as the JPEG bytes that become evidence.

    ``source`` names where a replayed picture came from (a file path); live cameras leave it
    ``None``. ``pixels`` is the decoded picture (a BGR ``uint8`` array, height × width × 3) when
    the camera already has it, so the plate reader need not decode the JPEG again; it is not
    part of the evidence and not compared. ``onboard`` holds the plates an ITS camera read on
    board and sent with the picture.
    """

    camera_id: str
    role: str  # front | rear | side | overview
    lane: int
    captured_at: datetime
    jpeg: bytes
    source: str | None = None
    pixels: Any = field(default=None, compare=False, hash=False, repr=False)
    onboard: tuple[OnboardRead, ...] = ()


@dataclass(frozen=True)
class Clip:
    """A short video of a passage: the camera's own JPEG frames, in order, unchanged.

    Kept as the frames the camera already encoded (no re-encoding: on a Raspberry Pi that would
    cost a core); :mod:`drivers.camera.clip` remuxes them into one Motion-JPEG stream.
    ``start`` / ``end`` are the times of the first and last frame.
    """

    camera_id: str
    role: str
    lane: int
    start: datetime
    end: datetime
    frames: tuple[Frame, ...]


class CameraError(Exception):
    """A camera could not deliver a picture. Names the camera."""


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="backend: replay, opencv, picamera2")
    id: str = Field(default="cam-1", description="camera id written into every record")
    role: Literal["front", "rear", "side", "overview"] = Field(
        default="front",
        description="what it shows: front (plate of the tractor), rear (plate of the trailer), "
        "side (axles, load), overview",
    )
    clip: bool = Field(
        default=True,
        description="give a video clip of each passage (cameras that cannot are named in the "
        "record's evidence.missing as video)",
    )
    clip_before_s: float = Field(
        default=2.0, ge=0, le=30, description="seconds of video before the weighing time"
    )
    clip_after_s: float = Field(
        default=2.0, ge=0, le=30, description="seconds of video after the weighing time"
    )


@dataclass
class CameraHealth:
    state: str = "starting"
    last_good_at: datetime | None = None
    last_error: str = ""
    errors: int = 0


class Camera(ABC):
    Config: ClassVar[type[CameraConfig]] = CameraConfig

    def __init__(self, config: CameraConfig, clock: Clock | None = None, lane: int = 1) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.lane = lane
        self.health = CameraHealth()
        self._closed = threading.Event()

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def role(self) -> str:
        return self.config.role

    #: Whether this backend can give a video clip of a passage (:meth:`clip`).
    gives_clips: ClassVar[bool] = False

    def capture(self, at: datetime, count: int = 1) -> list[Frame]:
        """Up to ``count`` frames showing the vehicle measured at ``at``.

        Raises :class:`CameraError` when the camera cannot deliver.
        """
        if self._closed.is_set():
            raise CameraError(f"camera {self.id}: already shut down")
        try:
            frames = self._capture_internal(at, count)
        except CameraError as err:
            self.health.state = "fault"
            self.health.errors += 1
            self.health.last_error = str(err)
            raise
        if frames:
            self.health.state = "ok"
            self.health.last_good_at = frames[-1].captured_at
        return frames

    @abstractmethod
    def _capture_internal(self, at: datetime, count: int) -> list[Frame]: ...

    def clip(self, at: datetime) -> Clip:
        """The frames from ``clip_before_s`` before to ``clip_after_s`` after ``at``.

        Raises :class:`CameraError` (naming the camera) when there is no clip to give: the
        backend cannot give clips, the camera is down, or no frame falls in the window.
        """
        if self._closed.is_set():
            raise CameraError(f"camera {self.id}: already shut down")
        if not self.gives_clips:
            raise CameraError(f"camera {self.id} ({self.role}): this backend gives no clips")
        frames = self._clip_internal(
            at - timedelta(seconds=self.config.clip_before_s),
            at + timedelta(seconds=self.config.clip_after_s),
        )
        if not frames:
            raise CameraError(
                f"camera {self.id} ({self.role}, lane {self.lane}): no frame between "
                f"{self.config.clip_before_s} s before and {self.config.clip_after_s} s after "
                f"{at.isoformat()} for the clip"
            )
        return Clip(
            self.id, self.role, self.lane, frames[0].captured_at, frames[-1].captured_at, frames
        )

    def _clip_internal(self, start: datetime, end: datetime) -> tuple[Frame, ...]:
        """The frames captured in ``[start, end]``, oldest first (backends with clips)."""
        raise CameraError(f"camera {self.id}: this backend gives no clips")

    def shutdown(self) -> None:
        """Release the device. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.health.state = "closed"
        self._shutdown_internal()

    def _shutdown_internal(self) -> None:  # noqa: B027 - optional hook
        pass
