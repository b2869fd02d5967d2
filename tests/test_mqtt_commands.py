"""Platform commands over MQTT 5: replies with correlation data; bad commands change nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from platform_sim import PlatformSim

from agent.uplink.client import UplinkConfig, probe_broker
from agent.uplink.commands import (
    MAX_COMMAND_BYTES,
    CommandError,
    parse_command,
    set_config,
    set_config_handler,
)
from agent.uplink.delivery import Uplink
from tests.conftest import (
    Mosquitto,
    StationData,
    free_port,
    outbox_unacked,
    uplink_config,
    wait_until,
)

MakeUplink = Callable[..., Uplink]
MakeSim = Callable[..., PlatformSim]


class Permits:
    """A stand-in for the station's permit table: the handler validates before it stores."""

    def __init__(self) -> None:
        self.permits: list[dict[str, Any]] = []

    def set_permits(self, args: dict[str, Any]) -> dict[str, Any]:
        permits = args.get("permits")
        if not isinstance(permits, list) or not all(
            isinstance(p, dict) and isinstance(p.get("plate"), str) for p in permits
        ):
            raise CommandError("bad-argument", "permits must be a list of {plate: ...}")
        self.permits = permits
        return {"count": len(permits)}


@pytest.fixture
def rig(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> tuple[PlatformSim, Uplink, Permits]:
    permits = Permits()

    def explode(args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("camera driver crashed")

    config = uplink_config(broker)
    sim = make_sim(config)
    up = make_uplink(
        station,
        config,
        handlers={"set-permits": permits.set_permits, "capture-test": explode},
    )
    wait_until(lambda: up.connected, 10, "the uplink to connect")
    return sim, up, permits


def test_ping_replies_on_the_response_topic_with_the_correlation_data(
    rig: tuple[PlatformSim, Uplink, Permits], station: StationData
) -> None:
    sim, _, _ = rig
    reply = sim.command(station.station_id, "ping", {})
    assert reply["ok"] is True and reply["result"]["pong"] is True
    assert reply["result"]["station_id"] == station.station_id


@pytest.mark.parametrize(
    ("name", "payload", "code"),
    [
        ("frobnicate", b"{}", "unknown-command"),
        ("set-permits", b"{not json", "malformed"),
        ("set-permits", b"[1, 2]", "malformed"),
        ("set-permits", b"\xff\xfe", "malformed"),
        ("set-permits", b'{"permits": "all of them"}', "bad-argument"),
        ("set-permits", b" " * (MAX_COMMAND_BYTES + 1) + b"{}", "too-large"),
        ("set-watchlist", b"{}", "unsupported"),
        ("capture-test", b"{}", "internal"),
        ("resend", b'{"from": "yesterday"}', "bad-argument"),
        (
            "resend",
            b'{"from": "2026-11-26T10:00:00+08:00", "to": "2026-11-25T10:00:00+08:00"}',
            "bad-argument",
        ),
    ],
)
def test_bad_commands_get_an_error_reply_and_change_nothing(
    rig: tuple[PlatformSim, Uplink, Permits],
    station: StationData,
    name: str,
    payload: bytes,
    code: str,
) -> None:
    sim, up, permits = rig
    permits.permits = [{"plate": "苏L12345"}]
    reply = sim.command(station.station_id, name, payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code, reply
    assert permits.permits == [{"plate": "苏L12345"}]
    # and the station still answers
    assert sim.command(station.station_id, "ping", b"")["ok"] is True
    assert up.connected


def test_set_permits_goes_to_the_station_handler(
    rig: tuple[PlatformSim, Uplink, Permits], station: StationData
) -> None:
    sim, _, permits = rig
    reply = sim.command(station.station_id, "set-permits", {"permits": [{"plate": "苏A00001"}]})
    assert reply == {"command": "set-permits", "ok": True, "result": {"count": 1}}
    assert permits.permits == [{"plate": "苏A00001"}]


def test_resend_a_time_range_sends_acked_records_again(
    rig: tuple[PlatformSim, Uplink, Permits], station: StationData
) -> None:
    sim, up, _ = rig
    early = station.commit(measured_at=station.clock.now().replace(hour=1))
    late = station.commit()
    up.wake()
    wait_until(lambda: outbox_unacked(station) == 0, 10, "delivery")
    since = early.record["measured_at"]
    reply = sim.command(station.station_id, "resend", {"from": since, "to": since})
    assert reply["ok"] and reply["result"] == {"requeued": 1}
    assert sim.wait_for(
        lambda s: (
            s.count("SELECT receipts FROM records WHERE event_id = ?", (early.event_id,)) == 2
        ),
        10,
    )
    wait_until(lambda: outbox_unacked(station) == 0, 10, "the re-sent record acked again")
    assert sim.count("SELECT receipts FROM records WHERE event_id = ?", (late.event_id,)) == 1


def test_reply_without_response_topic_goes_to_the_reply_topic(
    rig: tuple[PlatformSim, Uplink, Permits], station: StationData
) -> None:
    sim, _, _ = rig
    got: list[bytes] = []
    client = sim._client
    assert client is not None
    root = f"roadside/v1/{station.station_id}"
    client.message_callback_add(f"{root}/reply/ping", lambda c, u, m: got.append(m.payload))
    client.publish(f"{root}/cmd/ping", b"{}", qos=1)
    wait_until(lambda: bool(got), 10, "a reply on {root}/reply/ping")
    assert json.loads(got[0])["ok"] is True


def test_parse_command_limits() -> None:
    assert parse_command("ping", b"") == {}
    with pytest.raises(CommandError) as err:
        parse_command("../etc", b"{}")
    assert err.value.code == "bad-name"


# -- set-config ------------------------------------------------------------------------------


class ConfigFile:
    """The station's config file as set-config sees it: validate, apply (write), read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.applied: list[str] = []

    def validate(self, text: str) -> list[str]:
        try:
            doc = json.loads(text)
        except ValueError as err:
            return [f"not JSON: {err}"]
        return [] if isinstance(doc.get("port"), int) else ["uplink.port: missing"]

    def apply(self, text: str) -> None:
        self.applied.append(text)
        self.path.write_text(text)


def _config_text(port: int) -> str:
    return json.dumps({"host": "127.0.0.1", "port": port})


def _can_connect(text: str, timeout_s: float) -> bool:
    doc = json.loads(text)
    return probe_broker(UplinkConfig(host=doc["host"], port=doc["port"]), "JS-ZJ-0001", timeout_s)


def _no_protected(text: str) -> list[str]:
    return []


def test_set_config_probes_before_it_writes_so_a_kill_during_the_probe_keeps_the_old_file(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = ConfigFile(tmp_path / "station.json")
    old = _config_text(broker.port)
    cfg.path.write_text(old)
    on_disk_during_probe: list[str] = []

    def probe(text: str, timeout_s: float) -> bool:
        # what `run` would read if the station were SIGKILLed now
        on_disk_during_probe.append(cfg.path.read_text())
        return _can_connect(text, timeout_s)

    with pytest.raises(CommandError) as err:
        set_config(
            _config_text(free_port()),
            current_text=old,
            validate=cfg.validate,
            protected=_no_protected,
            apply=cfg.apply,
            can_connect=probe,
            backup_dir=tmp_path / "backups",
            stamp="20261126T103015",
            timeout_s=1.0,
        )
    assert err.value.code == "unreachable"
    assert on_disk_during_probe == [old]
    assert cfg.path.read_text() == old and cfg.applied == []
    assert not (tmp_path / "backups").exists()  # nothing was changed at all


def test_set_config_applies_a_reachable_config_and_keeps_a_backup(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = ConfigFile(tmp_path / "station.json")
    old = json.dumps({"host": "127.0.0.1", "port": broker.port, "note": "old"})
    new = _config_text(broker.port)
    on_disk_during_probe: list[str] = []
    cfg.path.write_text(old)

    def probe(text: str, timeout_s: float) -> bool:
        on_disk_during_probe.append(cfg.path.read_text())
        return _can_connect(text, timeout_s)

    trials: list[tuple[str, str]] = []
    result = set_config(
        new,
        current_text=old,
        validate=cfg.validate,
        protected=_no_protected,
        apply=cfg.apply,
        can_connect=probe,
        backup_dir=tmp_path / "backups",
        stamp="s1",
        before_apply=lambda text, backup: trials.append((text, backup.name)),
        timeout_s=5.0,
    )
    assert result == {"applied": True, "backup": "config-s1.toml"}
    assert on_disk_during_probe == [old]
    assert trials == [(new, "config-s1.toml")]  # noted before the new file is written
    assert cfg.path.read_text() == new
    assert (tmp_path / "backups" / "config-s1.toml").read_text() == old


def _push(cfg: ConfigFile, tmp_path: Path, text: str, **kw: Any) -> dict[str, Any]:
    """set_config of ``text`` over ``{}`` with a broker that always answers (or ``kw``)."""
    args: dict[str, Any] = {
        "current_text": "{}",
        "validate": cfg.validate,
        "protected": _no_protected,
        "apply": cfg.apply,
        "can_connect": lambda t, s: True,
        "backup_dir": tmp_path / "backups",
        "stamp": "s",
    }
    args.update(kw)
    return set_config(text, **args)


def test_invalid_or_protected_config_changes_nothing(tmp_path: Path) -> None:
    cfg = ConfigFile(tmp_path / "station.json")
    with pytest.raises(CommandError) as err:
        _push(cfg, tmp_path, '{"host": "x"}')
    assert err.value.code == "invalid" and err.value.details["problems"]
    probed: list[str] = []
    with pytest.raises(CommandError) as err:
        _push(cfg, tmp_path, '{"host": "x", "port": 1}',
              protected=lambda text: ["station.data_dir"],
              can_connect=lambda t, s: bool(probed.append(t)))  # fmt: skip
    assert err.value.code == "protected" and err.value.details["keys"] == ["station.data_dir"]
    assert cfg.applied == [] and probed == [] and not (tmp_path / "backups").exists()


def test_set_config_whose_write_fails_is_apply_failed_even_when_the_restore_fails(
    tmp_path: Path,
) -> None:
    def unwritable(text: str) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "station.json"))

    with pytest.raises(CommandError) as err:
        set_config(
            _config_text(1883),
            current_text=_config_text(1884),
            validate=ConfigFile(tmp_path / "station.json").validate,
            protected=lambda t: [],
            apply=unwritable,
            can_connect=lambda t, s: True,
            backup_dir=tmp_path / "backups",
            stamp="s",
        )
    assert err.value.code == "apply-failed"
    assert "restoring the previous one failed too" in err.value.message


def test_set_config_that_cannot_back_up_is_apply_failed(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = ConfigFile(tmp_path / "station.json")
    (tmp_path / "backups").write_text("a file where the backup folder should be")
    with pytest.raises(CommandError) as err:
        _push(cfg, tmp_path, _config_text(broker.port))
    assert err.value.code == "apply-failed" and cfg.applied == []


def test_set_config_over_mqtt_refuses_an_unreachable_broker_and_replies(
    broker: Mosquitto,
    station: StationData,
    make_uplink: MakeUplink,
    make_sim: MakeSim,
    tmp_path: Path,
) -> None:
    cfg = ConfigFile(tmp_path / "station.json")
    current = _config_text(broker.port)
    cfg.path.write_text(current)

    handler = set_config_handler(
        read_current=cfg.path.read_text,
        validate=cfg.validate,
        protected=_no_protected,
        apply=cfg.apply,
        can_connect=_can_connect,
        backup_dir=tmp_path / "backups",
        now=station.clock.now,
        timeout_s=1.0,
    )

    config = uplink_config(broker)
    sim = make_sim(config)
    up = make_uplink(station, config, handlers={"set-config": handler})
    wait_until(lambda: up.connected, 10, "connect")
    reply = sim.command(station.station_id, "set-config", {"config": _config_text(free_port())})
    assert reply["ok"] is False and reply["error"]["code"] == "unreachable"
    assert cfg.path.read_text() == current and cfg.applied == []
    assert not (tmp_path / "backups").exists()
    bad = sim.command(station.station_id, "set-config", {"config": 42})
    assert bad["error"]["code"] == "bad-argument"
    assert sim.command(station.station_id, "ping", {})["ok"]
