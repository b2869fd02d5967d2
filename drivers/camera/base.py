"""The camera contract.

A weighing triggers :meth:`Camera.capture` with the time the vehicle was measured; the camera
answers with the frames that best show that vehicle (live backends keep a ring buffer of recent
frames so they can return pictures taken just before the trigger).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.clock import Clock, SystemClock


@dataclass(frozen=True)
class Frame:
    """One camera picture, kept as the JPEG bytes that become evidence.

    ``source`` names where a replayed picture came from (a file path); live cameras leave it
    ``None``. ``pixels`` is the decoded picture (a BGR ``uint8`` array, height × width × 3) when
    the camera already has it, so the plate reader need not decode the JPEG again; it is not
    part of the evidence and not compared.
    """

    camera_id: str
    role: str  # front | rear | side | overview
    lane: int
    captured_at: datetime
    jpeg: bytes
    source: str | None = None
    pixels: Any = field(default=None, compare=False, hash=False, repr=False)


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

    def shutdown(self) -> None:
        """Release the device. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.health.state = "closed"
        self._shutdown_internal()

    def _shutdown_internal(self) -> None:  # noqa: B027 - optional hook
        pass
