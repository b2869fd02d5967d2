"""Replay camera: photos from a folder instead of a live sensor.

Two modes. ``road``: the photo of the truck the simulated road put on this lane at the trigger
time (the simulated station's camera). ``cycle``: the folder's pictures in name order, one per
capture (tests and field demos of the plate reader).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from drivers import traffic
from drivers.camera.base import Camera, CameraConfig, CameraError, Frame
from drivers.clock import Clock
from drivers.paths import ConfigPath

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


class ReplayCameraConfig(CameraConfig):
    mode: Literal["road", "cycle"] = Field(default="road", description="road or cycle")
    folder: ConfigPath = Field(default="", description="folder of pictures (cycle mode)")
    road: str = Field(default="default", description="simulated road name (road mode)")


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

    def _capture_internal(self, at: datetime, count: int) -> list[Frame]:
        if self.config.mode == "road":
            truck = traffic.road(self.config.road).truck_at(self.lane, at)
            if truck is None:
                return []
            path = truck.photo
        else:
            path = self._files[self._next % len(self._files)]
            self._next += 1
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CameraError(f"camera {self.id}: cannot read {path}: {err}") from err
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
