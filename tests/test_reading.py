"""Plate reading on several cores (agent.pipeline.reading): reads finish in any order, but each
lane's records are sealed in the order its vehicles left the scale; a hung reader holds back
neither the other lanes nor, for ever, its own; shutdown still stores every vehicle.

The readers here are the simulated reader (it reads the replayed photo's label) behind a gate
whose latency the test controls: the real model takes 60-200 ms a frame, which is exactly what
must not decide the order."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from agent.config import StationConfig, parse_config
from agent.domain import Frame, PlateRead, VehicleWeighing
from agent.pipeline.capture import TriggerResult
from agent.pipeline.reading import PipelineConfig, ReaderPool, reader_count
from agent.station.supervisor import Station
from drivers import traffic
from drivers.plate import PLATE_READERS
from drivers.plate.base import PlateReader, PlateReaderConfig
from drivers.plate.simulated import SimulatedPlateReader

from .conftest import DEMO_CONFIG, Mosquitto, wait_until

T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)


class GateReader(PlateReader):
    """Reads ``PLATE`` from any frame; a frame whose camera and time are in ``holds`` waits
    there until its event is set (a reader whose latency the test controls)."""

    def __init__(self, holds: dict[tuple[str, datetime], threading.Event]) -> None:
        super().__init__(PlateReaderConfig(type="gate"))
        self.holds = holds
        self.read_frames: list[tuple[str, datetime]] = []
        self.entered: list[tuple[str, datetime]] = []

    def _read_internal(self, frame: Frame) -> list[PlateRead]:
        key = (frame.camera_id, frame.captured_at)
        self.entered.append(key)
        hold = self.holds.get(key)
        if hold is not None:
            assert hold.wait(30), "a held frame was never released"
        self.read_frames.append(key)
        return [
            PlateRead(
                text="苏L12345",
                color="blue",
                confidence=0.95,
                position="front",
                lane=frame.lane,
                read_at=frame.captured_at,
                camera_id=frame.camera_id,
            )
        ]


class Mono:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def weighing(lane: int, at: datetime) -> VehicleWeighing:
    return VehicleWeighing(
        lane=lane,
        measured_at=at,
        axle_loads_kg=(7000, 11000),
        axle_spacings_mm=(3600,),
        gross_kg=18000,
        speed_kmh=30.0,
        scale_id=f"wim-{lane}",
    )


def capture(lane: int, at: datetime) -> TriggerResult:
    frame = Frame(f"cam-front-{lane}", "front", lane, at, b"\xff\xd8jpeg")
    side = Frame(f"cam-side-{lane}", "side", lane, at, b"\xff\xd8jpeg")
    return TriggerResult(frames=[frame, side])


def run_pool(pool: ReaderPool) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=pool.run_worker, args=(i,), name=name, daemon=True)
        for i, name in enumerate(pool.names)
    ]
    for t in threads:
        t.start()
    return threads


@pytest.fixture
def holds() -> Iterator[dict[tuple[str, datetime], threading.Event]]:
    held: dict[tuple[str, datetime], threading.Event] = {}
    yield held
    for event in held.values():
        event.set()  # never leave a worker hanging past the test


def test_lane_order_is_kept_when_a_later_read_finishes_first(
    holds: dict[tuple[str, datetime], threading.Event],
) -> None:
    readers = [GateReader(holds), GateReader(holds)]
    woken = threading.Event()
    pool = ReaderPool(readers, wake=woken.set)
    threads = run_pool(pool)
    first, second = T0, T0 + timedelta(seconds=1)
    holds[("cam-front-1", first)] = threading.Event()
    a = pool.submit(1, weighing(1, first), capture(1, first))
    wait_until(lambda: ("cam-front-1", first) in readers[0].entered + readers[1].entered, 5, "A")
    b = pool.submit(1, weighing(1, second), capture(1, second))
    c = pool.submit(2, weighing(2, second), capture(2, second))
    wait_until(lambda: b.done and c.done, 5, "B and C read by the other reader")
    # B is read before A, but waits for it; lane 2 does not wait for lane 1
    assert pool.take_completed() == [c]
    assert c.capture.reads and c.capture.reads[0].lane == 2
    holds[("cam-front-1", first)].set()
    wait_until(lambda: a.done, 5, "A read once released")
    assert pool.take_completed() == [a, b]
    assert [r.read_at for r in a.capture.reads] == [first]  # each job its own frame's reads
    assert [r.read_at for r in b.capture.reads] == [second]
    assert pool.in_flight == 0
    pool.close()
    for t in threads:
        t.join(5)
        assert not t.is_alive()


def test_a_hung_reader_is_given_up_and_the_lane_goes_on(
    holds: dict[tuple[str, datetime], threading.Event],
) -> None:
    mono = Mono()
    readers = [GateReader(holds), GateReader(holds)]
    beats: dict[str, bool] = {}
    pool = ReaderPool(
        readers,
        stuck_after_s=10.0,
        monotonic=mono,
        beat=beats.__setitem__,
    )
    run_pool(pool)
    first, second = T0, T0 + timedelta(seconds=1)
    holds[("cam-front-1", first)] = threading.Event()  # this read hangs
    a = pool.submit(1, weighing(1, first), capture(1, first))
    wait_until(lambda: any(r.entered for r in readers), 5, "A being read")
    b = pool.submit(1, weighing(1, second), capture(1, second))
    wait_until(lambda: b.done, 5, "B read by the other reader")
    mono.now += 9.0
    assert pool.take_completed() == []  # not yet: 9 s on one frame may still be a slow read
    mono.now += 1.5
    # the watchdog sees the hung worker busy for 10.5 s (its stage is not idle)
    busy = {name: s for name, s in pool.busy_for().items() if s is not None}
    assert list(busy.values()) == [pytest.approx(10.5)]
    assert beats[next(iter(busy))] is False
    assert pool.take_completed() == [a, b]
    assert a.capture.reads == []
    assert any("stuck for 10 s" in f for f in a.capture.faults), a.capture.faults
    assert b.capture.reads  # the lane's next vehicle keeps its plate
    holds[("cam-front-1", first)].set()  # the late answer is dropped, nothing breaks
    wait_until(lambda: all(v for v in beats.values()), 5, "both workers idle again")
    assert a.capture.reads == []
    pool.close()


def test_when_every_reader_hangs_the_waiting_vehicles_are_given_up(
    holds: dict[tuple[str, datetime], threading.Event],
) -> None:
    mono = Mono()
    pool = ReaderPool([GateReader(holds)], stuck_after_s=10.0, monotonic=mono)
    run_pool(pool)
    first, second = T0, T0 + timedelta(seconds=1)
    holds[("cam-front-1", first)] = threading.Event()
    a = pool.submit(1, weighing(1, first), capture(1, first))
    wait_until(lambda: pool.busy_for()["plate-reader-1"] is not None, 5, "A being read")
    mono.now += 5
    c = pool.submit(2, weighing(2, second), capture(2, second))  # waits for a free reader
    mono.now += 5
    assert pool.take_completed() == [a]  # the hung frame (10 s); C has waited 5 s only
    mono.now += 5
    assert pool.take_completed() == [c]  # no reader started or finished a frame for 10 s
    assert any("no plate reader free" in f for f in c.capture.faults)
    holds[("cam-front-1", first)].set()
    pool.close()


def test_a_pool_without_readers_completes_at_once() -> None:
    pool = ReaderPool([])
    job = pool.submit(1, weighing(1, T0), capture(1, T0))
    assert pool.take_completed() == [job]
    assert job.capture.reads == [] and len(job.capture.frames) == 2


def test_reader_count_defaults_to_the_cores_up_to_four() -> None:
    assert reader_count(PipelineConfig(), cpu_count=2) == 2
    assert reader_count(PipelineConfig(), cpu_count=1) == 1
    assert reader_count(PipelineConfig(), cpu_count=16) == 4
    assert reader_count(PipelineConfig(plate_readers=6), cpu_count=2) == 6


# -- the whole station ---------------------------------------------------------------------


class HeldSimulatedReader(SimulatedPlateReader):
    """The simulated station's reader (labels of the replayed photos); the front frame of
    lane 1's first truck waits until ``RELEASE`` is set."""

    RELEASE = threading.Event()
    HELD: ClassVar[list[datetime]] = []
    lock = threading.Lock()

    def _read_internal(self, frame: Frame) -> list[PlateRead]:
        if frame.lane == 1 and frame.role == "front":
            with self.lock:
                if not self.HELD:
                    self.HELD.append(frame.captured_at)
            if frame.captured_at == self.HELD[0]:
                assert self.RELEASE.wait(30)
        return super()._read_internal(frame)


@pytest.fixture
def held_reader() -> Iterator[type[HeldSimulatedReader]]:
    PLATE_READERS.register("held-simulated", f"{__name__}:HeldSimulatedReader")
    HeldSimulatedReader.RELEASE.clear()
    HeldSimulatedReader.HELD.clear()
    yield HeldSimulatedReader
    HeldSimulatedReader.RELEASE.set()


def two_lane_config(broker: Mosquitto, trucks: int) -> StationConfig:
    """The demo station with a second lane, two held-simulated readers, short windows."""
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port = \d+$", f"port = {broker.port}", text, count=1)
    text = re.sub(r"(?m)^vehicles_per_min = .*$", f"vehicles_per_min = 300\ncount = {trucks}", text)
    text = text.replace('type = "simulated"       #', 'type = "held-simulated"  #')
    text = text.replace("[assemble]", "[pipeline]\nplate_readers = 2\n\n[assemble]")
    text = text.replace("ambiguity_margin_s = 0.3", "ambiguity_margin_s = 0.01")
    lane = text[text.index("[[lanes]]") :]
    lane2 = re.sub(r"(?m)^number = 1$", "number = 2", lane)
    lane2 = lane2.replace('id = "wim-1"', 'id = "wim-2"').replace('-1"', '-2"')
    return parse_config(text + "\n" + lane2, DEMO_CONFIG)


def lane_rows(data_dir: Path) -> dict[int, list[tuple[int, str, bool]]]:
    conn = sqlite3.connect(f"file:{data_dir / 'station.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT seq, json_extract(record_json, '$.lane'),"
            " json_extract(record_json, '$.measured_at'),"
            " json_array_length(record_json, '$.plates') FROM records ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    out: dict[int, list[tuple[int, str, bool]]] = {}
    for seq, lane, measured_at, plates in rows:
        out.setdefault(int(lane), []).append((int(seq), str(measured_at), bool(plates)))
    return out


def test_station_seals_each_lane_in_order_while_a_read_hangs_and_drains_at_stop(
    broker: Mosquitto, held_reader: type[HeldSimulatedReader], tmp_path: Path
) -> None:
    trucks = 4
    traffic.forget_roads()
    st = Station(two_lane_config(broker, trucks), data_dir=tmp_path / "station")
    st.start()
    try:
        assert len(st.reading.workers) == 2
        # lane 1's first truck hangs in one reader; lane 2's trucks are all sealed meanwhile
        wait_until(lambda: len(lane_rows(st.data_dir).get(2, [])) == trucks, 60, "lane 2")
        assert lane_rows(st.data_dir).get(1, []) == []  # lane 1 waits for its first truck
        wait_until(lambda: st._work.empty() and st.reading.in_flight == trucks, 30, "lane 1")
        stopper = threading.Thread(target=st.stop, args=(20.0,))
        stopper.start()  # stop while the read hangs: the pipeline must drain, not drop
        wait_until(st._producers_done.is_set, 10, "the scales ended")
        held_reader.RELEASE.set()
        stopper.join(30)
        assert not stopper.is_alive()
    finally:
        held_reader.RELEASE.set()
        st.stop()
    rows = lane_rows(st.data_dir)
    assert sorted(rows) == [1, 2]
    for lane, records in rows.items():
        assert len(records) == trucks, f"lane {lane}: {records}"
        times = [measured_at for _, measured_at, _ in records]
        assert times == sorted(times), f"lane {lane} sealed out of order: {records}"
        assert all(plated for _, _, plated in records), f"lane {lane}: a plate missing"
    assert rows[1][0][1].startswith(held_reader.HELD[0].isoformat()[:19])
