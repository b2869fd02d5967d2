"""The second opinion: PaddleOCR's PP-OCRv4 text recogniser, run on the pipeline's own crop.

The plate recogniser of the bundle (a CRNN trained on CCPD, mostly Anhui plates) has habits: it
turns an unfamiliar province character into 皖, drops a letter of an 8-character green plate and
still emits a possible plate. PP-OCRv4 (``ch_PP-OCRv4_rec_infer.onnx`` from the PyPI wheel
``rapidocr-onnxruntime`` 1.4.4, Apache-2.0) is a general Chinese text recogniser trained on other
data: its mistakes are not the same mistakes, so it is an independent opinion. It sees exactly
the crop the first recogniser saw (the warped plate in the standard shape, or one text line of a
double-row plate) — never its own detection — so the two opinions differ only in the
recogniser. How they are fused: :func:`drivers.plate.pipeline.fuse`.

Model facts (PaddleOCR ``rec_img_shape`` 3×48×320, as rapidocr runs it): BGR, height 48, width
by aspect, padded with 0 to the right, (x/255 − 0.5)/0.5; output [T, 6625]: class 0 the CTC
blank, classes 1..6623 the characters of the model's ``character`` metadata, 6624 a space.
It reads the raised separator dot of a plate as ``·``, which is dropped here with the other
separators; any character outside the plate alphabet makes its reading impossible.
"""

from __future__ import annotations

from drivers.plate.base import PlateReaderError
from drivers.plate.bundle import Bundle, BundleError, load_bundle, second_opinion_bundle
from drivers.plate.runtimes import ModelRunner, OnnxRunner, TfliteRunner, TfliteRuntime

#: what the second recogniser writes between characters of a plate that are not part of it
SEPARATORS = frozenset("·•.-— ")


class SecondOpinion:
    """A loaded second recogniser: its runner and its character list."""

    def __init__(self, runner: ModelRunner, charset: list[str], name: str) -> None:
        if len(charset) < 100:
            raise PlateReaderError(
                f"second plate recogniser {name}: expected several thousand characters in its "
                f"character list, got {len(charset)}"
            )
        self.runner = runner
        self.charset = charset
        self.name = name


def open_second_opinion(
    num_threads: int = 2, folder: str = "", runtime: TfliteRuntime = "auto"
) -> SecondOpinion:
    """The PP-OCRv4 recogniser, hash-checked (:class:`BundleError` if not): from the bundle in
    ``folder`` (the LiteRT conversion of ``scripts/build-plate-model --second``, its characters
    in the bundle's charset file), else from the rapidocr-onnxruntime wheel on ONNX Runtime."""
    bundle: Bundle = load_bundle(folder) if folder else second_opinion_bundle()
    spec = bundle.model("second_recognizer")
    if bundle.format == "tflite":
        tflite = TfliteRunner(spec.path, runtime, num_threads)
        return SecondOpinion(tflite, list(bundle.charset), bundle.name)
    runner = OnnxRunner(spec.path, spec.input_nhwc, num_threads)
    characters = runner.metadata.get("character")
    if not characters:
        raise BundleError(f"second plate recogniser {spec.path}: no 'character' metadata")
    return SecondOpinion(runner, characters.splitlines(), bundle.name)
