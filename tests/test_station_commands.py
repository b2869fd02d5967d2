"""The platform steers a running station over MQTT: permits, watch-list, capture test, config.

Real Mosquitto, the real station (demo config), the platform simulator as the sender.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from platform_sim import PlatformSim

from agent.config import load_config
from agent.station.handlers import TRIAL_FILE, StationCommands
from agent.station.supervisor import Station
from agent.store import integrity
from agent.store.permits import PermitBook
from drivers import traffic
from drivers.clock import SystemClock

from .conftest import DEMO_CONFIG, Mosquitto, free_port, uplink_config, wait_until

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


def test_set_config_with_an_unreachable_broker_changes_nothing(
    running: tuple[Station, PlatformSim, Path],
) -> None:
    st, sim, path = running
    before = path.read_text(encoding="utf-8")
    unreachable = re.sub(r"(?m)^port = \d+$", "port = 1", before, count=1)
    reply = sim.command(STATION, "set-config", {"config": unreachable}, timeout_s=60)
    assert reply["error"]["code"] == "unreachable", reply
    assert path.read_text(encoding="utf-8") == before
    assert not (path.parent / "backups").exists()  # probed first: nothing was written
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


def _permit(i: int) -> dict[str, object]:
    return {
        "plate": f"苏L{i:05d}",
        "valid_from": "2026-01-01",
        "valid_to": "2027-01-01",
        "max_gross_kg": 60000,
        "permit_id": f"JS-2026-{i:06d}",
    }


def test_list_commands_follow_the_doc_and_refuse_hostile_arguments(
    running: tuple[Station, PlatformSim, Path],
) -> None:
    st, sim, _ = running
    # set-watchlist takes `plates` (docs/uplink.md); `watchlist` still works, deprecated
    ok = sim.command(STATION, "set-watchlist", {"plates": ["苏A00001", "苏A00002", "苏A00003"]})
    assert ok.get("result") == {"watchlist": 3}, ok
    assert st.permits.counts()["watchlist"] == 3
    # {"lane": true} is not lane 1
    reply = sim.command(STATION, "capture-test", {"lane": True})
    assert reply["error"]["code"] == "bad-argument", reply
    # deep nesting is malformed, not an internal error
    deep = b'{"permits": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert sim.command(STATION, "set-permits", deep)["error"]["code"] == "malformed"
    deeper = b'{"permits": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    assert sim.command(STATION, "set-permits", deeper)["error"]["code"] in (
        "malformed",
        "too-large",
    )
    assert st.permits.counts()["permits"] == 0


def test_set_permits_in_parts_carries_more_than_one_command_can(
    running: tuple[Station, PlatformSim, Path],
) -> None:
    st, sim, _ = running
    per_part, parts = 4000, 3  # 12 000 permits, ~1.6 MB: beyond one 1 MiB command
    for part in range(1, parts + 1):
        chunk = [_permit(i) for i in range((part - 1) * per_part, part * per_part)]
        header = {"id": "u-1", "part": part, "parts": parts}
        reply = sim.command(STATION, "set-permits", {"permits": chunk, "upload": header})
        assert reply["ok"], reply
        if part < parts:
            assert reply["result"] == {"upload": "u-1", "received": part, "parts": 3,
                                       "staged": part * per_part}  # fmt: skip
            assert st.permits.counts()["permits"] == 0  # nothing changes until the last part
    assert reply["result"] == {"permits": per_part * parts}
    assert st.permits.counts()["permits"] == per_part * parts
    # a part out of order is refused and the list in force stays
    skip = {"permits": [_permit(1)], "upload": {"id": "u-2", "part": 2, "parts": 2}}
    assert sim.command(STATION, "set-permits", skip)["error"]["code"] == "bad-argument"
    assert st.permits.counts()["permits"] == per_part * parts


def test_set_config_may_not_change_the_evidence_identity_or_the_legal_parameters(
    running: tuple[Station, PlatformSim, Path],
) -> None:
    st, sim, path = running
    before = path.read_text(encoding="utf-8")
    other_key = path.parent / "other-signing-key"  # a key that exists: refused as protected
    integrity.generate_key(other_key)
    pushes = {
        "station.data_dir": before.replace('data_dir = "../../demo-data"', 'data_dir = "/tmp/x"'),
        "station.id": before.replace('id = "JS-ZJ-0001"', 'id = "JS-ZJ-0009"', 1),
        "legal": before.replace("tolerance_pct = 5.0", "tolerance_pct = 10.0"),
        "evidence.signing_key": before + f'\n[evidence]\nsigning_key = "{other_key}"\n',
        "lanes[1].scale": before.replace('certificate = "JS-JL-2026-00123"', 'certificate = "X"'),
    }
    for key, text in pushes.items():
        assert text != before, key
        reply = sim.command(STATION, "set-config", {"config": text}, timeout_s=20)
        assert reply["error"]["code"] == "protected", reply
        assert key in reply["error"]["details"]["keys"], reply
        assert path.read_text(encoding="utf-8") == before
    assert not (path.parent / "backups").exists()
    assert not st.restart_requested


def test_an_accepted_set_config_is_audited_and_proven_by_the_restarted_station(
    tmp_path: Path,
    running: tuple[Station, PlatformSim, Path],
) -> None:
    st, sim, path = running
    before = path.read_text(encoding="utf-8")
    new = before.replace('prefix = "roadside/v1"', 'prefix = "roadside/v1"\nheartbeat_s = 30.0')
    reply = sim.command(STATION, "set-config", {"config": new}, timeout_s=30)
    assert reply["ok"], reply
    assert path.read_text(encoding="utf-8") == new
    entries = [e for e in st.audit.entries() if e["kind"] == "remote-config"]
    assert len(entries) == 1
    assert entries[0]["new"]["changed"] == ["uplink.heartbeat_s"]
    assert entries[0]["new"]["config_sha256"] == load_config(path).digest
    assert entries[0]["actor"] == "platform set-config"
    assert (path.parent / "backups" / TRIAL_FILE).exists()
    wait_until(lambda: st.restart_requested, 10, "the restart on the new file")
    # the restarted station reaches the broker with the new file: the trial ends, file kept
    commands = StationCommands(load_config(path), SystemClock(), PermitBook(tmp_path / "p"),
                               {}, None, restart=lambda: None)  # fmt: skip
    commands.handlers()
    assert commands.trial_thread is not None
    commands.trial_thread.join(30)
    assert not (path.parent / "backups" / TRIAL_FILE).exists()
    assert path.read_text(encoding="utf-8") == new


def test_a_pushed_config_that_cannot_connect_after_the_restart_falls_back_to_the_last_good(
    tmp_path: Path, broker: Mosquitto
) -> None:
    good_path = write_config(tmp_path, broker, trucks=0)
    good = good_path.read_text(encoding="utf-8")
    # what a set-config left behind when the probe passed but the real start cannot connect
    bad = re.sub(r"(?m)^port = \d+$", f"port = {free_port()}", good, count=1)
    backups = good_path.parent / "backups"
    backups.mkdir()
    (backups / "config-20261126T103015.toml").write_text(good, encoding="utf-8")
    good_path.write_text(bad, encoding="utf-8")
    trial = {
        "config_sha256": load_config(good_path).digest,
        "backup": "config-20261126T103015.toml",
    }
    (backups / TRIAL_FILE).write_text(json.dumps(trial), encoding="utf-8")
    restarted = threading.Event()
    commands = StationCommands(load_config(good_path), SystemClock(), PermitBook(tmp_path / "p"),
                               {}, None, restart=restarted.set, trial_timeout_s=1.0)  # fmt: skip
    commands.handlers()
    assert restarted.wait(20), "no fall-back restart"
    assert good_path.read_text(encoding="utf-8") == good
    assert not (backups / TRIAL_FILE).exists()
    # the old config is the proven one: starting on it again starts no trial
    again = StationCommands(load_config(good_path), SystemClock(), PermitBook(tmp_path / "p"),
                            {}, None, restart=restarted.set)  # fmt: skip
    again.handlers()
    assert again.trial_thread is None
