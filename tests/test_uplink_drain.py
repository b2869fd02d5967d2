"""The sender drains by the byte window and waits on events, not on a timer (issue 18)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from platform_sim import PlatformSim

from agent.domain import VerdictStatus
from agent.uplink import delivery
from agent.uplink.client import UplinkConfig
from agent.uplink.delivery import Uplink, _Flight
from drivers.clock import ManualClock
from tests.conftest import (
    Mosquitto,
    StationData,
    complete_count,
    make_station,
    outbox_unacked,
    uplink_config,
    wait_until,
)

MakeUplink = Callable[..., Uplink]
MakeSim = Callable[..., PlatformSim]


def _idle_uplink(tmp_path: Path, **config: object) -> tuple[Uplink, ManualClock]:
    clock = ManualClock()
    data = make_station(tmp_path / "station", clock)
    up = Uplink(
        UplinkConfig(host="127.0.0.1", port=1, **config),  # type: ignore[arg-type]
        station_id=data.station_id,
        db=data.db,
        store=data.store,
        clock=clock,
    )
    return up, clock


def test_an_idle_sender_sleeps_until_its_next_deadline(tmp_path: Path) -> None:
    """No fixed poll: the wait is the time to the heartbeat, an ack timeout in flight or the
    next client set-up, capped by the backstop; events (commit, ack, connect) cut it short."""
    up, clock = _idle_uplink(tmp_path, heartbeat_s=60)
    now = clock.monotonic()
    up._client = object()  # type: ignore[assignment]  # a client exists: no set-up pending
    up._link.connected.set()
    up._next_heartbeat = now + 60
    assert up._idle_wait_s() == delivery.IDLE_WAIT_S  # nothing due soon: only the backstop
    up._next_heartbeat = now + 0.4
    assert abs(up._idle_wait_s() - 0.4) < 1e-9
    up._window.add(_Flight(1, ("event", "e1"), now + 0.1, 30.0))
    assert abs(up._idle_wait_s() - 0.1) < 1e-9
    clock.advance(0.5)
    assert up._idle_wait_s() == 0.0  # overdue: go now
    up._window.clear()
    up._link.connected.clear()  # offline: heartbeats and flights wait for the connection
    up._retry_at = clock.monotonic() + 0.25
    assert abs(up._idle_wait_s() - 0.25) < 1e-9


def test_the_outbox_look_up_follows_the_byte_room(tmp_path: Path) -> None:
    up, _clock = _idle_uplink(tmp_path)
    assert up._due_limit(500, 8_000_000, 0) == delivery.SEND_BATCH  # nothing sent yet
    up._mean_bytes = 400_000.0  # records with two 200 KB photos
    assert up._due_limit(500, 8_000_000, 0) == 21 + 4
    assert up._due_limit(500, 800_000, 0) == 3 + 4  # after an ack: room for two or three
    up._window.add(_Flight(1, ("event", "e1"), 0.0, 30.0))
    assert up._due_limit(500, 800_000, 2) == 3 + 1 + 2 + 4  # rows that may still look due
    up._mean_bytes = 2000.0  # records without photos: the batch caps it
    assert up._due_limit(500, 8_000_000, 0) == delivery.SEND_BATCH
    assert up._due_limit(3, 8_000_000, 0) == 3


def test_photos_drain_through_a_window_of_a_few_records(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    """A byte window that holds three records: each round admits what fits, every record
    arrives complete and is acknowledged once, none is sent twice."""
    ids = [
        station.commit(
            VerdictStatus.OVERLOADED if i % 4 == 0 else VerdictStatus.WITHIN_LIMIT,
            images=2,
            image_bytes=50_000,
        ).event_id
        for i in range(40)
    ]
    config = uplink_config(broker, max_unacked_bytes=300_000, ack_timeout_s=30.0)
    sim = make_sim(config)
    up = make_uplink(station, config)
    assert sim.wait_for(lambda s: complete_count(s) == 40, 60)
    wait_until(lambda: outbox_unacked(station) == 0, 10, "the outbox to be acknowledged")
    stats = up.stats()
    assert stats["resent"] == 0 and stats["sent"] == 40
    assert stats["queue_depth"] == 0
    assert set(sim.complete_ids()) == set(ids)
    assert sim.count("SELECT max(receipts) FROM records") == 1


def test_a_new_record_wakes_the_sender_at_once(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    """With the backstop far away, a commit still goes out on its wake()."""
    config = uplink_config(broker)
    sim = make_sim(config)
    up = make_uplink(station, config)
    wait_until(lambda: up.connected, 10, "the uplink to connect")
    old = delivery.IDLE_WAIT_S
    delivery.IDLE_WAIT_S = 30.0
    try:
        station.commit(VerdictStatus.OVERLOADED)
        up.wake()
        assert sim.wait_for(lambda s: complete_count(s) == 1, 5)
    finally:
        delivery.IDLE_WAIT_S = old
