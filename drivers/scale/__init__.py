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
        "modbus_tcp": "drivers.scale.modbus:ModbusTcpScale",
        "modbus_rtu": "drivers.scale.modbus:ModbusRtuScale",
        "xk3190": "drivers.scale.xk3190:Xk3190Scale",
        "toledo": "drivers.scale.toledo:ToledoScale",
        "wim_modbus": "drivers.scale.wim_modbus:WimModbusScale",
        "wim_lines": "drivers.scale.wim_lines:WimLinesScale",
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
