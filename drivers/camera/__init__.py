"""Camera drivers: picamera2, OpenCV (V4L2 / RTSP / files), Hikvision ITS cameras (ISAPI ANPR
push), and a replay source."""

from drivers.camera.base import Camera, CameraConfig, CameraError
from drivers.registry import Registry

CAMERAS: Registry[Camera] = Registry(
    "camera",
    {
        "replay": "drivers.camera.replay:ReplayCamera",
        "opencv": "drivers.camera.opencv:OpenCvCamera",
        "picamera2": "drivers.camera.picamera2:Picamera2Camera",
        "isapi-anpr": "drivers.camera.isapi:IsapiAnprCamera",
        "isapi-anpr-simulated": "drivers.camera.isapi_twin:SimulatedIsapiAnprCamera",
    },
)

__all__ = ["CAMERAS", "Camera", "CameraConfig", "CameraError"]
