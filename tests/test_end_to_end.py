"""The whole station against a real Mosquitto: every simulated truck ends up stored, signed,
delivered and acknowledged with its verdict, also when the broker goes away in the middle."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from platform_sim import PlatformSim

from agent.config import StationConfig, parse_config
from agent.station.supervisor import Station
from agent.uplink.client import UplinkConfig
from drivers import traffic

from .conftest import DEMO_CONFIG, Mosquitto, complete_count, uplink_config, wait_until

STATUSES = {"within_limit", "warning", "overloaded", "exempt", "undetermined"}


def station_config(broker: Mosquitto, trucks: int, per_min: float) -> StationConfig:
    """The demo station (as shipped) pointed at the test broker, with test timings."""
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port = \d+$", f"port = {broker.port}", text, count=1)
    text = re.sub(
        r"(?m)^vehicles_per_min = .*$", f"vehicles_per_min = {per_min}\ncount = {trucks}", text
    )
    text = text.replace(
        'prefix = "roadside/v1"',
        'prefix = "roadside/v1"\nkeepalive_s = 5\nack_timeout_s = 1.0\nack_timeout_max_s = 2.0\n'
        "reconnect_min_s = 0.5\nreconnect_max_s = 1.0",
    )
    # the simulated camera photographs each truck exactly when it is weighed
    text = text.replace("ambiguity_margin_s = 0.3", "ambiguity_margin_s = 0.01")
    return parse_config(text, DEMO_CONFIG)


@pytest.fixture
def run_station(tmp_path: Path) -> Iterator[Callable[[StationConfig], Station]]:
    started: list[Station] = []

    def start(cfg: StationConfig) -> Station:
        traffic.forget_roads()
        st = Station(cfg, data_dir=tmp_path / "station")
        started.append(st)
        st.start()
        return st

    yield start
    for st in started:
        st.stop(10.0)


def station_rows(data_dir: Path) -> list[tuple[str, str, str | None]]:
    conn = sqlite3.connect(f"file:{data_dir / 'station.db'}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT r.event_id, r.record_json, o.acked_at FROM records r JOIN outbox o"
            " ON o.kind = 'event' AND o.ref = r.event_id ORDER BY r.seq"
        ).fetchall()
    finally:
        conn.close()


def all_acked(data_dir: Path, n: int) -> bool:
    rows = station_rows(data_dir)
    return len(rows) == n and all(acked for _, _, acked in rows)


def check_platform_has_exactly(data_dir: Path, sim: PlatformSim, n: int) -> None:
    rows = station_rows(data_dir)
    assert len(rows) == n
    stored = {
        eid: json.loads(rec) for eid, rec in sim.query("SELECT event_id, record_json FROM records")
    }
    assert sorted(stored) == sorted(eid for eid, _, _ in rows)
    for event_id, record_json, _ in rows:
        record = json.loads(record_json)
        assert stored[event_id] == record, f"{event_id} reached the platform altered"
        assert record["verdict"]["status"] in STATUSES
        assert record["images"], f"{event_id} has no photo"
        assert record["plates"], f"{event_id} has no plate"
    assert complete_count(sim) == n
    assert sim.count("SELECT count(*) FROM rejected") == 0, sim.query("SELECT * FROM rejected")


def verify_ok(data_dir: Path) -> None:
    from agent.cli import main

    assert main(["verify", "--data-dir", str(data_dir)]) == 0


def test_every_truck_is_stored_delivered_and_acknowledged(
    broker: Mosquitto,
    make_sim: Callable[..., PlatformSim],
    run_station: Callable[[StationConfig], Station],
) -> None:
    n = 12
    cfg = station_config(broker, n, per_min=600)
    sim = make_sim(uplink_config(broker))
    st = run_station(cfg)
    wait_until(lambda: all_acked(st.data_dir, n), 60, f"{n} records acknowledged")
    check_platform_has_exactly(st.data_dir, sim, n)
    st.stop()
    verify_ok(st.data_dir)


def test_broker_stopped_in_the_middle_loses_nothing(
    broker: Mosquitto,
    make_sim: Callable[..., PlatformSim],
    run_station: Callable[[StationConfig], Station],
) -> None:
    n = 16
    cfg = station_config(broker, n, per_min=300)
    sim = make_sim(uplink_config(broker))
    st = run_station(cfg)
    wait_until(
        lambda: sum(1 for *_, a in station_rows(st.data_dir) if a) >= 3,
        30,
        "the first records acknowledged",
    )
    broker.stop()
    stored_before = len(station_rows(st.data_dir))
    # the station keeps weighing and storing while the broker is away
    wait_until(
        lambda: len(station_rows(st.data_dir)) >= stored_before + 3,
        30,
        "records stored while the broker is down",
    )
    assert not all_acked(st.data_dir, len(station_rows(st.data_dir)))
    broker.start()
    wait_until(lambda: all_acked(st.data_dir, n), 60, "every record acknowledged after restart")
    check_platform_has_exactly(st.data_dir, sim, n)
    st.stop()
    verify_ok(st.data_dir)


def test_station_runs_without_a_broker_and_catches_up(
    broker: Mosquitto,
    make_sim: Callable[..., PlatformSim],
    run_station: Callable[[StationConfig], Station],
) -> None:
    """The demo config 'runs as it is' with nothing listening: records wait, then go out."""
    n = 6
    broker.stop()
    cfg = station_config(broker, n, per_min=600)
    st = run_station(cfg)
    wait_until(lambda: len(station_rows(st.data_dir)) == n, 30, "records stored offline")
    assert not any(acked for *_, acked in station_rows(st.data_dir))
    status: dict[str, Any] = st.health()
    assert status["vehicles"]["stored"] == n
    broker.start()
    sim = make_sim(UplinkConfig(host=broker.host, port=broker.port))
    wait_until(lambda: all_acked(st.data_dir, n), 60, "the offline records delivered")
    check_platform_has_exactly(st.data_dir, sim, n)
