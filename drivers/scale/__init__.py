"""Scale drivers: weighing indicators, axle scales and WIM controllers."""

from drivers.registry import Registry
from drivers.scale.base import (
    DetectorEdge,
    Measurement,
    Scale,
    ScaleConfig,
    ScaleError,
    WeightSample,
    WimRecord,
)

# Backend ``type`` names are fixed: technicians' configs and other tools use them.
SCALES: Registry[Scale] = Registry(
    "scale",
    {
        "simulated": "drivers.scale.simulated:SimulatedWimLane",
    },
)

__all__ = [
    "SCALES",
    "DetectorEdge",
    "Measurement",
    "Scale",
    "ScaleConfig",
    "ScaleError",
    "WeightSample",
    "WimRecord",
]
