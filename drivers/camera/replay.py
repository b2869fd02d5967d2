"""Replay camera: photos from a folder instead of a live sensor.

Two modes. ``road``: the photo of the truck the simulated road put on this lane at the trigger
time (the simulated station's camera). ``cycle``: the folder's pictures in name order, one per
capture (tests and field demos of the plate reader).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field

from drivers import traffic
from drivers.camera.base import Camera, CameraConfig, CameraError, Frame
from drivers.camera.clip import simulated_frames
from drivers.clock import Clock
from drivers.paths import ConfigPath

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


class ReplayCameraConfig(CameraConfig):
    mode: Literal["road", "cycle"] = Field(default="road", description="road or cycle")
    folder: ConfigPath = Field(default="", description="folder of pictures (cycle mode)")
    road: str = Field(default="default", description="simulated road name (road mode)")
    clip_fps: float = Field(
        default=5.0, gt=0, le=30, description="frames per second of the simulated clip"
    )


class ReplayCamera(Camera):
    Config = ReplayCameraConfig
    config: ReplayCameraConfig

    def __init__(self, config: ReplayCameraConfig, clock: Clock | None = None, lane: int = 1):
        super().__init__(config, clock, lane)
        self._files: list[Path] = []
        self._next = 0
        if config.mode == "cycle":
            folder = Path(config.folder)
            if not folder.is_dir():
                raise CameraError(f"camera {config.id}: replay folder {folder} does not exist")
            self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            if not self._files:
                raise CameraError(f"camera {config.id}: no .jpg/.png pictures in {folder}")

    gives_clips = True

    def _photo_at(self, at: datetime, *, advance: bool) -> Path | None:
        if self.config.mode == "road":
            truck = traffic.road(self.config.road).truck_at(self.lane, at)
            return None if truck is None else truck.photo
        index = self._next if advance else max(0, self._next - 1)
        if advance:
            self._next += 1
        return self._files[index % len(self._files)]

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as err:
            raise CameraError(f"camera {self.id}: cannot read {path}: {err}") from err

    def _clip_internal(self, start: datetime, end: datetime) -> tuple[Frame, ...]:
        """The simulated twin of a live ring buffer: the passage's photo as a slow pan."""
        at = start + timedelta(seconds=self.config.clip_before_s)
        path = self._photo_at(at, advance=False)
        if path is None:
            return ()
        data = self._read(path)
        try:
            frames = simulated_frames(data, start=start, end=end, fps=self.config.clip_fps)
        except OSError as err:  # Pillow: not a picture it can decode
            raise CameraError(f"camera {self.id}: cannot make a clip of {path}: {err}") from err
        return tuple(
            Frame(self.id, self.role, self.lane, t, jpeg, source=str(path)) for t, jpeg in frames
        )

    def _capture_internal(self, at: datetime, count: int) -> list[Frame]:
        path = self._photo_at(at, advance=True)
        if path is None:
            return []
        data = self._read(path)
        return [
            Frame(
                camera_id=self.id,
                role=self.role,
                lane=self.lane,
                captured_at=at,
                jpeg=data,
                source=str(path),
            )
        ][:count]
