"""Plate reading, model-independent: detector → warp → (text lines) → CTC recogniser → checks.

One pipeline for every runtime (:mod:`drivers.plate.runtimes`): the models are called as
``runner(x_nhwc) -> outputs``. The steps and numbers follow the model bundle's PROVENANCE.md:

1. **Detector** (RetinaFace-style, 640×640): the BGR picture letterboxed into the top-left corner,
   minus the mean (104, 117, 123), padding at the mean (0 after subtraction). Priors of sizes
   [[24, 48], [96, 192], [384, 768]] on steps [8, 16, 32]; boxes and the four corner landmarks
   decoded with variances (0.1, 0.2); score = class 1 of the (already softmaxed) output; score
   ≥ 0.5 (green plates score 0.51–0.69: the original 0.7 loses them); NMS at IoU 0.4; a box whose
   centre lies in the letterbox padding is dropped (the detector fires on the padding edge), and
   so is one whose corners lie well outside the picture (cut off by the frame edge). When the
   whole picture yields no readable plate, four zoomed tiles are searched again.
2. **Warp**: the plate straightened from its four corners (landmark order bottom-right,
   bottom-left, top-left, top-right) with a margin of a few percent, so a corner that lands a
   pixel inside the plate does not clip the first or last character.
3. **Shape**: a single-row plate is resized to one aspect ratio (3.6: the 440×140 mm plate and
   its margin; 3.9 for the 480 mm green plates), so small landmark errors do not squeeze the
   characters together.
4. **Rows**: a plate about twice as wide as high is a double-row plate (the rear plate of every
   truck and trailer: 440×220 mm, small province + letter line above the five large characters).
   The DB text-line detector of the bundle finds the two lines; they are read two ways (each on
   its own, texts joined; the top line stitched left of the bottom one) and the readings must
   agree. When the lines cannot be found, the readings disagree or the result fails the format
   check, the plate is reported *unread* — never a guess.
5. **Recogniser** (CRNN + CTC, 32×320): the line resized to height 32 keeping its aspect and
   **padded to width 320** (the original package stretches it instead, ~20 points worse), BGR,
   x/255 − 0.5, /0.5. Greedy CTC: argmax, merge repeats, drop blanks (class 0); class i is
   character i of the charset. Each character's probability is the maximum over its steps.
6. **Checks**: :func:`drivers.plate.chinese.is_valid_plate` rejects impossible strings; colour
   from the plate pixels; confidence from the character probabilities (see
   :func:`calibrated_confidence`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import product

import numpy as np
import numpy.typing as npt

from drivers.plate.chinese import (
    LETTERS,
    PROVINCES,
    SUFFIXES,
    TRUST_AGREED,
    PlateColor,
    colour_format_conflict,
    colour_length_conflict,
    is_valid_plate,
    plate_color,
    untrusted,
)
from drivers.plate.runtimes import ModelRunner
from drivers.plate.second import SEPARATORS, SecondOpinion

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

DET_MEAN_BGR = (104.0, 117.0, 123.0)
DET_MIN_SIZES = ((24, 48), (96, 192), (384, 768))
DET_STEPS = (8, 16, 32)
DET_VARIANCES = (0.1, 0.2)
_SUFFIX_BODY = re.compile(f"[{PROVINCES}][{LETTERS}][{LETTERS}0-9]{{4}}")
DB_MEAN = (0.485, 0.456, 0.406)
DB_STD = (0.229, 0.224, 0.225)

# Calibration of the raw recogniser score (the product of the character probabilities) to a
# probability that the whole string is right: a logistic fit p = 1 / (1 + exp(-(a·logit(s) + b))).
# Produced by `scripts/eval-plates --calibrate` over the labelled fixtures (236 reads, 4 of them
# wrong: a thin fit; the only fit made on fixtures, two numbers, no per-plate rule).
CALIBRATION_A = 1.4904
CALIBRATION_B = -0.1699


@dataclass(frozen=True)
class Detection:
    """A plate found by the detector, in the picture's pixels."""

    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    corners: tuple[tuple[float, float], ...]  # top-left, top-right, bottom-right, bottom-left


@dataclass(frozen=True)
class LineRead:
    text: str
    char_probs: tuple[float, ...]


@dataclass(frozen=True)
class PlateResult:
    """What the pipeline made of one detected plate (``valid`` False: report it unread)."""

    text: str
    color: PlateColor
    confidence: float
    valid: bool
    double_row: bool
    detection: Detection | None
    raw_score: float
    reason: str = ""  # why it is unread
    char_probs: tuple[float, ...] = ()
    disagree: bool = False  # unread because two readings named different plates
    opinions: tuple[str, ...] = ()  # the recognisers whose reading it is (first, second)

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        if self.detection is None:
            return None
        x0, y0, x1, y1 = self.detection.box
        return (round(x0), round(y0), round(x1), round(y1))


@dataclass
class CallCounts:
    """How often each model ran (the benchmark replays the same calls bare)."""

    counts: Counter[str] = field(default_factory=Counter)


def calibrated_confidence(raw_score: float) -> float:
    """Map the raw string score (product of character probabilities) to a probability."""
    s = min(max(raw_score, 1e-6), 1 - 1e-6)
    z = CALIBRATION_A * math.log(s / (1 - s)) + CALIBRATION_B
    return 1.0 / (1.0 + math.exp(-z))


def confidence_from_chars(char_probs: tuple[float, ...]) -> float:
    """The string's confidence: the calibrated product of the character probabilities, capped
    by its least certain character. A character at coin-toss odds (p ≤ 0.5) makes the whole
    plate worthless however sure the others are: the cap is (p_min − 0.5) / 0.5."""
    if not char_probs:
        return 0.0
    raw = float(np.prod(char_probs))
    cap = max(0.0, (min(char_probs) - 0.5) / 0.5)
    return min(calibrated_confidence(raw), cap)


def _priors(height: int, width: int) -> F32:
    anchors: list[list[float]] = []
    for step, sizes in zip(DET_STEPS, DET_MIN_SIZES, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        for i, j in product(range(rows), range(cols)):
            for size in sizes:
                anchors.append(
                    [
                        (j + 0.5) * step / width,
                        (i + 0.5) * step / height,
                        size / width,
                        size / height,
                    ]
                )
    return np.asarray(anchors, dtype=np.float32)


def _nms(boxes: F32, scores: F32, iou: float) -> list[int]:
    order = list(np.argsort(-scores))
    keep: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.asarray(order)
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0.0, xx1 - xx0) * np.maximum(0.0, yy1 - yy0)
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = [int(k) for k, o in zip(rest, overlap, strict=True) if o <= iou]
    return keep


def _in_picture(boxes: F32, corners: F32, new_w: int, new_h: int) -> npt.NDArray[np.bool_]:
    """Which detections lie in the letterboxed picture (``new_w`` × ``new_h``): the box's
    centre outside it is the detector firing on the padding edge."""
    inside = ((boxes[:, 0] + boxes[:, 2]) / 2 < new_w) & ((boxes[:, 1] + boxes[:, 3]) / 2 < new_h)
    # A plate whose corners lie well outside the picture is cut off by the frame edge (or
    # is the detector firing on the edge itself): it cannot be read whole, so it is dropped.
    plate_h = np.maximum(corners[:, 1::2].max(axis=1) - corners[:, 1::2].min(axis=1), 1.0)
    tol = 0.25 * plate_h
    inside &= (corners[:, 0::2].min(axis=1) > -tol) & (corners[:, 0::2].max(axis=1) < new_w + tol)
    inside &= (corners[:, 1::2].min(axis=1) > -tol) & (corners[:, 1::2].max(axis=1) < new_h + tol)
    return inside


def decode_image(data: bytes) -> U8:
    """JPEG/PNG bytes to a BGR array; raises ValueError when they are not a picture."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable JPEG/PNG picture")
    return np.asarray(image, dtype=np.uint8)


class PlatePipeline:
    """Detector + recogniser (+ text-line detector) around any :class:`ModelRunner` s."""

    def __init__(
        self,
        detector: ModelRunner,
        recognizer: ModelRunner,
        charset: str,
        text_detector: ModelRunner | None = None,
        *,
        det_threshold: float = 0.5,
        nms_iou: float = 0.4,
        double_row_aspect: float = 2.6,
        single_row_aspect: float = 3.6,
        warp_margin: float = 0.04,
        tiles: bool = True,
        check_aspects: tuple[float, ...] = (3.0, 3.2),
        line_margins: tuple[float, ...] = (0.25, 0.5),
        second: SecondOpinion | None = None,
    ) -> None:
        self.detector = detector
        self.recognizer = recognizer
        self.text_detector = text_detector
        self.charset = charset
        self.det_threshold = det_threshold
        self.nms_iou = nms_iou
        self.double_row_aspect = double_row_aspect
        self.single_row_aspect = single_row_aspect
        self.warp_margin = warp_margin
        self.tiles = tiles
        self.check_aspects = check_aspects  # (): no check views
        self.line_margins = line_margins  # double-row lines: margins (× line height) read
        self.second = second  # the independent second recogniser (None: the first alone)
        _, self._det_h, self._det_w, _ = detector.input_shape
        _, self._rec_h, self._rec_w, _ = recognizer.input_shape
        self._priors = _priors(self._det_h, self._det_w)
        self._det_offset = (*tuple(-m for m in DET_MEAN_BGR), 0.0)
        self._db_scale = (*tuple(1.0 / (255.0 * s) for s in DB_STD), 0.0)
        self._db_offset = (*tuple(m / s for m, s in zip(DB_MEAN, DB_STD, strict=True)), 0.0)
        self.calls = CallCounts()

    # -- 1. detector -------------------------------------------------------------------------
    def detect(self, image: U8) -> list[Detection]:
        """Plates in a BGR picture, best first."""
        h, w = image.shape[:2]
        scale = min(self._det_w / w, self._det_h / h)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        outputs = self._run_detector(image, new_w, new_h)
        decoded = self._decode_detections(outputs)
        if decoded is None:
            return []
        boxes, corners, scores = decoded
        inside = _in_picture(boxes, corners, new_w, new_h)
        boxes, corners, scores = boxes[inside], corners[inside], scores[inside]
        found: list[Detection] = []
        for i in _nms(boxes, scores, self.nms_iou):
            b = boxes[i] / scale
            c = corners[i].reshape(4, 2) / scale  # bottom-right, bottom-left, top-left, top-right
            br, bl, tl, tr = (tuple(float(v) for v in p) for p in c)
            found.append(
                Detection(
                    score=float(scores[i]),
                    box=(
                        max(0.0, float(b[0])),
                        max(0.0, float(b[1])),
                        min(float(w), float(b[2])),
                        min(float(h), float(b[3])),
                    ),
                    corners=(tl, tr, br, bl),  # type: ignore[arg-type]
                )
            )
        return found

    def _run_detector(self, image: U8, new_w: int, new_h: int) -> list[F32]:
        """The detector's outputs for ``image`` letterboxed to ``new_w`` × ``new_h`` in the
        top-left corner of its input, the rest padded at the mean."""
        import cv2

        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        padded = cv2.copyMakeBorder(
            resized,
            0,
            self._det_h - new_h,
            0,
            self._det_w - new_w,
            cv2.BORDER_CONSTANT,
            value=DET_MEAN_BGR,  # 0 after the mean is taken off
        )

        # OpenCV's saturating arithmetic with a float result: 1-2 ms where numpy's mixed-type
        # subtraction takes 5-10 ms, a quarter of the detector's own time on a Pi. (The cv2
        # stubs do not list the per-channel scalar form of the second operand.)
        def fill(x: F32) -> None:
            cv2.add(padded, self._det_offset, dst=x[0], dtype=cv2.CV_32F)  # type: ignore[call-overload]

        outputs = self.detector.run_filled(fill)
        self.calls.counts["detector"] += 1
        return outputs

    def _decode_detections(self, outputs: list[F32]) -> tuple[F32, F32, F32] | None:
        """Boxes (x0, y0, x1, y1) and the four landmarks, in detector-input pixels, and the
        scores of the priors that scored at least ``det_threshold``; ``None``: none did."""
        by_dim = {o.shape[-1]: o.reshape(-1, o.shape[-1]) for o in outputs}
        scores_all, landm, loc = by_dim[2][:, 1], by_dim[8], by_dim[4]
        keep = np.nonzero(scores_all >= self.det_threshold)[0]
        if keep.size == 0:
            return None
        pri = self._priors[keep]
        loc, landm, scores = loc[keep], landm[keep], scores_all[keep]
        v0, v1 = DET_VARIANCES
        centre = pri[:, :2] + loc[:, :2] * v0 * pri[:, 2:]
        size = pri[:, 2:] * np.exp(loc[:, 2:] * v1)
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        corners = np.concatenate(
            [pri[:, :2] + landm[:, 2 * k : 2 * k + 2] * v0 * pri[:, 2:] for k in range(4)], axis=1
        )
        norm = np.asarray([self._det_w, self._det_h], dtype=np.float32)
        return boxes * np.tile(norm, 2), corners * np.tile(norm, 4), scores

    # -- 2. warp -----------------------------------------------------------------------------
    def warp(self, image: U8, detection: Detection) -> U8:
        """The plate straightened to its own width and height, with a small margin."""
        import cv2

        tl, tr, br, bl = (np.asarray(p, dtype=np.float32) for p in detection.corners)
        width = max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))
        height = max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))
        if width < 4 or height < 2:
            x0, y0, x1, y1 = (round(v) for v in detection.box)
            return np.ascontiguousarray(image[max(0, y0) : y1, max(0, x0) : x1])
        mx, my = self.warp_margin * width, self.warp_margin * 2 * height
        out_w, out_h = round(width + 2 * mx), round(height + 2 * my)
        src = np.stack([tl, tr, br, bl]).astype(np.float32)
        dst = np.asarray(
            [[mx, my], [mx + width, my], [mx + width, my + height], [mx, my + height]],
            dtype=np.float32,
        )
        matrix = cv2.getPerspectiveTransform(src, dst)
        warped = cv2.warpPerspective(
            image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        return np.asarray(warped, dtype=np.uint8)

    # -- 3. text lines (double-row plates) ---------------------------------------------------
    def text_lines(self, plate: U8) -> list[tuple[int, int, int, int]]:
        """Row boxes (x0, y0, x1, y1) in ``plate`` found by the DB detector, top first."""
        import cv2

        if self.text_detector is None:
            return []
        _, in_h, in_w, _ = self.text_detector.input_shape
        ph, pw = plate.shape[:2]
        # The detector was trained on scenes: give the plate a border so lines touching the
        # plate edge are still found.
        scale = min(in_w * 0.8 / pw, in_h * 0.8 / ph)
        sw, sh = max(1, round(pw * scale)), max(1, round(ph * scale))
        ox, oy = (in_w - sw) // 2, (in_h - sh) // 2
        border = [int(v) for v in np.median(plate.reshape(-1, 3), axis=0)]
        canvas = np.empty((in_h, in_w, 3), dtype=np.uint8)
        canvas[:] = border
        canvas[oy : oy + sh, ox : ox + sw] = cv2.resize(plate, (sw, sh))

        def fill(x: F32) -> None:
            # (v/255 − mean) / std per channel, written straight into the model input
            cv2.multiply(canvas, self._db_scale, dst=x[0], dtype=cv2.CV_32F)  # type: ignore[call-overload]
            cv2.subtract(x[0], self._db_offset, dst=x[0])  # type: ignore[call-overload]

        (prob,) = (o.reshape(in_h, in_w) for o in self.text_detector.run_filled(fill))
        self.calls.counts["text_detector"] += 1
        mask = (prob > 0.3).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        boxes: list[tuple[float, float, float, float]] = []
        for contour in contours:
            if cv2.contourArea(contour) < 9:
                continue
            bx, by, bw, bh = cv2.boundingRect(contour)
            cmask = np.zeros((bh, bw), dtype=np.uint8)
            cv2.drawContours(cmask, [contour - np.array([bx, by])], -1, 1, thickness=-1)
            if cv2.mean(prob[by : by + bh, bx : bx + bw], mask=cmask)[0] < 0.6:
                continue  # box score: mean probability inside the contour
            # DB "unclip": grow the shrunk text kernel by area × ratio / perimeter.
            area, perimeter = cv2.contourArea(contour), cv2.arcLength(contour, True)
            grow = area * 1.3 / max(perimeter, 1e-6)
            boxes.append((bx - grow, by - grow, bx + bw + grow, by + bh + grow))
        rows = _group_rows(boxes)
        out: list[tuple[int, int, int, int]] = []
        for x0, y0, x1, y1 in rows:
            px0 = max(0, math.floor((x0 - ox) / scale))
            py0 = max(0, math.floor((y0 - oy) / scale))
            px1 = min(pw, math.ceil((x1 - ox) / scale))
            py1 = min(ph, math.ceil((y1 - oy) / scale))
            if px1 - px0 >= 4 and py1 - py0 >= 4:
                out.append((px0, py0, px1, py1))
        return out

    # -- 4. recogniser -----------------------------------------------------------------------
    def recognize_line(self, line: U8, second: bool = False) -> LineRead:
        """One row of characters (BGR) to text with per-character probabilities, by the
        bundle's recogniser or (``second``) by the second opinion's (same normalisation, its
        own input height; separators it reads, such as the plate's raised dot, dropped)."""
        import cv2

        runner, name = self.recognizer, "recognizer"
        charset: Sequence[str] = self.charset
        if second:
            assert self.second is not None
            runner, charset, name = self.second.runner, self.second.charset, "second_recognizer"
        _, rec_h, rec_w, _ = runner.input_shape
        h, w = line.shape[:2]
        target_w = min(rec_w, max(1, math.ceil(rec_h * w / max(h, 1))))
        resized = cv2.resize(line, (target_w, rec_h), interpolation=cv2.INTER_LINEAR)

        def fill(x: F32) -> None:
            # (v/255 − 0.5)/0.5 = v/127.5 − 1 written straight into the model input (no
            # temporary float copies); the padding to the right is 0 (mid-grey).
            view = x[0, :, :target_w]
            np.multiply(resized, np.float32(1 / 127.5), out=view, casting="unsafe")
            np.subtract(view, np.float32(1.0), out=view)
            x[0, :, target_w:] = 0.0

        (logits,) = runner.run_filled(fill)[:1]
        self.calls.counts[name] += 1
        probs = logits.reshape(-1, logits.shape[-1])
        best = probs.argmax(axis=1)
        best_p = probs[np.arange(len(best)), best]
        text: list[str] = []
        char_probs: list[float] = []
        previous = 0
        for cls, p in zip(best, best_p, strict=True):
            cls_i = int(cls)
            if cls_i not in (0, previous) and cls_i <= len(charset):
                text.append(charset[cls_i - 1])
                char_probs.append(float(p))
            elif cls_i != 0 and cls_i == previous and char_probs:
                char_probs[-1] = max(char_probs[-1], float(p))
            previous = cls_i
        if second:
            kept = [(c, p) for c, p in zip(text, char_probs, strict=True) if c not in SEPARATORS]
            return LineRead("".join(c for c, _ in kept), tuple(p for _, p in kept))
        return LineRead("".join(text), tuple(char_probs))

    # -- whole plate -------------------------------------------------------------------------
    def read_plate(self, plate: U8, detection: Detection | None = None) -> PlateResult:
        """Read an upright plate picture (one or two rows)."""
        h, w = plate.shape[:2]
        if h < 4 or w < 8:  # a degenerate box at the picture's edge
            empty = LineRead("", ())
            return _unread(self._result(empty, "unknown", False, detection), "plate too small")
        color = plate_color(plate)
        lines: list[tuple[int, int, int, int]] | None = None
        if self.text_detector is None:  # no line evidence: the plate's shape must do
            double = w < self.double_row_aspect * h
        else:
            lines = self.text_lines(plate)
            double = is_double_row(lines, h)
        if not double:
            return self._read_single_checked(plate, color, detection)
        return self._read_double(plate, color, detection, lines)

    def _read_single_checked(
        self, plate: U8, color: PlateColor, detection: Detection | None
    ) -> PlateResult:
        """A single-row plate, read in the standard shape and checked in narrower views.

        The standard shape (``single_row_aspect``) gives the reading; the plate is then read
        again squeezed to each of ``check_aspects`` (by a sixth and a ninth). A character the
        recogniser really sees survives the change, while a guess (a province character taken
        for a similar one, a suffix it cannot read turned into a digit) tends to move. When a
        check view reads a *different possible plate of the same length* (a character
        substituted), the plate is left unread. A check view that reads an impossible string
        or a shorter one does not count against it: squeezing merges neighbouring characters
        and drops small suffix characters, which says nothing about the reading.

        A reading that fails only for want of its suffix character gets a second look at the
        plate's last character cell (:meth:`_recover_suffix`).
        """
        shaped = self._shape_single(plate, color)
        read = self.recognize_line(shaped)
        second = self.recognize_line(shaped, second=True) if self.second else None
        result = self._result(read, color, False, detection, plate)
        if not result.valid:
            recovered = self._recover_suffix(plate, color, detection, read)
            if recovered is not None:
                result = recovered
        if result.valid:
            for aspect in self.check_aspects:
                alt = self.recognize_line(self._shape_single(plate, color, aspect))
                if (
                    alt.text != result.text
                    and len(alt.text) == len(result.text)
                    and is_valid_plate(alt.text)
                ):
                    result = _unread(
                        result, f"views disagree: {result.text!r} / {alt.text!r}", disagree=True
                    )
                    break
        return self._fuse(result, second, color, False, detection, plate)

    def _recover_suffix(
        self, plate: U8, color: PlateColor, detection: Detection | None, read: LineRead
    ) -> PlateResult | None:
        """The plate with its suffix character (挂 学 警 领 港 澳) read from its last cell alone.

        The recogniser, trained mostly on civil plates, drops a red 警 or 领 or reads it as a
        digit when it sees the whole plate, but often names it when it sees the last character
        cell on its own. Tried only when the reading is a suffix plate's body (province,
        letter, four characters) followed by nothing (an impossible 6-character string) or by a
        character the plate's colour rules out (a black plate read as an ordinary number). The
        suffix must be the last character of the cell's reading, at probability ≥ 0.6; the
        result goes through the format and colour checks again, and its confidence includes
        the suffix's probability.
        """
        import cv2

        text = read.text
        if not (
            (len(text) == 6 and _SUFFIX_BODY.fullmatch(text))
            or (len(text) == 7 and is_valid_plate(text) and _SUFFIX_BODY.fullmatch(text[:6]))
        ):
            return None
        h = plate.shape[0]
        width = max(1, round(self.single_row_aspect * h))
        shaped = cv2.resize(plate, (width, h), interpolation=cv2.INTER_LINEAR)
        # the 7th cell: 379.5-424.5 mm of the 440 mm plate, with the warp margin either side
        start = (self.warp_margin + 379.5 / 440 - 0.02) / (1 + 2 * self.warp_margin)
        pad = max(1, round(0.15 * h))
        cell = cv2.copyMakeBorder(
            shaped[:, round(start * width) :], 0, 0, pad, pad, cv2.BORDER_REPLICATE
        )
        probe = self.recognize_line(np.asarray(cell, dtype=np.uint8))
        if not probe.text or probe.text[-1] not in SUFFIXES or probe.char_probs[-1] < 0.6:
            return None
        candidate = LineRead(
            text[:6] + probe.text[-1], (*read.char_probs[:6], probe.char_probs[-1])
        )
        result = self._result(candidate, color, False, detection, plate)
        return result if result.valid else None

    def _read_double(
        self,
        plate: U8,
        color: PlateColor,
        detection: Detection | None,
        lines: list[tuple[int, int, int, int]] | None = None,
    ) -> PlateResult:
        """A double-row plate: two readings of the two text lines, which must agree.

        Each line is cut out with a margin that stops halfway to the other line (beyond it, the
        plate's background colour): a margin that reaches into the other line's glyphs makes the
        recogniser drop or invent characters. (a) each line recognised on its own, texts joined
        top first — the top line must hold exactly the province and the letter (2 characters),
        the bottom line the remaining 5 (GA 36: double-row plates carry 7 characters); (b) the
        top line scaled to the bottom line's height and stitched to its left, read as one
        single-row plate, which counts only when it has 7 characters and none of them at
        coin-toss odds (p ≤ 0.5): a stitched read that doubles or drops a character at the seam
        is not a different plate. Valid readings that
        disagree leave the plate unread: a wrong plate in an enforcement record is worse than
        none. If the text-line detector does not find two lines, the box may still be a
        single-row plate seen at a steep angle, which is tried last.
        """
        # long: the two readings of a double-row plate, their checks and the second opinion
        # are one decision; split, each part would have to re-derive the rows
        lines = self.text_lines(plate) if lines is None else lines
        candidates: list[PlateResult] = []
        second: LineRead | None = None
        if len(lines) == 2:
            gap = (lines[0][3] + lines[1][1]) // 2
            limits = ((0, gap), (gap, plate.shape[0]))
            reads = [
                self._read_row(plate, box, rows, k)
                for k, (box, rows) in enumerate(zip(lines, limits, strict=True))
            ]
            joined = LineRead(
                "".join(r.text for r in reads), tuple(p for r in reads for p in r.char_probs)
            )
            stitched = self._read_stitched(plate, lines, limits)
            if self.second is not None:
                second = self._read_rows_second(plate, lines, limits)
            joined_result = self._result(joined, color, True, detection, plate)
            if joined_result.valid and (len(reads[0].text), len(reads[1].text)) != (2, 5):
                joined_result = _unread(
                    joined_result, f"rows {reads[0].text!r} / {reads[1].text!r} are not 2 + 5"
                )
            candidates = [joined_result]
            if any(r.text == "?" for r in reads):
                # a row whose two margins disagree is a disagreement, whatever the stitched
                # reading says
                return _unread(
                    joined_result, "a row reads differently at its two margins", disagree=True
                )
            if len(stitched.text) == 7 and min(stitched.char_probs) > 0.5:
                candidates.append(self._result(stitched, color, True, detection, plate))
        valid = [c for c in candidates if c.valid]
        texts = {c.text for c in valid}
        if len(texts) == 1:
            best = max(valid, key=lambda c: c.raw_score)
            return self._fuse(best, second, color, True, detection, plate)
        if len(texts) > 1:
            return _unread(
                valid[0], f"double-row readings disagree: {sorted(texts)}", disagree=True
            )
        if candidates and second is not None:
            fused = self._fuse(candidates[0], second, color, True, detection, plate)
            if fused.valid:
                return fused
        single = self._read_single_checked(plate, color, detection)
        if single.valid:
            return single
        if candidates:
            return _unread(candidates[0], candidates[0].reason)
        return _unread(single, f"double-row plate: {len(lines)} text lines found")

    def _read_stitched(
        self,
        plate: U8,
        lines: list[tuple[int, int, int, int]],
        limits: tuple[tuple[int, int], tuple[int, int]],
    ) -> LineRead:
        """Reading (b) of a double-row plate: the top line scaled to the bottom line's height
        and stitched to its left, read as one single-row plate."""
        import cv2

        top = _crop_line(plate, lines[0], limits[0], self.line_margins[0])
        bottom = _crop_line(plate, lines[1], limits[1], self.line_margins[0])
        height = bottom.shape[0]
        top_w = max(1, round(top.shape[1] * height / max(top.shape[0], 1)))
        top_scaled = np.asarray(cv2.resize(top, (top_w, height)), dtype=np.uint8)
        return self.recognize_line(np.hstack([top_scaled, bottom]))

    def _read_rows_second(
        self,
        plate: U8,
        lines: list[tuple[int, int, int, int]],
        limits: tuple[tuple[int, int], tuple[int, int]],
    ) -> LineRead:
        """The second opinion on a double-row plate: each line on its own at the first margin,
        top first; the top line must give exactly 2 characters (else no reading)."""
        reads = [
            self.recognize_line(_crop_line(plate, box, rows, self.line_margins[0]), second=True)
            for box, rows in zip(lines, limits, strict=True)
        ]
        if len(reads[0].text) != 2:
            return LineRead("", ())
        return LineRead(reads[0].text + reads[1].text, (*reads[0].char_probs, *reads[1].char_probs))

    def _read_row(
        self, plate: U8, box: tuple[int, int, int, int], rows: tuple[int, int], index: int
    ) -> LineRead:
        """One row of a double-row plate, read with each margin of ``line_margins``.

        Readings of the same length must agree (a substituted character: the row reads as
        ``"?"``, which no plate format accepts, and the plate is left unread); each character's
        probability is then the mean over them. As with the check views of single-row plates, a
        reading of another length (a character doubled or dropped at a wide margin) is not
        counted: the readings at the first margin's length are used. The bottom row never
        holds a province character: a leading one is the recogniser's habit of starting a
        plate with one (it was trained on whole plates) and is dropped.
        """
        reads: list[LineRead] = []
        for margin in self.line_margins:
            read = self.recognize_line(_crop_line(plate, box, rows, margin))
            if index == 1 and read.text[:1] in PROVINCES:
                read = LineRead(read.text[1:], read.char_probs[1:])
            reads.append(read)
        same = [r for r in reads if len(r.text) == len(reads[0].text)]
        if len({r.text for r in same}) != 1:
            return LineRead("?", ())
        return LineRead(
            same[0].text,
            tuple(float(np.mean(c)) for c in zip(*(r.char_probs for r in same), strict=True)),
        )

    def _shape_single(self, plate: U8, color: PlateColor, aspect: float | None = None) -> U8:
        """A single-row plate brought to the standard plate shape.

        Plates are 440×140 mm (480×140 for the green new-energy plates), so every single-row
        plate is resized to one width/height ratio (the plate with its margin): the landmarks'
        small errors then do not squeeze the characters, which makes the CTC merge repeated
        digits ("11" → "1").
        """
        import cv2

        h = plate.shape[0]
        aspect = (aspect or self.single_row_aspect) * (480 / 440 if color == "green" else 1.0)
        width = max(1, round(aspect * h))
        return np.asarray(
            cv2.resize(plate, (width, h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
        )

    def _result(
        self,
        read: LineRead,
        color: PlateColor,
        double: bool,
        detection: Detection | None,
        plate: U8 | None = None,
    ) -> PlateResult:
        """The checks every reading goes through: the format, the plate's colour against the
        format (``plate`` given), the confidence capped by the least certain character."""
        raw = float(np.prod(read.char_probs)) if read.char_probs else 0.0
        valid = is_valid_plate(read.text)
        reason = "" if valid else f"{read.text!r} is not a possible plate"
        if valid and plate is not None:
            conflict = colour_format_conflict(read.text, plate) or colour_length_conflict(
                read.text, color, plate
            )
            if conflict:
                valid, reason = False, conflict
        return PlateResult(
            text=read.text,
            color=color,
            confidence=confidence_from_chars(read.char_probs) if valid else 0.0,
            valid=valid,
            double_row=double,
            detection=detection,
            raw_score=raw,
            reason=reason,
            char_probs=read.char_probs,
        )

    def _fuse(
        self,
        first: PlateResult,
        second: LineRead | None,
        color: PlateColor,
        double: bool,
        detection: Detection | None,
        plate: U8,
    ) -> PlateResult:
        """The first recogniser's result with the second opinion on the same crop
        (:func:`fuse`); without a second recogniser, the first alone under per-character
        trust."""
        other = None if second is None else self._result(second, color, double, detection, plate)
        return fuse(first, other)

    def read_image(self, image: U8) -> list[PlateResult]:
        """Every plate the detector finds in a BGR picture, read or marked unread.

        When the whole picture yields no readable plate and ``tiles`` is on, the detector looks
        again at four overlapping tiles of 60 % of the picture each (a 1.7× zoom): a plate that
        is small in the 640×640 view, or sits beside a larger plate-like object (a second plate
        above it, a grille), is often found there. The plate is then warped from the full
        picture. Costs up to four more detector runs, only for pictures without a plate.
        """
        results = [self.read_plate(self.warp(image, d), d) for d in self.detect(image)]
        if self.tiles and not any(r.valid for r in results):
            results += self._read_tiles(image, results)
        return results

    def _read_tiles(self, image: U8, found: list[PlateResult]) -> list[PlateResult]:
        h, w = image.shape[:2]
        tile_w, tile_h = round(0.6 * w), round(0.6 * h)
        boxes = [r.detection.box for r in found if r.detection is not None]
        out: list[PlateResult] = []
        for ox, oy in ((0, 0), (w - tile_w, 0), (0, h - tile_h), (w - tile_w, h - tile_h)):
            tile = np.ascontiguousarray(image[oy : oy + tile_h, ox : ox + tile_w])
            for d in self.detect(tile):
                shifted = Detection(
                    score=d.score,
                    box=(d.box[0] + ox, d.box[1] + oy, d.box[2] + ox, d.box[3] + oy),
                    corners=tuple((x + ox, y + oy) for x, y in d.corners),
                )
                if any(_iou(shifted.box, b) > 0.3 for b in boxes):
                    continue  # already read (or left unread) from another view
                boxes.append(shifted.box)
                result = self.read_plate(self.warp(image, shifted), shifted)
                if result.valid:
                    out.append(result)
        return out


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _crop_line(
    plate: U8,
    box: tuple[int, int, int, int],
    rows: tuple[int, int] | None = None,
    margin: float = 1 / 3,
) -> U8:
    """A text line with a margin (by default a third of its height): the recogniser was trained
    on lines with some background around them, and the DB box hugs the glyphs. ``rows`` limits
    the margin (halfway to the other line of a double-row plate); the margin beyond that limit
    is filled with the plate's median colour instead of the other line's glyphs."""
    x0, y0, x1, y1 = box
    m = max(1, round((y1 - y0) * margin))
    h, w = plate.shape[:2]
    if rows is not None:  # the margin is kept whole, filled where it leaves the limits
        top, bottom = y0 - m, y1 + m
    else:
        top, bottom = max(0, y0 - m), min(h, y1 + m)
    left, right = max(0, x0 - m), min(w, x1 + m)
    if rows is None:
        return np.ascontiguousarray(plate[top:bottom, left:right])
    lo, hi = max(top, rows[0], 0), min(bottom, rows[1], h)
    out = np.empty((bottom - top, right - left, 3), dtype=np.uint8)
    out[:] = np.median(plate.reshape(-1, 3), axis=0).astype(np.uint8)
    if hi > lo:
        out[lo - top : hi - top] = plate[lo:hi, left:right]
    return out


def _unread(result: PlateResult, reason: str, *, disagree: bool = False) -> PlateResult:
    return replace(
        result,
        confidence=0.0,
        valid=False,
        reason=reason,
        disagree=disagree or result.disagree,
    )


def _group_rows(
    boxes: list[tuple[float, float, float, float]],
) -> list[tuple[float, float, float, float]]:
    """Merge boxes whose vertical extents overlap mostly into one row box each, top first."""
    rows: list[list[float]] = []
    for x0, y0, x1, y1 in sorted(boxes, key=lambda b: (b[1] + b[3]) / 2):
        for row in rows:
            overlap = min(row[3], y1) - max(row[1], y0)
            if overlap > 0.5 * min(row[3] - row[1], y1 - y0):
                row[:] = [min(row[0], x0), min(row[1], y0), max(row[2], x1), max(row[3], y1)]
                break
        else:
            rows.append([x0, y0, x1, y1])
    return [(r[0], r[1], r[2], r[3]) for r in sorted(rows, key=lambda r: r[1])]


def fuse(first: PlateResult, second: PlateResult | None) -> PlateResult:
    """One decision from two opinions on the same crop; disagreement only ever makes it unread.

    * both read a possible plate (for the second: a possible string, even where the colour
      checks refuse it): the same text is read, each character trusted when the surer
      recogniser is at ≥ ``TRUST_AGREED`` and its confidence that of the surer one per
      character; different texts (a substituted, dropped or added character) — unread;
    * one of them reads a possible plate, the other nothing possible (an empty or impossible
      string, a character outside the plate alphabet): that reading alone, every character
      trusted on its own (:func:`untrusted`); a first reading already left unread because its
      own views disagree stays unread;
    * neither: unread.
    """
    a = first if first.valid else None
    b = second if second is not None and second.valid else None
    if a is not None and second is not None and is_valid_plate(second.text):
        # a possible plate string counts as an opinion even where the colour checks refuse
        # it: a green plate's 7-character second reading is a dropped character
        if a.text != second.text:
            return _unread(
                first, f"recognisers disagree: {a.text!r} / {second.text!r}", disagree=True
            )
        b = second
        probs = tuple(max(p, q) for p, q in zip(a.char_probs, b.char_probs, strict=True))
        weak = [i for i, p in enumerate(probs) if p < TRUST_AGREED]
        if weak:
            return _unread(first, f"{a.text!r}: characters {weak} uncertain in both readings")
        return replace(
            a,
            confidence=confidence_from_chars(probs),
            char_probs=probs,
            opinions=("first", "second"),
        )
    alone = a if a is not None else (b if b is not None and not first.disagree else None)
    if alone is None:
        return first
    weak = untrusted(alone.text, alone.char_probs)
    if weak:
        what = "province" if weak == [0] else f"characters {weak}"
        return _unread(alone, f"{alone.text!r}: {what} uncertain")
    return replace(alone, opinions=("first",) if alone is a else ("second",))


def is_double_row(lines: list[tuple[int, int, int, int]], plate_h: int) -> bool:
    """A double-row plate by its text lines (GA 36: a small province + letter line centred above
    the five large characters), not by the box's shape: exactly two lines, each at least a
    sixth of the plate's height, the upper one narrower than the lower one."""
    if len(lines) != 2:
        return False
    (tx0, ty0, tx1, ty1), (bx0, by0, bx1, by1) = lines
    tall_enough = min(ty1 - ty0, by1 - by0) >= plate_h / 6
    return tall_enough and (tx1 - tx0) < 0.85 * (bx1 - bx0) and ty1 <= (by0 + by1) / 2
