"""Issue 14: no wrong plate. Per-character trust, colour against length, rows from the text
lines, and the second recogniser whose disagreement only ever makes a plate unread.

The rules are tested on synthetic plates with scripted models (each test fails when its rule is
removed), the second opinion's loading and hash check on the real wheel, and the fused reader on
the real photos.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from drivers.plate.bundle import BundleError, _check, _read_manifest, second_opinion_folder
from drivers.plate.chinese import colour_length_conflict
from drivers.plate.pipeline import (
    PlatePipeline,
    PlateResult,
    fuse,
    is_double_row,
    untrusted,
)
from drivers.plate.second import SecondOpinion, open_second_opinion

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
CHARSET = (
    "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使学挂港澳警领"
)
# the second recogniser's alphabet: thousands of characters in the real one, and the plate's
# separator dot, which it reads and the pipeline drops
SECOND_CHARSET = [*CHARSET, "·", "字", "锁", *(chr(0x4E00 + k) for k in range(200))]
Script = list[tuple[str, Sequence[float]]]


class Scripted:
    """A stand-in recogniser: emits the scripted strings in turn, one per call, each character
    at its scripted probability (a simulator of the CTC output, not a mock of our code)."""

    runtime = "test"

    def __init__(self, shape: tuple[int, int, int, int], charset: Sequence[str], texts: Script):
        self.name = "scripted"
        self.input_shape = shape
        self.charset = list(charset)
        self.texts = texts
        self.calls = 0

    def __call__(self, x: F32) -> list[F32]:
        text, probs = self.texts[min(self.calls, len(self.texts) - 1)]
        self.calls += 1
        steps = np.zeros((40, len(self.charset) + 2), np.float32)
        steps[:, 0] = 1.0
        for k, ch in enumerate(text):
            t = 2 + 2 * k
            steps[t, 0] = 0.0
            steps[t, self.charset.index(ch) + 1] = probs[k] if k < len(probs) else 1.0
        return [steps[None]]

    def run_filled(self, fill: Callable[[F32], None]) -> list[F32]:
        x = np.zeros(self.input_shape, np.float32)
        fill(x)
        return self(x)

    def set_input(self, x: F32) -> None:
        pass

    def invoke(self) -> None:
        pass


def synthetic_plate(bgr: tuple[int, int, int], ink: tuple[int, int, int], w: int = 140) -> U8:
    """A synthetic single-row plate: background colour with seven ink blocks."""
    h = round(w / 3.4)
    img = np.full((h, w, 3), bgr, np.uint8)
    for k in range(7):
        x0 = round(w * (0.06 + k * 0.13))
        img[h // 5 : h - h // 5, x0 : x0 + round(w * 0.06)] = ink
    return img


BLUE = synthetic_plate((160, 60, 20), (240, 240, 240))
GREEN = synthetic_plate((90, 200, 60), (20, 20, 20))  # hue ≈ 53: new-energy green
YELLOW = synthetic_plate((30, 190, 230), (20, 20, 20))
SURE = (1.0,) * 8


def _pipeline(first: Script, second: Script | None = None) -> PlatePipeline:
    rec = Scripted((1, 32, 320, 3), CHARSET, first)
    det = Scripted((1, 64, 64, 3), CHARSET, [("", ())])
    opinion = None
    if second is not None:
        opinion = SecondOpinion(
            Scripted((1, 48, 320, 3), SECOND_CHARSET, second), SECOND_CHARSET, "scripted"
        )
    return PlatePipeline(det, rec, CHARSET, second=opinion)


# -- per-character trust ------------------------------------------------------------------------


def test_uncertain_province_leaves_the_plate_unread() -> None:
    # issue 14: another province's plate read as 皖 at 0.56 overall; the province alone at 0.85
    result = _pipeline([("皖A12345", (0.85, *SURE))]).read_plate(BLUE)
    assert not result.valid and "province uncertain" in result.reason
    assert _pipeline([("皖A12345", (0.95, *SURE))]).read_plate(BLUE).valid


def test_any_uncertain_character_leaves_the_plate_unread() -> None:
    result = _pipeline([("皖A12345", (1.0, 1.0, 1.0, 0.7, 1.0, 1.0, 1.0))]).read_plate(BLUE)
    assert not result.valid and "[3]" in result.reason


def test_untrusted_positions() -> None:
    assert untrusted("皖A12345", (0.89, *SURE[:6])) == [0]
    assert untrusted("皖A12345", (0.9, 0.79, *SURE[:5])) == [1]
    assert untrusted("皖A12345", (0.9, 0.8, *SURE[:5])) == []
    assert untrusted("皖A12345", (1.0,)) == list(range(7))  # probabilities missing: none trusted


# -- colour against length ----------------------------------------------------------------------


def test_green_plate_read_with_seven_characters_is_unread() -> None:
    # issue 14: a green plate's dropped letter still passed the format check (0.97)
    result = _pipeline([("沪A71017", SURE)]).read_plate(GREEN)
    assert not result.valid and "8 characters" in result.reason
    assert colour_length_conflict("沪A71017", "green", GREEN)
    assert colour_length_conflict("沪AF71017", "green", GREEN) is None


def test_small_new_energy_number_needs_green_on_the_plate() -> None:
    assert colour_length_conflict("沪AF71017", "yellow", YELLOW)
    assert colour_length_conflict("皖A12345", "blue", BLUE) is None


# -- rows from the text lines -------------------------------------------------------------------


def test_double_row_by_text_lines_not_by_shape() -> None:
    top, bottom = (30, 5, 70, 20), (10, 26, 90, 55)
    assert is_double_row([top, bottom], 60)
    assert not is_double_row([(10, 10, 90, 50)], 60)  # one line: single-row, whatever the box
    assert not is_double_row([(10, 5, 90, 20), (10, 26, 90, 55)], 60)  # equal lines: two plates
    assert not is_double_row([top, (10, 26, 90, 30)], 60)  # a sliver is no line


class _Lines:
    """A DB text detector simulator: its probability map has the scripted bands (fractions of
    its input) at 1.0, the rest at 0."""

    runtime = "test"
    name = "db"
    input_shape = (1, 320, 480, 3)

    def __init__(self, bands: list[tuple[float, float, float, float]]) -> None:
        self.bands = bands

    def run_filled(self, fill: Callable[[F32], None]) -> list[F32]:
        prob = np.zeros((1, 320, 480, 1), np.float32)
        for x0, y0, x1, y1 in self.bands:
            prob[0, round(y0 * 320) : round(y1 * 320), round(x0 * 480) : round(x1 * 480)] = 1.0
        return [prob]


def test_wide_box_with_one_text_line_is_read_as_single_row() -> None:
    # issue 14: a single-row plate boxed tall (aspect 2:1) was split as a double-row plate
    tall_single = np.full((60, 120, 3), (160, 60, 20), np.uint8)
    pipeline = _pipeline([("皖A12345", SURE)])
    pipeline.text_detector = _Lines([(0.15, 0.4, 0.85, 0.6)])
    result = pipeline.read_plate(tall_single)
    assert result.valid and not result.double_row and result.text == "皖A12345"


# -- the second opinion -------------------------------------------------------------------------


def test_second_opinion_agreeing_confirms_and_lifts_weak_characters() -> None:
    # the first reads 皖 at 0.6 (alone: unread); the second reads the same province at 0.99
    first = [("皖K66666", (0.6, *SURE))]
    second = [("皖K·66666", (0.99, *SURE))]
    result = _pipeline(first, second).read_plate(YELLOW)
    assert result.valid and result.text == "皖K66666" and result.opinions == ("first", "second")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("皖A12345", "苏A12345"),  # another province
        ("沪AF71017", "沪A71017"),  # a dropped letter (also of another length)
        ("皖A12345", "皖A12346"),  # a substituted digit
    ],
)
def test_second_opinion_disagreeing_leaves_the_plate_unread(first: str, second: str) -> None:
    plate = GREEN if len(first) == 8 else BLUE
    result = _pipeline([(first, SURE)], [(second, SURE)]).read_plate(plate)
    assert not result.valid and result.disagree and "recognisers disagree" in result.reason


def test_second_opinion_without_a_possible_reading_leaves_the_first_alone() -> None:
    # 锁 is not a plate character: no opinion, so the first reading stands on its own trust
    result = _pipeline([("沪A12345", SURE)], [("沪A1234锁", SURE)]).read_plate(BLUE)
    assert result.valid and result.opinions == ("first",)


def test_second_opinion_alone_reads_only_when_every_character_is_sure() -> None:
    first = [("粤N", SURE)]  # nothing possible
    assert _pipeline(first, [("粤N·BM959", (0.93, *SURE))]).read_plate(BLUE).text == "粤NBM959"
    assert not _pipeline(first, [("粤N·BM959", (0.6, *SURE))]).read_plate(BLUE).valid


def test_first_readings_that_disagree_are_not_rescued_by_the_second() -> None:
    # the check views read two different plates: that disagreement stands
    first = [("鲁NBM959", SURE), ("京NBM959", SURE)]
    result = _pipeline(first, [("粤NBM959", SURE)]).read_plate(BLUE)
    assert not result.valid and "views disagree" in result.reason


def test_fuse_never_reports_a_text_that_neither_read() -> None:
    a = PlateResult("皖A12345", "blue", 0.9, True, False, None, 0.9, char_probs=(0.99,) * 7)
    b = PlateResult("皖A12346", "blue", 0.9, True, False, None, 0.9, char_probs=(0.99,) * 7)
    assert not fuse(a, b).valid
    assert fuse(a, a).text == "皖A12345"


# -- the real second recogniser -----------------------------------------------------------------


def _rapidocr() -> Path:
    folder = second_opinion_folder()
    if folder is None:
        pytest.skip("the second recogniser (PP-OCRv4, from the rapidocr wheel) is not installed")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pytest.skip("onnxruntime is not installed")
    return folder


def test_second_opinion_loads_from_the_wheel_with_its_characters() -> None:
    _rapidocr()
    opinion = open_second_opinion()
    assert len(opinion.charset) == 6623 and "皖" in opinion.charset and "·" in opinion.charset
    assert opinion.runner.input_shape == (1, 48, 320, 3)


def test_second_opinion_with_a_changed_file_is_refused(tmp_path: Path) -> None:
    folder = _rapidocr()
    shipped = Path(__file__).resolve().parents[1] / "firmware_config" / "models"
    manifest = _read_manifest(shipped / "plate-second-onnx.json")
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    shutil.copy(folder / "models" / model.name, model)
    with model.open("r+b") as fh:  # one byte changed, same size
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BundleError, match="SHA-256"):
        _check(tmp_path, manifest, shipped / "plate-second-onnx.json")
    assert json.loads((shipped / "plate-second-onnx.json").read_text())["license"] == "Apache-2.0"
