"""Plate readers: the on-device model (LiteRT / tflite-runtime / ONNX Runtime), the ITS cameras'
on-board readings alone (``onboard``), and a twin."""

from drivers.plate.base import PlateReader, PlateReaderConfig, PlateReaderError
from drivers.registry import Registry

PLATE_READERS: Registry[PlateReader] = Registry(
    "plate reader",
    {
        "simulated": "drivers.plate.simulated:SimulatedPlateReader",
        "tflite": "drivers.plate.model:TflitePlateReader",
        "onnx": "drivers.plate.model:OnnxPlateReader",
        "auto": "drivers.plate.model:AutoPlateReader",
        "onboard": "drivers.plate.base:OnboardPlateReader",
    },
)

__all__ = ["PLATE_READERS", "PlateReader", "PlateReaderConfig", "PlateReaderError"]
