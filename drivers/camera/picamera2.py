"""Raspberry Pi camera through picamera2 (libcamera): Camera Module 3, HQ camera, global shutter.

picamera2 is imported only when this backend is chosen. It cannot come from PyPI alone: it needs
libcamera's Python bindings, which Raspberry Pi OS ships as the package ``python3-picamera2``, so
on a Pi the agent runs in a virtualenv created with ``--system-site-packages``. Elsewhere,
choosing ``type = "picamera2"`` fails at construction with a message that says so; importing
the agent never does.

Frames are taken from the ``main`` stream in ``RGB888`` format, which libcamera lays out as B, G,
R bytes — the order OpenCV expects — so no conversion is needed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import Field

from drivers.camera.base import CameraError
from drivers.camera.live import BGR, LiveCamera, LiveCameraConfig
from drivers.clock import Clock


class Picamera2CameraConfig(LiveCameraConfig):
    camera_num: int = Field(default=0, ge=0, description="libcamera camera index (0: first)")
    width: int = Field(default=1920, gt=0, description="frame width, px")
    height: int = Field(default=1080, gt=0, description="frame height, px")
    exposure_us: int = Field(
        default=0,
        ge=0,
        description="fixed exposure time, µs (0: automatic); short exposures freeze moving plates",
    )


def picamera2_missing_reason() -> str | None:
    """Why picamera2 cannot be used here, or ``None`` when it can be imported."""
    try:
        found = importlib.util.find_spec("picamera2") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return (
            "the Python package picamera2 is not installed: on Raspberry Pi OS install "
            "'python3-picamera2' (apt) and run the agent from a virtualenv created with "
            "--system-site-packages; on other machines use type = 'opencv'"
        )
    return None


class Picamera2Camera(LiveCamera):
    Config = Picamera2CameraConfig
    config: Picamera2CameraConfig

    def __init__(self, config: Picamera2CameraConfig, clock: Clock | None = None, lane: int = 1):
        reason = picamera2_missing_reason()
        if reason:
            raise CameraError(f"camera {config.id}: {reason}")
        super().__init__(config, clock, lane)
        self._cam: Any = None

    def _open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as err:  # libcamera bindings missing behind an installed picamera2
            raise CameraError(f"camera {self.id}: picamera2 cannot be imported: {err}") from err
        try:
            cam = Picamera2(self.config.camera_num)
            video = cam.create_video_configuration(
                main={"size": (self.config.width, self.config.height), "format": "RGB888"},
                buffer_count=4,
            )
            cam.configure(video)
            if self.config.exposure_us:
                cam.set_controls({"ExposureTime": self.config.exposure_us, "AeEnable": False})
            cam.start()
        except Exception as err:  # libcamera raises RuntimeError, IndexError, OSError...
            raise CameraError(
                f"camera {self.id}: cannot open Pi camera {self.config.camera_num}: {err}"
            ) from err
        self._cam = cam

    def _grab(self) -> BGR | None:
        if self._cam is None:
            return None
        image: BGR = self._cam.capture_array("main")
        return image

    def _release(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            cam.stop()
            cam.close()
        except Exception:  # the device may be gone already
            pass
