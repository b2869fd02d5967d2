"""Video clips of a passage (DESIGN §4a ``videos``): the camera's own JPEG frames remuxed into
Motion-JPEG, sealed, verified, delivered before the record, evicted first, never a lost record."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from platform_sim import PlatformSim

from agent.commands.verify import verify_data_dir
from agent.config import StationConfig
from agent.domain import Clip, Frame, VerdictStatus
from agent.pipeline.capture import capture_clips
from agent.station.supervisor import Station
from agent.store.clips import content_type
from agent.store.evidence import EvidenceConfig
from agent.store.retention import MB, Retention
from drivers.camera.clip import remux, split
from drivers.camera.opencv import OpenCvCamera, OpenCvCameraConfig
from drivers.camera.replay import ReplayCamera, ReplayCameraConfig
from drivers.clock import ManualClock, SystemClock
from tests.crash_writer import CTX, T0, jpeg, make_event, make_verdict, open_store
from tests.test_camera import _pictures, write_video
from tests.test_end_to_end import run_station, station_config
from tests.test_retention import FakeDisk, ack, du

from .conftest import Mosquitto, uplink_config, wait_until


def _clip(n: int, size: int = 0) -> Clip:
    frames = tuple(
        Frame("cam-front", "front", 1, T0 + timedelta(seconds=i / 5), jpeg(i, size))
        for i in range(n)
    )
    return Clip("cam-front", "front", 1, frames[0].captured_at, frames[-1].captured_at, frames)


# -- remuxing ------------------------------------------------------------------------------------


def test_remux_keeps_every_frame_byte_for_byte_and_splits_back() -> None:
    clip = _clip(7)
    stream = remux(clip)
    assert stream.data == b"".join(f.jpeg for f in clip.frames)  # no re-encoding
    parts = split(stream.data, stream.frame_bytes)
    assert parts == [f.jpeg for f in clip.frames]
    for part in parts:
        assert part[:2] == b"\xff\xd8" and part[-2:] == b"\xff\xd9"
        with Image.open(io.BytesIO(part)) as im:
            assert im.format == "JPEG"
    with pytest.raises(ValueError, match="add up"):
        split(stream.data[:-1], stream.frame_bytes)


def test_a_clip_over_its_size_limit_keeps_every_kth_frame_and_both_ends() -> None:
    clip = _clip(21, size=10_000)
    stream = remux(clip, max_bytes=60_000)
    assert len(stream.data) <= 60_000
    assert stream.frames[0] is clip.frames[0] and stream.frames[-1] is clip.frames[-1]
    assert 2 <= len(stream.frames) < 21


# -- cameras -------------------------------------------------------------------------------------


@pytest.fixture
def live_camera(tmp_path: Path) -> Iterator[OpenCvCamera]:
    video = write_video(tmp_path / "lane1.avi", _pictures((320, 240)), frames=200, fps=25.0)
    config = OpenCvCameraConfig(
        type="opencv",
        id="cam-front",
        role="front",
        source=str(video),
        buffer_fps=25,
        buffer_s=2,
        clip_before_s=0.4,
        clip_after_s=0.2,
        capture_timeout_s=3.0,
    )
    cam = OpenCvCamera(config, SystemClock(), lane=1).start()
    yield cam
    cam.shutdown()


def test_a_live_cameras_clip_is_its_ring_frames_unchanged(live_camera: OpenCvCamera) -> None:
    assert live_camera.wait_for_frames(15, timeout_s=20)
    at = live_camera.recent()[-3].captured_at
    clip = live_camera.clip(at)
    ring = {f.captured_at: f.jpeg for f in live_camera.recent()}
    assert len(clip.frames) >= 3
    for f in clip.frames:
        assert at - timedelta(seconds=0.4) <= f.captured_at <= at + timedelta(seconds=0.2)
        assert ring.get(f.captured_at, f.jpeg) == f.jpeg  # the very bytes the camera kept
    assert (clip.start, clip.end) == (clip.frames[0].captured_at, clip.frames[-1].captured_at)


def test_a_camera_that_cannot_give_a_clip_is_a_fault_not_an_exception(tmp_path: Path) -> None:
    config = OpenCvCameraConfig(
        type="opencv",
        id="cam-dead",
        role="rear",
        source=str(tmp_path / "missing.avi"),
        capture_timeout_s=0.2,
        reconnect_min_s=0.05,
    )
    cam = OpenCvCamera(config, SystemClock(), lane=1).start()
    try:
        clips, faults = capture_clips([cam], SystemClock().now())
    finally:
        cam.shutdown()
    assert clips == []
    assert len(faults) == 1 and "cam-dead" in faults[0] and "clip" in faults[0]


def test_the_replay_camera_gives_a_simulated_clip(shared_dir: Path) -> None:
    folder = shared_dir / "fixtures" / "plates" / "full"
    config = ReplayCameraConfig(
        type="replay", id="cam-r", role="side", mode="cycle", folder=str(folder)
    )
    cam = ReplayCamera(config, ManualClock(T0), lane=1)
    cam.capture(T0)
    clip = cam.clip(T0)
    assert len(clip.frames) == 21  # 4 s at 5 frames/s, both ends
    assert clip.start == T0 - timedelta(seconds=2) and clip.end == T0 + timedelta(seconds=2)
    with Image.open(io.BytesIO(clip.frames[10].jpeg)) as im:
        assert im.format == "JPEG"


# -- the store -------------------------------------------------------------------------------------


def test_a_clip_is_sealed_hashed_and_verified_like_a_photo(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    try:
        event = make_event(1, clip_frames=6)
        stored = store.commit(event, make_verdict(), CTX)
    finally:
        db.close()
    (video,) = stored.record["videos"]
    assert video["name"] == "front.mjpeg" and video["content_type"] == "video/x-motion-jpeg"
    assert video["frames"] == 6 and video["camera_id"] == "cam-front"
    path = next((tmp_path / "images").rglob("*.front.mjpeg"))
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == video["sha256"] and len(data) == video["bytes"]
    assert split(data, video["frame_bytes"]) == [f.jpeg for f in event.clips[0].frames]
    assert video["start"] == event.clips[0].start.isoformat(timespec="milliseconds")
    assert verify_data_dir(tmp_path)["ok"]

    path.write_bytes(data[:-10] + b"\x00" * 10)  # a clip altered after sealing
    result = verify_data_dir(tmp_path)
    assert not result["ok"]
    assert "front.mjpeg altered" in json.dumps(result["problems"])


def test_clips_of_delivered_passages_are_evicted_before_their_photos(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    try:
        ids = [
            store.commit(
                make_event(n, image_bytes=100_000, clip_frames=4),
                make_verdict(VerdictStatus.WITHIN_LIMIT),
                CTX,
            ).event_id
            for n in range(3)
        ]
        ack(db, *ids)
        db.checkpoint()  # the WAL of the commits is given back first: not what is short
        disk = FakeDisk(du(tmp_path) + 2 * MB - 300_000)  # 300 KB short of the watermark
        retention = Retention(
            db,
            store,
            EvidenceConfig(min_free_mb=2, reserve_free_mb=0),
            ManualClock(T0),
            station_id=CTX.station_id,
            disk_usage=disk,
        )
        report = retention.check()
        assert set(report.by_class) == {"passage_clips"}
        for event_id in ids:
            for name, _, path in store.image_files(event_id):
                assert path is not None or name.endswith(".mjpeg"), f"{name} evicted first"
        assert store.image_files(ids[0])[0][2] is not None  # photos of the oldest stay
        assert verify_data_dir(tmp_path)["ok"]
    finally:
        db.close()


def test_clip_travels_with_its_own_content_type() -> None:
    assert content_type("front.mjpeg") == "video/x-motion-jpeg"
    assert content_type("front.jpg") == "image/jpeg"


# -- the whole station through Mosquitto and the platform simulator --------------------------------

__all__ = ["run_station"]  # the station fixture of the end-to-end tests


def test_clips_reach_the_platform_intact_before_it_acks_and_the_heartbeat_has_the_site(
    broker: Mosquitto,
    make_sim: Callable[..., PlatformSim],
    run_station: Callable[[StationConfig], Station],
) -> None:
    n = 3
    cfg = station_config(broker, n, per_min=300)
    sim = make_sim(uplink_config(broker))
    st = run_station(cfg)
    conn = sqlite3.connect(f"file:{st.data_dir / 'station.db'}?mode=ro", uri=True)

    def acked() -> int:
        return int(
            conn.execute(
                "SELECT count(*) FROM outbox WHERE kind = 'event' AND acked_at IS NOT NULL"
            ).fetchone()[0]
        )

    try:
        wait_until(lambda: acked() == n, 60, f"{n} records with clips acknowledged")
        records = [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM records")]
    finally:
        conn.close()
    arrived = {
        (e, name): sha for e, name, sha in sim.query("SELECT event_id, name, sha256 FROM images")
    }
    for rec in records:
        assert {v["role"] for v in rec["videos"]} == {"front", "side", "rear"}
        for video in rec["videos"]:
            assert arrived[(rec["event_id"], video["name"])] == video["sha256"]
        assert "video" not in rec["evidence"]["missing"]
        assert set(rec["evidence"]["missing"]) <= {"clock_sync"}  # the host's clock, not ours
        assert rec["site"]["stake"] == "K1234+500"
        assert {i["role"] for i in rec["images"]} == {"front", "side", "rear", "composite"}
    wait_until(lambda: sim.count("SELECT count(*) FROM heartbeats") > 0, 30, "a heartbeat")
    beat = json.loads(sim.query("SELECT payload FROM heartbeats LIMIT 1")[0][0])
    assert beat["site"]["stake"] == "K1234+500" and beat["site"]["road"] == "G312"
    assert sim.count("SELECT count(*) FROM rejected") == 0, sim.query("SELECT * FROM rejected")
    st.stop()
    assert verify_data_dir(st.data_dir)["ok"]


def test_database_of_a_clip_row_is_in_images(tmp_path: Path) -> None:
    """A clip is a row of ``images`` (one evidence-file table): recover() keeps it."""
    db, store = open_store(tmp_path)
    try:
        store.commit(make_event(1, clip_frames=3), make_verdict(), CTX)
        assert store.recover() == 0
        names = [r[0] for r in db.read().execute("SELECT name FROM images ORDER BY name")]
        assert "front.mjpeg" in names
    finally:
        db.close()
