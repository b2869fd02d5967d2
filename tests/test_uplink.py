"""Delivery against a real Mosquitto: order, outages, a platform that does not ack, restarts;
the sender filling its byte window and waiting on events, not on a timer."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from platform_sim import PlatformSim

from agent.domain import VerdictStatus
from agent.uplink import delivery
from agent.uplink.client import UplinkConfig
from agent.uplink.delivery import Uplink, _Flight
from drivers.clock import ManualClock
from tests.conftest import (
    Mosquitto,
    StationData,
    assert_delivered_exactly_once,
    complete_count,
    hours_ago,
    make_station,
    outbox_unacked,
    uplink_config,
    wait_until,
)

MakeUplink = Callable[..., Uplink]
MakeSim = Callable[..., PlatformSim]


def test_backlog_drains_alarms_then_live_violations_then_old_backlog(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    old_passages = [station.commit(measured_at=hours_ago(station.clock, 30)) for _ in range(5)]
    old_violations = [
        station.commit(VerdictStatus.OVERLOADED, measured_at=hours_ago(station.clock, 20))
        for _ in range(5)
    ]
    newer_passages = [station.commit(measured_at=hours_ago(station.clock, 1)) for _ in range(3)]
    live_violations = [station.commit(VerdictStatus.WARNING) for _ in range(4)]
    config = uplink_config(broker, live_window_s=600)
    up = make_uplink(station, config, start=False)
    alarm_ids = [
        station.alarm("scale-fault", f"lane 1 scale silent #{i}", {"lane": 1}) for i in range(2)
    ]
    sim = make_sim(config)
    up.start()
    assert sim.wait_for(lambda s: complete_count(s) == 17, 20)

    arrivals = sim.query(
        "SELECT alarm_id AS id, arrival FROM alarms UNION ALL SELECT event_id, arrival FROM records"
        " ORDER BY arrival"
    )
    expected = alarm_ids + [
        r.event_id for r in live_violations + old_violations + old_passages + newer_passages
    ]
    assert [a[0] for a in arrivals] == expected
    wait_until(lambda: outbox_unacked(station) == 0, 10, "the outbox to be acknowledged")


def test_broker_stopped_then_restarted_station_catches_up(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    config = uplink_config(broker)
    sim = make_sim(config)
    up = make_uplink(station, config)
    for _ in range(20):
        station.commit()
    up.wake()
    assert sim.wait_for(lambda s: complete_count(s) == 20, 20)
    broker.stop()
    wait_until(lambda: not up.connected, 10, "the uplink to notice the broker is gone")
    outage = [
        station.commit(VerdictStatus.OVERLOADED if i % 3 == 0 else VerdictStatus.WITHIN_LIMIT)
        for i in range(30)
    ]
    up.wake()
    assert outbox_unacked(station) >= 30
    broker.start()
    assert sim.wait_for(lambda s: complete_count(s) == 50, 30)
    wait_until(lambda: outbox_unacked(station) == 0, 15, "all acks")
    # what waited out the outage is sent in the promised order: violations, then passages.
    # The restarted broker has no persistence: what the station publishes before the simulator
    # has subscribed again is dropped and resent after the ack timeout, out of that order, so
    # the order is checked on the records delivered at their first sending.
    first_try = {
        ref
        for (ref,) in sqlite3.connect(station.data_dir / "station.db").execute(
            "SELECT ref FROM outbox WHERE kind = 'event' AND attempts = 1"
        )
    }
    arrived = [e for e in sim.arrival_order() if e in {r.event_id for r in outage} & first_try]
    violations = [r.event_id for r in outage if r.record["verdict"]["status"] == "overloaded"]
    passages = [r.event_id for r in outage if r.record["verdict"]["status"] != "overloaded"]
    assert arrived == [e for e in violations + passages if e in first_try]
    assert len(arrived) >= 10, f"only {len(arrived)} of 30 delivered at their first sending"
    assert_delivered_exactly_once(station, sim, config.max_unacked)


def test_broker_killed_mid_stream_with_images_in_flight(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    for i in range(150):
        station.commit(
            VerdictStatus.OVERLOADED if i % 4 == 0 else VerdictStatus.WITHIN_LIMIT,
            images=3,
            image_bytes=10_000,
        )
    config = uplink_config(broker, max_unacked=50)
    sim = make_sim(config)
    up = make_uplink(station, config)
    assert sim.wait_for(lambda s: complete_count(s) >= 20, 20)
    broker.kill()
    wait_until(lambda: not up.connected, 10, "the uplink to notice the broker died")
    broker.start()
    assert sim.wait_for(lambda s: complete_count(s) == 150, 60)
    wait_until(lambda: outbox_unacked(station) == 0, 15, "all acks")
    assert_delivered_exactly_once(station, sim, config.max_unacked)
    # every image arrived intact and belongs to its record
    assert sim.count("SELECT count(*) FROM images") == 450


def test_platform_not_acking_gets_resends_until_it_acks(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    config = uplink_config(broker, ack_timeout_s=0.3, ack_timeout_max_s=0.6)
    sim = make_sim(config, mode="no-ack")
    up = make_uplink(station, config)
    for _ in range(10):
        station.commit()
    up.wake()
    # the platform stored them all, yet without its ack nothing counts as delivered …
    assert sim.wait_for(lambda s: complete_count(s) == 10, 20)
    # … so the station sends them again after the ack timeout
    assert sim.wait_for(lambda s: s.count("SELECT min(receipts) FROM records") >= 3, 20)
    assert outbox_unacked(station) == 10
    published = (
        station.db.read()
        .execute("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
        .fetchone()[0]
    )
    assert published == 10  # PUBACK seen: published, not delivered
    sim.set_mode("normal")
    wait_until(lambda: outbox_unacked(station) == 0, 15, "all acks")
    assert_delivered_exactly_once(station, sim, window=10 * 20)
    attempts = [r[0] for r in station.db.read().execute("SELECT attempts FROM outbox")]
    assert min(attempts) >= 3


def test_late_acks_and_a_disconnecting_platform(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    config = uplink_config(broker, ack_timeout_s=0.3, ack_timeout_max_s=1.0)
    sim = make_sim(config, mode="ack-late", ack_delay_s=0.6)
    up = make_uplink(station, config)
    for _ in range(40):
        station.commit()
    up.wake()
    assert sim.wait_for(lambda s: complete_count(s) >= 10, 20)
    sim.set_mode("disconnect")
    for _ in range(20):
        station.commit(VerdictStatus.OVERLOADED)
    up.wake()
    sim.set_mode("normal")
    assert sim.wait_for(lambda s: complete_count(s) == 60, 30)
    wait_until(lambda: outbox_unacked(station) == 0, 15, "all acks")
    assert_delivered_exactly_once(station, sim, config.max_unacked)


def test_station_restart_resends_what_was_never_acked(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    config = uplink_config(broker, ack_timeout_s=600.0, ack_timeout_max_s=600.0)
    sim = make_sim(config, mode="no-ack")
    first = make_uplink(station, config)
    for _ in range(15):
        station.commit()
    alarm_id = station.alarm("clock-unsynchronised", "NTP lost", {})
    first.wake()
    assert sim.wait_for(lambda s: complete_count(s) == 15, 20)
    first.stop(2.0)
    sim.set_mode("normal")
    station.db.close()
    # a new process: new database handle, new uplink; the outbox alone says what is owed
    again = make_station(station.data_dir)
    again.committed = station.committed
    make_uplink(again, config)
    wait_until(lambda: outbox_unacked(again) == 0, 15, "the backlog after a restart")
    assert_delivered_exactly_once(again, sim, window=15 * 2)
    assert sim.count("SELECT count(*) FROM alarms WHERE alarm_id = ?", (alarm_id,)) == 1
    again.db.close()


def test_alarms_queue_while_offline_and_heartbeat_reports_the_queue(
    tmp_path: object,
    broker: Mosquitto,
    station: StationData,
    make_uplink: MakeUplink,
    make_sim: MakeSim,
) -> None:
    config = uplink_config(broker, heartbeat_s=0.2)
    sim = make_sim(config, mode="no-ack")
    station.commit(measured_at=hours_ago(station.clock, 2))
    up = make_uplink(
        station,
        config,
        health=lambda: {"devices": {"scale-lane1": {"state": "ok"}}, "config_hash": "abc"},
    )
    alarm_id = station.alarm("disk-watermark", "free disk below 10 %", {"free_pct": 9.5})
    up.wake()
    assert sim.wait_for(lambda s: s.count("SELECT count(*) FROM alarms") == 1, 10)
    assert sim.wait_for(lambda s: s.count("SELECT count(*) FROM heartbeats") >= 2, 10)
    beat = sim.query("SELECT payload FROM heartbeats ORDER BY rowid DESC LIMIT 1")[0][0]
    import json

    doc = json.loads(beat)
    assert doc["queue"]["depth"] == 2
    assert doc["queue"]["oldest_unacked_age_s"] >= 7200 - 60
    assert doc["devices"] == {"scale-lane1": {"state": "ok"}}
    assert doc["config_hash"] == "abc"
    alarm = json.loads(sim.query("SELECT payload FROM alarms")[0][0])
    assert alarm["alarm_id"] == alarm_id and alarm["details"] == {"free_pct": 9.5}
    assert sim.query("SELECT state FROM status")[0][0] == '{"state":"online"}'
    up.stop(2.0)
    assert sim.wait_for(
        lambda s: s.query("SELECT state FROM status")[0][0] == '{"state":"offline"}', 5
    )


def test_acks_for_unknown_ids_and_garbage_are_ignored(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    config = uplink_config(broker)
    sim = make_sim(config)
    up = make_uplink(station, config)
    client = sim._client
    assert client is not None
    root = f"{config.prefix}/{station.station_id}"
    for payload in (b"not json", b"[1,2]", b'{"event_ids": "x"}', b'{"event_ids": ["nope", 7]}'):
        client.publish(f"{root}/ack", payload, qos=1).wait_for_publish(5)
    station.commit()
    up.wake()
    wait_until(lambda: outbox_unacked(station) == 0, 10, "delivery after garbage acks")
    assert up.stats()["connected"]


def test_evicted_image_is_announced_and_the_record_still_delivered(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    stored = station.commit(images=2)
    with station.db.write() as conn:
        conn.execute(
            "UPDATE images SET evicted_at = 'now' WHERE event_id = ? AND name = 'rear.jpg'",
            (stored.event_id,),
        )
    config = uplink_config(broker)
    sim = make_sim(config)
    make_uplink(station, config)
    wait_until(lambda: outbox_unacked(station) == 0, 10, "delivery")
    rows = sim.query("SELECT name, evicted, bytes FROM images ORDER BY name")
    assert rows[0][0] == "front.jpg" and rows[0][1] == 0 and rows[0][2] > 0
    assert rows[1] == ("rear.jpg", 1, 0)


def test_alarms_raised_in_the_store_reach_the_platform_in_the_alarm_schema(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    ref = station.alarm("disk-watermark", "low", {"free_mb": 90})
    config = uplink_config(broker)
    sim = make_sim(config)
    make_uplink(station, config)
    wait_until(lambda: outbox_unacked(station) == 0, 10, "the alarm acked")
    doc = json.loads(sim.query("SELECT payload FROM alarms")[0][0])
    assert doc["alarm_id"] == ref and doc["kind"] == "disk-watermark"
    assert doc["details"] == {"free_mb": 90} and doc["message"] == "low"


def test_a_failing_health_callback_does_not_stop_heartbeats_or_delivery(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    calls = [0]

    def health() -> dict[str, object]:
        calls[0] += 1
        if calls[0] % 2:
            raise RuntimeError("camera health probe crashed")
        return {"devices": {"cam": {"since": station.clock.now()}}}  # not JSON by itself

    config = uplink_config(broker, heartbeat_s=0.1)
    sim = make_sim(config)
    up = make_uplink(station, config, health=health)
    assert sim.wait_for(lambda s: s.count("SELECT count(*) FROM heartbeats") >= 3, 10)
    beats = [json.loads(r[0]) for r in sim.query("SELECT payload FROM heartbeats")]
    assert any(b.get("health_error") == "camera health probe crashed" for b in beats)
    assert any("devices" in b for b in beats)
    station.commit()
    up.wake()
    wait_until(lambda: outbox_unacked(station) == 0, 10, "delivery")


# -- the drain: byte window and event waits (issue 18) ---------------------------------------


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
    up._next_heartbeat = clock.monotonic() + 60
    up._retry_at = clock.monotonic() + 0.25  # a row put back after a failed send
    assert abs(up._idle_wait_s() - 0.25) < 1e-9
    up._link.connected.clear()  # offline: nothing is due before the connect wakes it
    up._retry_at = clock.monotonic() - 1.0
    up._window.add(_Flight(1, ("event", "e1"), clock.monotonic() - 1.0, 30.0))
    assert up._idle_wait_s() == delivery.IDLE_WAIT_S


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
    broker: Mosquitto,
    station: StationData,
    make_uplink: MakeUplink,
    make_sim: MakeSim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the backstop far away, a commit still goes out on its wake()."""
    monkeypatch.setattr(delivery, "IDLE_WAIT_S", 30.0)
    config = uplink_config(broker)
    sim = make_sim(config)
    up = make_uplink(station, config)
    wait_until(lambda: up.connected, 10, "the uplink to connect")
    station.commit(VerdictStatus.OVERLOADED)
    up.wake()
    assert sim.wait_for(lambda s: complete_count(s) == 1, 5)
