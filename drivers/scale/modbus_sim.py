"""A simulated Modbus indicator / WIM controller: a real pymodbus server, in a thread.

It serves the registers a register map describes, filled from a weight script (a truck
crossing the axle scale, see :mod:`drivers.scale.trace`) as the requests come, plus a vehicle
detector discrete input and WIM records. Tests use it as the peer of the Modbus backends, the
benchmark polls it, and ``roadside-agent probe scale --simulate`` points a backend at it.

Transport: TCP on a loopback port (``port=0`` picks a free one, see :attr:`port`), or RTU on a
serial port (one side of a pty pair).

Fault injection: :meth:`set_silent` makes the device stop answering (a dead device on the bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from drivers.scale.registermap import RegisterMap, ValueSpec, load_map

WeightScript = Callable[[float], tuple[float, bool, frozenset[str]]]

REGISTERS = 200


def constant(weight_kg: float, stable: bool = True) -> WeightScript:
    return lambda _t: (weight_kg, stable, frozenset())


def playback(samples: Sequence[tuple[float, float]], loop: bool = True) -> WeightScript:
    """Play ``(t_s, kg)`` samples by elapsed time (looping), marking motion on steep change."""
    times = [s[0] for s in samples]
    span = times[-1] - times[0] + (times[1] - times[0] if len(times) > 1 else 1.0)

    def script(t: float) -> tuple[float, bool, frozenset[str]]:
        import bisect

        rel = (t % span) if loop else min(t, span)
        i = min(len(samples) - 1, bisect.bisect_right(times, times[0] + rel) - 1)
        kg = samples[i][1]
        prev = samples[max(0, i - 5)][1]
        stable = abs(kg - prev) < 50.0
        return kg, stable, frozenset()

    return script


class ModbusDeviceSimulator:
    """A pymodbus server answering as an indicator described by ``map``."""

    def __init__(
        self,
        map_name: str = "generic",
        script: WeightScript | None = None,
        *,
        device_ids: Sequence[int] = (1,),
        host: str = "127.0.0.1",
        port: int = 0,
        serial_port: str | None = None,
        baudrate: int = 9600,
    ) -> None:
        self.map: RegisterMap = load_map(map_name)
        self.script: WeightScript = script or constant(0.0)
        self.device_ids = tuple(device_ids)
        self.host = host
        self.port = port
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.registers: list[int] = [0] * REGISTERS
        self.detector_occupied = False
        self.silent_ids: set[int] = set()
        self.failing_reads: dict[int, int] = {}  # start address → reads still to fail
        self.requests = 0
        self._t0 = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # ----- what the device shows -------------------------------------------------------
    def set_script(self, script: WeightScript) -> None:
        self.script = script
        self._t0 = time.monotonic()

    def set_detector(self, occupied: bool) -> None:
        self.detector_occupied = occupied

    def set_silent(self, device_id: int, silent: bool = True) -> None:
        """Make ``device_id`` stop answering (a dead device on the bus) or answer again.

        On a serial line it stays silent (the client times out); over TCP it answers with
        exception 0x0B, as a Modbus gateway does for a dead device behind it."""
        if silent:
            self.silent_ids.add(device_id)
        else:
            self.silent_ids.discard(device_id)

    def fail_reads(self, start_address: int, times: int = 1) -> None:
        """Answer the next ``times`` register reads starting at ``start_address`` with
        exception 04 (device failure), as a WIM controller does while it is still writing
        the record block."""
        self.failing_reads[start_address] = times

    def write(self, spec: ValueSpec, values: Sequence[float]) -> None:
        for i, value in enumerate(values):
            regs = spec.encode(value)
            at = spec.address + i * spec.width
            self.registers[at : at + len(regs)] = regs

    def push_record(
        self,
        axle_loads_kg: Sequence[int],
        *,
        axle_spacings_mm: Sequence[int] = (),
        speed_kmh: float = 40.0,
        lane: int = 1,
        status: int = 0,
        gross_kg: int | None = None,
        axle_count: int | None = None,
    ) -> int:
        """Publish a WIM record and bump the counter; returns the new counter value."""
        rec = self.map.record
        if rec is None:
            raise ValueError(f"map {self.map.name} has no record section")
        loads = list(axle_loads_kg) + [0] * (rec.axle_loads_kg.count - len(axle_loads_kg))
        self.write(rec.axle_loads_kg, loads)
        if rec.axle_spacings_mm is not None:
            spacings = list(axle_spacings_mm)
            spacings += [0] * (rec.axle_spacings_mm.count - len(spacings))
            self.write(rec.axle_spacings_mm, spacings)
        self.write(rec.gross_kg, [gross_kg if gross_kg is not None else sum(axle_loads_kg)])
        self.write(rec.axle_count, [axle_count if axle_count is not None else len(axle_loads_kg)])
        if rec.speed_kmh is not None:
            self.write(rec.speed_kmh, [speed_kmh])
        if rec.lane is not None:
            self.write(rec.lane, [lane])
        if rec.status is not None:
            self.write(rec.status, [status])
        counter = (self.registers[rec.counter.address] + 1) & 0xFFFF
        self.write(rec.counter, [counter])
        return counter

    def _refresh(self) -> None:
        if self.map.weight is None:
            return
        kg, stable, flags = self.script(time.monotonic() - self._t0)
        factor = 0.001 if self.map.unit == "t" else 1.0
        self.write(self.map.weight, [kg * factor])
        st = self.map.status
        if st is not None:
            word = 0
            bits = {
                "stable": st.stable if stable else None,
                "motion": st.motion if not stable else None,
                "zero": st.zero if abs(kg) < 20 else None,
                "ok": st.ok if "fault" not in flags else None,
                "overload": st.overload if "overload" in flags else None,
                "fault": st.fault if "fault" in flags else None,
                "negative": st.negative if kg < 0 else None,
            }
            for bit in bits.values():
                if bit is not None:
                    word |= 1 << bit
            self.registers[st.address] = word

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: Any,
        *,
        device_id: int,
    ) -> Any:
        from pymodbus.constants import ExcCodes

        self.requests += 1
        if device_id in self.silent_ids:
            if self.serial_port is not None:
                # On RS-485 a dead device is silence: the client times out.
                from pymodbus.exceptions import NoSuchIdException

                raise NoSuchIdException(f"device {device_id} is silent")
            return ExcCodes.GATEWAY_NO_RESPONSE  # what a TCP gateway answers for it
        if function_code == 2:
            spec = self.map.detector
            level = self.detector_occupied
            if spec is not None and not spec.occupied_when:
                level = not level
            reg = address - start_address
            if 0 <= reg < len(current_registers):
                mask = 1 << (address % 16)
                current_registers[reg] = (current_registers[reg] & ~mask) | (mask if level else 0)
            return None
        if function_code in (3, 4) and self.failing_reads.get(address, 0) > 0:
            self.failing_reads[address] -= 1
            return ExcCodes.DEVICE_FAILURE
        if function_code in (3, 4):
            self._refresh()
            current_registers[:] = self.registers[: len(current_registers)]
        return None

    # ----- server life ------------------------------------------------------------------
    def start(self, timeout_s: float = 5.0) -> ModbusDeviceSimulator:
        self._thread = threading.Thread(target=self._run, name="modbus-sim", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError("modbus simulator did not start")
        if self._error is not None:
            raise RuntimeError(f"modbus simulator failed: {self._error}") from self._error
        return self

    def _devices(self) -> list[Any]:
        import functools

        from pymodbus.simulator import DataType, SimData, SimDevice

        devices = []
        for dev_id in self.device_ids:
            regs = [SimData(0, count=REGISTERS, values=0, datatype=DataType.REGISTERS)]
            bits = [SimData(0, count=256, values=False, datatype=DataType.BITS)]
            devices.append(
                SimDevice(
                    dev_id,
                    simdata=(list(bits), list(bits), list(regs), list(regs)),
                    action=functools.partial(self._action, device_id=dev_id),
                )
            )
        return devices

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as err:
            self._error = err
            self._started.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        from pymodbus import FramerType
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        if self.serial_port is not None:
            self._server = ModbusSerialServer(
                self._devices(),
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                ignore_missing_devices=True,
            )
        else:
            self._server = ModbusTcpServer(
                self._devices(), address=(self.host, self.port), ignore_missing_devices=True
            )
        await self._server.serve_forever(background=True)
        transport = self._server.transport
        if self.serial_port is None and transport is not None:
            self.port = transport.sockets[0].getsockname()[1]
        self._started.set()
        await self._server.serving

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            try:
                fut = asyncio.run_coroutine_threadsafe(server.shutdown(), loop)
                fut.result(timeout=5)
            except Exception:  # the loop may be gone already
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ModbusDeviceSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m drivers.scale.modbus_sim [--map NAME] [--port N] [--kg W]``: serve until
    stdin closes; prints the TCP port on the first line (for benchmarks and demos)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="simulated Modbus indicator")
    parser.add_argument("--map", default="generic")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kg", type=float, default=None, help="constant weight (default: trucks)")
    args = parser.parse_args(argv)
    if args.kg is not None:
        script = constant(args.kg)
    else:
        from drivers.scale.trace import TruckPass, axle_scale_trace

        truck = TruckPass((7100, 9800, 9700, 11800, 11900, 11700), (3400, 1350, 7100, 1310, 1310))
        script = playback(axle_scale_trace(truck))
    sim = ModbusDeviceSimulator(args.map, script, host=args.host, port=args.port).start()
    print(sim.port, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()
    sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
