"""The interpreters that run the plate models: LiteRT, tflite-runtime and ONNX Runtime.

Each model is wrapped in a :class:`ModelRunner`: NHWC float32 in, the model's outputs out, so the
pre- and post-processing in :mod:`drivers.plate.pipeline` is the same whatever runs underneath.

TFLite runtime choice follows Frigate's ``cpu_tfl`` plugin: try one package and fall back to the
other. ``ai-edge-litert`` (Google's successor of ``tflite-runtime``) is tried first; the last
``tflite-runtime`` release (2.14.0, Python ≤ 3.11, numpy < 2) runs the recogniser's LSTM WHILE
loops about 4× slower, so a bundle may name an unrolled recogniser for it.

The vendor packages are imported inside the functions, never at module import, so a machine
without them fails only when that runtime is chosen, with a message that names the package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from drivers.plate.base import PlateReaderError

F32 = npt.NDArray[np.float32]
TfliteRuntime = Literal["auto", "litert", "tflite-runtime"]


class ModelRunner(Protocol):
    """One loaded model. ``input_shape`` is NHWC with a batch of 1."""

    name: str
    runtime: str
    input_shape: tuple[int, int, int, int]

    def __call__(self, x: F32) -> list[F32]:
        """Run the model on ``x`` (NHWC float32) and return copies of its outputs."""

    def run_filled(self, fill: Callable[[F32], None]) -> list[F32]:
        """Run the model on an input that ``fill`` writes in place into the NHWC buffer it is
        given (saves copying a 5 MB detector input; the buffer must not be kept)."""

    def set_input(self, x: F32) -> None:
        """Place ``x`` as the input without running (for timing the bare invoke)."""

    def invoke(self) -> None:
        """The bare interpreter call on the input already set (benchmark baseline)."""


def _tflite_interpreter_class(runtime: TfliteRuntime) -> tuple[str, Callable[..., Any]]:
    errors: list[str] = []
    if runtime in ("auto", "litert"):
        try:
            from ai_edge_litert.interpreter import Interpreter as LiteRtInterpreter

            return "litert", LiteRtInterpreter
        except ImportError as err:
            errors.append(f"ai-edge-litert: {err}")
    if runtime in ("auto", "tflite-runtime"):
        try:
            from tflite_runtime.interpreter import Interpreter as TfliteInterpreter

            return "tflite-runtime", TfliteInterpreter
        except ImportError as err:
            errors.append(f"tflite-runtime: {err}")
    raise PlateReaderError(
        "no TFLite runtime is installed (tried "
        + "; ".join(errors)
        + "); install the 'plate' extra (ai-edge-litert) or tflite-runtime==2.14.0 "
        "on Python ≤ 3.11, or use the 'onnx' plate reader"
    )


def tflite_runtime_available(runtime: TfliteRuntime = "auto") -> str | None:
    """The TFLite runtime that :func:`load_tflite` would use, or ``None``."""
    try:
        return _tflite_interpreter_class(runtime)[0]
    except PlateReaderError:
        return None


class TfliteRunner:
    """A ``.tflite`` model in LiteRT or tflite-runtime."""

    def __init__(self, path: Path, runtime: TfliteRuntime = "auto", num_threads: int = 2):
        self.name = path.name
        self.runtime, interpreter_class = _tflite_interpreter_class(runtime)
        try:
            self._interpreter = interpreter_class(model_path=str(path), num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise PlateReaderError(f"{self.runtime} cannot load model {path}: {err}") from err
        (inp,) = self._interpreter.get_input_details()
        self._input_index: int = inp["index"]
        shape = tuple(int(d) for d in inp["shape"])
        if len(shape) != 4:
            raise PlateReaderError(f"model {path}: expected a 4-d input, got shape {shape}")
        self.input_shape: tuple[int, int, int, int] = (shape[0], shape[1], shape[2], shape[3])
        self._output_indices: list[int] = [
            d["index"] for d in self._interpreter.get_output_details()
        ]

    def set_input(self, x: F32) -> None:
        self._interpreter.set_tensor(self._input_index, x)

    def invoke(self) -> None:
        self._interpreter.invoke()

    def __call__(self, x: F32) -> list[F32]:
        self._interpreter.set_tensor(self._input_index, x)
        self._interpreter.invoke()
        return self._outputs()

    def _outputs(self) -> list[F32]:
        # get_tensor already returns a copy (both LiteRT and tflite-runtime): no second one
        return [np.asarray(self._interpreter.get_tensor(i)) for i in self._output_indices]

    def run_filled(self, fill: Callable[[F32], None]) -> list[F32]:
        # The interpreter's own input memory: the interpreter refuses to run while a numpy view
        # of it is alive, so the view is dropped before invoke().
        view = self._interpreter.tensor(self._input_index)()
        fill(view)
        del view
        self._interpreter.invoke()
        return self._outputs()


class OnnxRunner:
    """An ``.onnx`` model in ONNX Runtime, fed NHWC like the TFLite models (transposed here)."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, input_shape: tuple[int, int, int, int], num_threads: int = 2):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise PlateReaderError(
                f"the 'onnx' plate reader needs the Python package onnxruntime ({err}); "
                "install the 'plate-onnx' extra"
            ) from err
        self.name = path.name
        self.input_shape = input_shape
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped exceptions
            raise PlateReaderError(f"onnxruntime cannot load model {path}: {err}") from err
        self._input_name: str = self._session.get_inputs()[0].name
        #: the model's custom metadata (PaddleOCR's converted recognisers keep their
        #: character list here, under ``character``)
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        self._feed: dict[str, Any] = {}

    def set_input(self, x: F32) -> None:
        self._feed = {self._input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))}

    def invoke(self) -> None:
        self._session.run(None, self._feed)

    def __call__(self, x: F32) -> list[F32]:
        self.set_input(x)
        outputs = self._session.run(None, self._feed)
        return [np.asarray(o, dtype=np.float32) for o in outputs]

    def run_filled(self, fill: Callable[[F32], None]) -> list[F32]:
        x = np.empty(self.input_shape, dtype=np.float32)
        fill(x)
        return self(x)
