"""Modbus TCP and Modbus RTU (RS-485) indicators, read through a register map.

Every poll is one read of the block that covers the weight and the status word (one round
trip: the poll rate is the link's), plus one discrete-input read when a vehicle detector is
configured. The layout is data (:mod:`drivers.scale.registermap`), so a new indicator model
is a TOML file.

Faults: every pymodbus / pyserial failure in a poll becomes a :class:`ScaleError` naming the
device, the line, the request and the last raw frames; the device then waits its own
:class:`Backoff` (0.2 s doubling to ``reconnect_max_s``) while the others on the same RS-485
bus keep polling. A line that failed is closed and reopened by name on the next attempt, so a
USB adapter that was unplugged comes back within ``reconnect_max_s`` of its return.
"""

from __future__ import annotations

import collections
import logging
import struct
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.clock import Clock
from drivers.scale.base import (
    Backoff,
    DetectorEdge,
    FaultLog,
    Measurement,
    Scale,
    ScaleConfig,
    ScaleError,
    WeightSample,
    hex_tail,
)
from drivers.scale.registermap import RegisterMap, load_map
from drivers.scale.serial_line import ModbusLink, acquire_link, release_link

log = logging.getLogger(__name__)
# pymodbus logs every timeout and failed connect at ERROR, with neither device name nor bytes;
# a dead indicator polled 20 times a second would flood the journal. Our FaultLog reports the
# same failures once, with the device, the line and the raw frames.
logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)


class ModbusScaleConfig(ScaleConfig):
    """Keys every Modbus scale has."""

    map: str = Field(
        default="generic",
        description="register map: a name in firmware_config/registermaps or a .toml path",
    )
    device_id: int = Field(default=1, ge=0, le=247, description="Modbus unit / slave address")
    poll_interval_s: float = Field(
        default=0.05, ge=0, description="time between polls (0: as fast as the line allows)"
    )
    timeout_s: float = Field(default=0.5, gt=0, description="answer timeout of one request")
    retries: int = Field(default=0, ge=0, le=5, description="repeats of an unanswered request")
    reconnect_max_s: float = Field(
        default=2.0, gt=0, description="longest wait between attempts on a dead device or line"
    )
    detector: bool = Field(
        default=False, description="read the vehicle detector input named in the map"
    )
    unit: Literal["kg", "t"] | None = Field(
        default=None, description="override the map's weight unit (kg or t)"
    )


class ModbusTcpConfig(ModbusScaleConfig):
    host: str = Field(description="indicator or gateway IP address / host name")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port")


class ModbusRtuConfig(ModbusScaleConfig):
    port: str = Field(description="serial port: device path, /dev/serial/by-id/... or pyserial URL")
    baudrate: int = Field(default=9600, description="bits per second")
    parity: Literal["N", "E", "O"] = Field(default="N", description="N, E or O")
    bytesize: Literal[7, 8] = Field(default=8, description="data bits")
    stopbits: Literal[1, 2] = Field(default=1, description="stop bits")


def tcp_link_factory(
    host: str, port: int, timeout_s: float, retries: int
) -> Callable[[Callable[[bool, bytes], bytes]], Any]:
    def make(trace: Callable[[bool, bytes], bytes]) -> Any:
        from pymodbus.client import ModbusTcpClient

        return ModbusTcpClient(
            host, port=port, timeout=timeout_s, retries=retries, trace_packet=trace
        )

    return make


def rtu_link_factory(config: ModbusRtuConfig) -> Callable[[Callable[[bool, bytes], bytes]], Any]:
    def make(trace: Callable[[bool, bytes], bytes]) -> Any:
        from pymodbus.client import ModbusSerialClient

        return ModbusSerialClient(
            config.port,
            baudrate=config.baudrate,
            parity=config.parity,
            bytesize=config.bytesize,
            stopbits=config.stopbits,
            timeout=config.timeout_s,
            retries=config.retries,
            trace_packet=trace,
        )

    return make


class ModbusPoller(Scale):
    """Shared poll loop of the Modbus backends; subclasses implement :meth:`_poll`."""

    config: ModbusScaleConfig

    def __init__(
        self,
        config: ModbusScaleConfig,
        clock: Clock | None,
        lane: int,
        link_key: str,
        factory: Callable[[Callable[[bool, bytes], bytes]], Any],
    ) -> None:
        super().__init__(config, clock)
        self.lane = lane
        self.map: RegisterMap = load_map(config.map)
        self.device = f"scale {config.id} ({config.type} {link_key} unit {config.device_id})"
        self.backoff = Backoff(self.clock, first_s=0.2, max_s=config.reconnect_max_s)
        self.fault_log = FaultLog(log, self.device, self.clock)
        self.link: ModbusLink = acquire_link(link_key, factory, self.device)
        self._pending: collections.deque[Measurement] = collections.deque()
        self._next_poll = 0.0
        self._detector_occupied: bool | None = None
        self._requests: dict[tuple[int, int, str], tuple[str, Callable[[Any], Any]]] = {}

    def _recv_internal(self, timeout_s: float | None) -> Measurement | None:
        if self._pending:
            return self._pending.popleft()
        deadline = None if timeout_s is None else self.clock.monotonic() + timeout_s
        while True:
            now = self.clock.monotonic()
            due = max(self._next_poll, now + self.backoff.wait_s())
            if due > now:
                limit = due - now if deadline is None else min(due - now, deadline - now)
                if limit > 0 and self._closed.wait(limit):
                    return None
                if self.clock.monotonic() < due:
                    if deadline is not None and self.clock.monotonic() >= deadline:
                        return None
                    continue
            self._next_poll = self.clock.monotonic() + self.config.poll_interval_s
            try:
                measurement = self._poll()
            except ScaleError as err:
                delay = self.backoff.failed()
                message = f"{err}; next attempt in {delay:.1f} s"
                self.fault_log.failure(message, self.raw_tail_hex())
                raise ScaleError(
                    f"{self.device}: {message}; last raw frames: {self.raw_tail_hex()}"
                ) from err
            except Exception as err:  # a poll-loop iteration must never kill the reader
                delay = self.backoff.failed()
                message = f"unexpected {type(err).__name__}: {err}; next attempt in {delay:.1f} s"
                self.fault_log.failure(message, self.raw_tail_hex())
                raise ScaleError(f"{self.device}: {message}") from err
            self.backoff.succeeded()
            self.fault_log.success()
            if measurement is not None:
                return measurement
            self._alive()
            if self._pending:
                return self._pending.popleft()
            if deadline is not None and self.clock.monotonic() >= deadline:
                return None

    def _poll(self) -> Measurement | None:
        raise NotImplementedError

    def _request(self, start: int, count: int, what: str) -> tuple[str, Callable[[Any], Any]]:
        """The label and the call of one register read (built once, used every poll)."""
        device_id = self.config.device_id
        if self.map.table == "input":

            def fn(client: Any) -> Any:
                return client.read_input_registers(start, count=count, device_id=device_id)
        else:

            def fn(client: Any) -> Any:
                return client.read_holding_registers(start, count=count, device_id=device_id)

        return f"{what}: read {self.map.table} registers {start}..{start + count - 1}", fn

    def _read_registers(self, start: int, count: int, what: str) -> list[int]:
        key = (start, count, what)
        request = self._requests.get(key)
        if request is None:
            request = self._requests[key] = self._request(start, count, what)
        label, fn = request
        response = self.link.call(self.raw_tail, label, fn)
        registers = list(response.registers)
        if len(registers) < count:
            raise ScaleError(f"{label}: expected {count} registers, got {len(registers)}")
        return registers[:count]

    def _read_detector(self) -> None:
        spec = self.map.detector
        if not self.config.detector or spec is None:
            return
        device_id = self.config.device_id

        def fn(client: Any) -> Any:
            return client.read_discrete_inputs(spec.address, count=1, device_id=device_id)

        response = self.link.call(self.raw_tail, f"read detector input {spec.address}", fn)
        occupied = bool(response.bits[0]) == spec.occupied_when
        if occupied != self._detector_occupied:
            if self._detector_occupied is not None or occupied:
                self._pending.append(DetectorEdge(at=self.clock.now(), occupied=occupied))
            self._detector_occupied = occupied

    def _shutdown_internal(self) -> None:
        release_link(self.link)


class ModbusIndicator(ModbusPoller):
    """An indicator whose weight (and status word) sit in registers: one read per poll."""

    def __init__(
        self,
        config: ModbusScaleConfig,
        clock: Clock | None,
        lane: int,
        link_key: str,
        factory: Callable[[Callable[[bool, bytes], bytes]], Any],
    ) -> None:
        super().__init__(config, clock, lane, link_key, factory)
        self._block = self.map.weight_block()
        self._decode = self.map.weight_decoder(self._block[0])
        self._factor = 1.0
        if config.unit is not None and config.unit != self.map.unit:
            self._factor = 1000.0 if config.unit == "t" else 0.001

    def _poll(self) -> Measurement | None:
        start, count = self._block
        registers = self._read_registers(start, count, "weight")
        try:
            weight, stable, flags = self._decode(registers)
        except ValueError as err:
            raise ScaleError(f"map {self.map.name!r}: {err}") from err
        self._read_detector()
        return WeightSample(
            at=self.clock.now(),
            gross_kg=weight * self._factor,
            stable=stable,
            flags=flags,
            raw=struct.pack(f">{len(registers)}H", *registers),
        )


class ModbusTcpScale(ModbusIndicator):
    """An indicator on Modbus TCP (or an RS-485 gateway with several unit ids)."""

    Config = ModbusTcpConfig
    config: ModbusTcpConfig

    def __init__(self, config: ModbusTcpConfig, clock: Clock | None = None, lane: int = 1):
        super().__init__(
            config,
            clock,
            lane,
            f"tcp://{config.host}:{config.port}",
            tcp_link_factory(config.host, config.port, config.timeout_s, config.retries),
        )


class ModbusRtuScale(ModbusIndicator):
    """An indicator on Modbus RTU over RS-485; several may share one port."""

    Config = ModbusRtuConfig
    config: ModbusRtuConfig

    def __init__(self, config: ModbusRtuConfig, clock: Clock | None = None, lane: int = 1):
        super().__init__(config, clock, lane, config.port, rtu_link_factory(config))


class ModbusDetectorConfig(BaseModel):
    """A vehicle detector (loop / light curtain) on a Modbus I/O module's discrete input, for
    lanes whose scale is not itself on Modbus (XK3190, Toledo)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="", description="I/O module IP address (Modbus TCP); empty: RTU")
    port: int | str = Field(
        default=502, description="TCP port with host, else the serial port / pyserial URL (RTU)"
    )
    baudrate: int = Field(default=9600, description="bits per second (RTU)")
    parity: Literal["N", "E", "O"] = Field(default="N", description="N, E or O (RTU)")
    device_id: int = Field(default=1, ge=0, le=247, description="Modbus unit / slave address")
    address: int = Field(default=0, ge=0, le=65535, description="discrete input address (02)")
    occupied_when: bool = Field(default=True, description="input level meaning 'vehicle'")
    poll_interval_s: float = Field(default=0.05, ge=0, description="time between polls")
    timeout_s: float = Field(default=0.3, gt=0, description="answer timeout")


class ModbusDetector:
    """Polls one discrete input and reports its changes as :class:`DetectorEdge` s.

    A failure is logged (FaultLog) and retried after a backoff; it never stops the scale it
    belongs to, whose weight stream stays usable without the detector.
    """

    def __init__(
        self, config: ModbusDetectorConfig, clock: Clock, tail: collections.deque[bytes], owner: str
    ) -> None:
        self.config = config
        self.clock = clock
        self.tail = tail
        if config.host:
            key = f"tcp://{config.host}:{config.port}"
            factory = tcp_link_factory(config.host, int(config.port), config.timeout_s, 0)
        else:
            key = str(config.port)
            factory = rtu_link_factory(
                ModbusRtuConfig(
                    type="modbus_rtu",
                    port=str(config.port),
                    baudrate=config.baudrate,
                    parity=config.parity,
                    timeout_s=config.timeout_s,
                )
            )
        self.device = f"{owner} detector ({key} unit {config.device_id} input {config.address})"
        self.link = acquire_link(key, factory, self.device)
        self.backoff = Backoff(clock, first_s=0.2, max_s=2.0)
        self.fault_log = FaultLog(log, self.device, clock)
        self.occupied: bool | None = None
        self._next = 0.0
        self.last_error = ""

    def poll(self) -> DetectorEdge | None:
        """Poll when due; the edge if the input changed."""
        now = self.clock.monotonic()
        if now < self._next or not self.backoff.ready():
            return None
        self._next = now + self.config.poll_interval_s
        cfg = self.config

        def fn(client: Any) -> Any:
            return client.read_discrete_inputs(cfg.address, count=1, device_id=cfg.device_id)

        try:
            response = self.link.call(self.tail, f"read detector input {cfg.address}", fn)
        except ScaleError as err:
            delay = self.backoff.failed()
            self.last_error = f"{err}; next attempt in {delay:.1f} s"
            self.fault_log.failure(self.last_error, hex_tail(self.tail))
            return None
        self.backoff.succeeded()
        self.fault_log.success()
        occupied = bool(response.bits[0]) == cfg.occupied_when
        if occupied == self.occupied:
            return None
        first = self.occupied is None
        self.occupied = occupied
        if first and not occupied:
            return None
        return DetectorEdge(at=self.clock.now(), occupied=occupied)

    def release(self) -> None:
        release_link(self.link)
