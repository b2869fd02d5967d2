"""OpenCV camera: V4L2 devices, RTSP/HTTP streams of IP cameras, and video files.

``source`` picks the kind:

* ``"0"``, ``"/dev/video0"`` – a V4L2 device (USB or CSI-to-USB cameras on industrial PCs);
* ``"rtsp://user:pass@192.168.1.64:554/Streaming/Channels/101"`` – an IP camera (FFmpeg);
* a file path – a recorded video, replayed at its own frame rate and looped (tests, demos).

Quirks handled here: an RTSP stream that stalls returns ``False`` from ``read()`` instead of
raising, so failed reads are counted and the stream is reopened after a few
(``failures_to_reconnect``); OpenCV keeps a few frames buffered for RTSP, which would make the
ring lag the trigger, so the buffer is set to one frame where the backend allows it; the end of a
video file is treated like a dropped stream, which reopens (loops) it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from pydantic import Field

from drivers.camera.base import CameraError
from drivers.camera.live import BGR, LiveCamera, LiveCameraConfig, describe_source
from drivers.clock import Clock
from drivers.paths import ConfigPath


class OpenCvCameraConfig(LiveCameraConfig):
    source: ConfigPath = Field(
        description="V4L2 device index or path (0, /dev/video0), rtsp:// or http:// URL, "
        "or a video file"
    )
    width: int = Field(default=0, ge=0, description="requested frame width, px (0: device default)")
    height: int = Field(
        default=0, ge=0, description="requested frame height, px (0: device default)"
    )
    fourcc: str = Field(
        default="", description="V4L2 pixel format, e.g. MJPG (empty: device default)"
    )
    open_timeout_s: float = Field(
        default=10.0, gt=0, description="how long opening a network stream may take"
    )


class OpenCvCamera(LiveCamera):
    Config = OpenCvCameraConfig
    config: OpenCvCameraConfig

    def __init__(self, config: OpenCvCameraConfig, clock: Clock | None = None, lane: int = 1):
        try:
            import cv2  # noqa: F401
        except ImportError as err:
            raise CameraError(
                f"camera {config.id}: the opencv camera needs opencv-python-headless "
                f"(the 'camera' extra): {err}"
            ) from err
        super().__init__(config, clock, lane)
        self._cap: Any = None
        self._is_file = not config.source.isdigit() and Path(config.source).suffix != ""
        self._is_file = self._is_file and "://" not in config.source
        self._is_file = self._is_file and not config.source.startswith("/dev/")
        self._fps = 25.0

    def _open(self) -> None:
        import cv2

        source = self.config.source
        where = describe_source(source)
        if self._is_file and not Path(source).is_file():
            raise CameraError(f"camera {self.id}: video file {source} does not exist")
        if source.isdigit():
            cap = cv2.VideoCapture(int(source), cv2.CAP_V4L2)
        elif source.startswith("/dev/"):
            cap = cv2.VideoCapture(source, cv2.CAP_V4L2)
        elif "://" in source:
            timeout_ms = int(self.config.open_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms]
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"camera {self.id}: cannot open {where}")
        if self.config.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.config.fourcc[:4]))
        if self.config.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        if self.config.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        if not self._is_file:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if 1.0 <= fps <= 120.0 else 25.0
        self._cap = cap

    def _pace_s(self) -> float:
        return 1.0 / self._fps if self._is_file else 0.0

    def _grab(self) -> BGR | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok or image is None:
            return None
        frame: BGR = image
        return frame

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            # Releasing a dead stream may fail; there is nothing left to do then.
            with contextlib.suppress(Exception):
                cap.release()
