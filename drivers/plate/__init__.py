"""Plate readers: the on-device model (LiteRT / tflite-runtime / ONNX Runtime) and a twin."""

from drivers.plate.base import PlateReader, PlateReaderConfig, PlateReaderError
from drivers.registry import Registry

PLATE_READERS: Registry[PlateReader] = Registry(
    "plate reader",
    {
        "simulated": "drivers.plate.simulated:SimulatedPlateReader",
        "tflite": "drivers.plate.model:TflitePlateReader",
        "onnx": "drivers.plate.model:OnnxPlateReader",
        "auto": "drivers.plate.model:AutoPlateReader",
    },
)

__all__ = ["PLATE_READERS", "PlateReader", "PlateReaderConfig", "PlateReaderError"]
