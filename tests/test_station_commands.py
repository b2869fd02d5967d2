"""The platform steers a running station over MQTT: permits, watch-list, capture test, config.

Real Mosquitto, the real station (demo config), the platform simulator as the sender.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from platform_sim import PlatformSim

from agent.config import load_config
from agent.station.supervisor import Station
from drivers import traffic

from .conftest import DEMO_CONFIG, Mosquitto, uplink_config, wait_until

STATION = "JS-ZJ-0001"


def write_config(tmp_path: Path, broker: Mosquitto, trucks: int, per_min: float = 600) -> Path:
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port = \d+$", f"port = {broker.port}", text, count=1)
    text = re.sub(
        r"(?m)^vehicles_per_min = .*$", f"vehicles_per_min = {per_min}\ncount = {trucks}", text
    )
    shared = (DEMO_CONFIG.parent / "../../../shared/fixtures/plates/full").resolve()
    text = text.replace('"../../../shared/fixtures/plates/full"', f'"{shared}"')
    path = tmp_path / "etc" / "station.toml"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    return path


def simulated_station(
    tmp_path: Path,
    broker: Mosquitto,
    make_sim: Callable[..., PlatformSim],
    trucks: int,
    per_min: float,
) -> tuple[Station, PlatformSim, list[str]]:
    """The demo station on a fresh simulated road (not started), the platform simulator, and
    every plate the road can show."""
    path = write_config(tmp_path, broker, trucks=trucks, per_min=per_min)
    sim = make_sim(uplink_config(broker))
    traffic.forget_roads()
    cfg = load_config(path)
    road = traffic.road("default", Path(cfg.lanes[0].scale.photos))  # type: ignore[attr-defined]
    plates = sorted({p.plate for p in road.photos.photos})
    return Station(cfg, data_dir=tmp_path / "data"), sim, plates


@pytest.fixture
def running(
    tmp_path: Path, broker: Mosquitto, make_sim: Callable[..., PlatformSim]
) -> Iterator[tuple[Station, PlatformSim, Path]]:
    path = write_config(tmp_path, broker, trucks=0)
    sim = make_sim(uplink_config(broker))
    traffic.forget_roads()
    st = Station(load_config(path), data_dir=tmp_path / "data")
    st.start()
    wait_until(lambda: bool(st.uplink and st.uplink.connected), 20, "the station online")
    yield st, sim, path
    st.stop(10)


def test_permits_and_watchlist_replace_atomically_and_bad_lists_change_nothing(
    running: tuple[Station, PlatformSim, Path],
) -> None:
    st, sim, _ = running
    ok = sim.command(
        STATION,
        "set-permits",
        {
            "permits": [
                {
                    "plate": "苏L12345",
                    "valid_from": "2026-01-01",
                    "valid_to": "2027-01-01",
                    "max_gross_kg": 60000,
                    "permit_id": "P-1",
                }
            ]
        },
    )
    assert ok.get("result") == {"permits": 1}, ok
    bad = sim.command(STATION, "set-permits", {"permits": [{"plate": "苏L12345"}]})
    assert bad["error"]["code"] == "invalid" and "missing" in bad["error"]["message"]
    assert st.permits.counts()["permits"] == 1  # the bad list changed nothing
    ok = sim.command(STATION, "set-watchlist", {"watchlist": ["苏A00001", "苏A00002"]})
    assert ok.get("result") == {"watchlist": 2}, ok
    malformed = sim.command(STATION, "set-watchlist", b"{not json")
    assert "error" in malformed
    assert st.permits.counts()["watchlist"] == 2


def test_get_config_is_redacted_and_capture_test_photographs_the_lane(
    running: tuple[Station, PlatformSim, Path],
) -> None:
    st, sim, _ = running
    reply = sim.command(STATION, "get-config", {})
    assert reply["result"]["config_hash"] == st.config.digest
    assert "[station]" in reply["result"]["config"]
    # capture-test in the demo has a replay camera on the simulated road: no truck yet
    reply = sim.command(STATION, "capture-test", {"lane": 1})
    assert reply["result"]["lane"] == 1 and "faults" in reply["result"]
    reply = sim.command(STATION, "capture-test", {"lane": 9})
    assert reply["error"]["code"] == "invalid"


def test_set_config_with_an_unreachable_broker_rolls_back(
    running: tuple[Station, PlatformSim, Path],
) -> None:
    st, sim, path = running
    before = path.read_text(encoding="utf-8")
    unreachable = re.sub(r"(?m)^port = \d+$", "port = 1", before, count=1)
    reply = sim.command(STATION, "set-config", {"config": unreachable}, timeout_s=60)
    assert reply["error"]["code"] == "rolled-back", reply
    assert path.read_text(encoding="utf-8") == before
    assert list((path.parent / "backups").glob("config-*.toml"))
    invalid = sim.command(STATION, "set-config", {"config": before.replace("port =", "prot =")})
    assert invalid["error"]["code"] == "invalid"
    assert any("did you mean 'port'" in p for p in invalid["error"]["details"]["problems"])
    assert path.read_text(encoding="utf-8") == before
    assert not st.restart_requested and not st.stop_event.is_set()


def test_watchlisted_plate_raises_an_alarm_at_the_platform(
    tmp_path: Path, broker: Mosquitto, make_sim: Callable[..., PlatformSim]
) -> None:
    # trucks far enough apart that each photo is matched to its own weighing
    st, sim, plates = simulated_station(tmp_path, broker, make_sim, trucks=3, per_min=60)
    # every plate the simulated road can show is watch-listed before the first truck
    (tmp_path / "data").mkdir()
    from agent.store.permits import PermitBook

    PermitBook(tmp_path / "data").replace_watchlist(plates)
    st.start()
    try:
        wait_until(
            lambda: sim.count("SELECT count(*) FROM alarms WHERE kind = 'watchlist_hit'") >= 3,
            60,
            "three watch-list alarms at the platform",
        )
        payloads = [
            json.loads(p)
            for (p,) in sim.query("SELECT payload FROM alarms WHERE kind = 'watchlist_hit'")
        ]
        assert all(STATION in json.dumps(p) or p for p in payloads)
    finally:
        st.stop(10)
