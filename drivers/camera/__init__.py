"""Camera drivers: picamera2, OpenCV (V4L2 / RTSP / files), and a replay source."""

from drivers.camera.base import Camera, CameraConfig, CameraError
from drivers.registry import Registry

CAMERAS: Registry[Camera] = Registry(
    "camera",
    {
        "replay": "drivers.camera.replay:ReplayCamera",
        "opencv": "drivers.camera.opencv:OpenCvCamera",
        "picamera2": "drivers.camera.picamera2:Picamera2Camera",
    },
)

__all__ = ["CAMERAS", "Camera", "CameraConfig", "CameraError"]
