"""WIM controller, Modbus register-map mode: poll the record counter, read the record on change.

The controller keeps its last vehicle in a register block and counts records in a counter
register (layout: the map's ``[record]`` section). Each poll reads the counter only; when it
changes, one more read fetches the block and yields a :class:`WimRecord` with the values
exactly as the controller sent them (``raw["registers"]`` keeps the block).

The counter seen at start-up is taken as "already delivered" (the agent may have restarted;
the central platform de-duplicates by id, but a station must not invent a second passage).
A jump of more than one means records were missed while polling was down: the record is
flagged ``records_missed`` and a warning names how many. The counter is stored only once its
record has been read: a failed block read is repeated on the next poll, so a vehicle is read
until it is read, or (overwritten by the next one, or undecodable three times) reported
missing on the next record; never silently dropped.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from pydantic import Field, model_validator

from drivers.clock import Clock
from drivers.scale.base import Measurement, ScaleConfigError, ScaleError, WimRecord
from drivers.scale.modbus import ModbusPoller, ModbusScaleConfig, rtu_link_factory, tcp_link_factory
from drivers.scale.modbus import ModbusRtuConfig as _Rtu

log = logging.getLogger(__name__)

#: Reads of one record whose block cannot be decoded (NaN, a value outside the block) before
#: it is given up and reported as missed on the next record.
MAX_RECORD_ATTEMPTS = 3


class WimModbusConfig(ModbusScaleConfig):
    map: str = Field(default="generic_wim", description="register map with a [record] section")
    host: str = Field(default="", description="controller IP address (Modbus TCP); empty: RTU")
    port: int | str = Field(
        default=502, description="TCP port with host, else the serial port / pyserial URL (RTU)"
    )
    baudrate: int = Field(default=9600, description="bits per second (RTU)")
    parity: str = Field(default="N", pattern="^[NEO]$", description="N, E or O (RTU)")
    poll_interval_s: float = Field(default=0.1, ge=0, description="time between counter polls")

    @model_validator(mode="after")
    def _transport(self) -> WimModbusConfig:
        if self.host and not isinstance(self.port, int):
            raise ValueError("with host set, port is the TCP port number")
        if not self.host and not isinstance(self.port, str):
            raise ValueError("without host, port is the serial port (e.g. /dev/ttyUSB0)")
        return self


class WimModbusScale(ModbusPoller):
    """A WIM controller read through its Modbus record export."""

    Config = WimModbusConfig
    config: WimModbusConfig

    def __init__(self, config: WimModbusConfig, clock: Clock | None = None, lane: int = 1):
        if config.host:
            key = f"tcp://{config.host}:{config.port}"
            factory = tcp_link_factory(config.host, int(config.port), config.timeout_s, 0)
        else:
            key = str(config.port)
            rtu = _Rtu(
                type="modbus_rtu",
                port=str(config.port),
                baudrate=config.baudrate,
                parity=config.parity,
                timeout_s=config.timeout_s,
            )
            factory = rtu_link_factory(rtu)
        super().__init__(config, clock, lane, key, factory)
        if self.map.record is None:
            raise ScaleConfigError(f"register map {self.map.name!r} has no [record] section")
        self.record_spec = self.map.record
        self._block = self.map.record_block()
        self._counter: int | None = None  # the last record read (or given up)
        self._bad_attempts = 0  # reads of the current record that could not be decoded
        self._given_up = 0  # records given up since the last one delivered

    def _poll(self) -> Measurement | None:
        spec = self.record_spec.counter
        regs = self._read_registers(spec.address, spec.span, "record counter")
        counter = int(spec.decode(regs, spec.address)[0])
        if self._counter is None:
            self._counter = counter
            return None
        if counter == self._counter:
            return None
        # The counter is taken as read only once its record is: a block read that fails
        # (exception 04, no answer) is repeated on the next poll, and a record that can never
        # be decoded is given up after MAX_RECORD_ATTEMPTS and counted as missed.
        missed = (counter - self._counter) % (1 << (16 * spec.width)) - 1
        start, count = self._block
        block = self._read_registers(start, count, "record")
        self._note_raw(b"".join(r.to_bytes(2, "big") for r in block))
        try:
            record = self._decode(block, start, counter)
        except ValueError as err:
            self._bad_attempts += 1
            if self._bad_attempts < MAX_RECORD_ATTEMPTS:
                raise ScaleError(f"record {counter}: {err}") from err
            self._bad_attempts = 0
            self._counter = counter
            self._given_up += missed + 1
            raise ScaleError(
                f"record {counter}: {err}; given up after {MAX_RECORD_ATTEMPTS} reads, "
                "counted as missed"
            ) from err
        self._bad_attempts = 0
        self._counter = counter
        missed += self._given_up
        self._given_up = 0
        if missed > 0:
            log.warning("%s: %d record(s) missed before record %d", self.device, missed, counter)
            record = replace(
                record,
                flags=record.flags | {"records_missed"},
                raw=record.raw | {"missed": missed},
            )
        return record

    def _decode(self, block: list[int], start: int, counter: int) -> WimRecord:
        rec = self.record_spec

        def one(spec: Any) -> float:
            return float(spec.decode(block, start)[0])

        axle_count = int(one(rec.axle_count))
        n = max(0, min(axle_count, rec.axle_loads_kg.count))
        loads = tuple(round(v) for v in rec.axle_loads_kg.decode(block, start)[:n])
        spacings: tuple[int, ...] = ()
        if rec.axle_spacings_mm is not None and n > 1:
            spacings = tuple(round(v) for v in rec.axle_spacings_mm.decode(block, start)[: n - 1])
        flags: set[str] = set()
        if rec.status is not None:
            word = int(one(rec.status))
            for name, bit in rec.status_bits.items():
                if word >> bit & 1:
                    flags.add(name)
        if axle_count > rec.axle_loads_kg.count:
            flags.add("axles_truncated")
        lane = int(one(rec.lane)) if rec.lane is not None else self.lane
        return WimRecord(
            lane=lane or self.lane,
            at=self.clock.now(),
            axle_loads_kg=loads,
            gross_kg=round(one(rec.gross_kg)),
            axle_spacings_mm=spacings,
            speed_kmh=one(rec.speed_kmh) if rec.speed_kmh is not None else None,
            flags=frozenset(flags),
            raw={
                "counter": counter,
                "axle_count": axle_count,
                "block_start": start,
                "registers": list(block),
            },
        )
