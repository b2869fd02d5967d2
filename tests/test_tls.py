"""Mutual TLS and the ACL, against a Mosquitto configured like firmware_config/mosquitto/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from platform_sim import PlatformSim

from agent.uplink.client import TlsConfig, UplinkConfig, probe_broker
from agent.uplink.delivery import Uplink
from tests.certs import CertFiles, Pki
from tests.conftest import (
    Mosquitto,
    StationData,
    assert_delivered_exactly_once,
    outbox_unacked,
    wait_until,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "firmware_config" / "mosquitto"
MakeUplink = Callable[..., Uplink]
MakeSim = Callable[..., PlatformSim]


def tls_config(broker: Mosquitto, files: CertFiles, **kw: object) -> UplinkConfig:
    return UplinkConfig(
        host="127.0.0.1",
        port=broker.port,
        keepalive_s=5,
        ack_timeout_s=1.0,
        reconnect_min_s=1,
        reconnect_max_s=1,
        tls=TlsConfig(
            ca_file=str(files.ca_file), cert_file=str(files.cert_file), key_file=str(files.key_file)
        ),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def _tls_broker(factory: Callable[..., Mosquitto], server: CertFiles) -> Mosquitto:
    return factory(
        extra_config="\n".join(
            [
                f"cafile {server.ca_file}",
                f"certfile {server.cert_file}",
                f"keyfile {server.key_file}",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
                f"acl_file {EXAMPLE / 'roadside.acl'}",
            ]
        )
    )


@pytest.fixture
def tls_broker(mosquitto_factory: Callable[..., Mosquitto], pki: Pki) -> Mosquitto:
    return _tls_broker(mosquitto_factory, pki.issue("broker", server=True))


def test_station_delivers_over_mutual_tls(
    tls_broker: Mosquitto,
    pki: Pki,
    station: StationData,
    make_uplink: MakeUplink,
    make_sim: MakeSim,
) -> None:
    sim = make_sim(tls_config(tls_broker, pki.issue("platform")))
    config = tls_config(tls_broker, pki.issue(station.station_id))
    for _ in range(10):
        station.commit()
    up = make_uplink(station, config)
    station.alarm("test", "over TLS", {})
    up.wake()
    wait_until(lambda: outbox_unacked(station) == 0, 20, "delivery over TLS")
    assert_delivered_exactly_once(station, sim, config.max_unacked)
    assert sim.wait_for(lambda s: s.count("SELECT count(*) FROM status") == 1, 5)
    # the ACL lets commands in and replies (under the station's root) out
    assert sim.command(station.station_id, "ping", {})["ok"] is True


def test_relative_certificate_names_resolve_in_credentials_directory(
    tls_broker: Mosquitto, pki: Pki, station: StationData, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = pki.issue(station.station_id)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(files.cert_file.parent))
    config = UplinkConfig(
        host="127.0.0.1",
        port=tls_broker.port,
        tls=TlsConfig(
            ca_file=files.ca_file.name, cert_file=files.cert_file.name, key_file=files.key_file.name
        ),
    )
    assert probe_broker(config, station.station_id, 5.0)


def test_a_certificate_from_another_ca_is_refused(
    tls_broker: Mosquitto, pki: Pki, tmp_path: Path, station: StationData
) -> None:
    rogue = Pki(tmp_path / "rogue", name="rogue-ca").issue(station.station_id)
    wrong = CertFiles(pki.ca_file, rogue.cert_file, rogue.key_file)
    assert not probe_broker(tls_config(tls_broker, wrong), station.station_id, 2.0)
    # the right certificate gets in, so the refusal was about the certificate
    assert probe_broker(tls_config(tls_broker, pki.issue(station.station_id)), "x", 5.0)


def test_the_station_checks_the_broker_hostname(
    mosquitto_factory: Callable[..., Mosquitto], pki: Pki, station: StationData
) -> None:
    # a broker certificate from the right CA but for another host: refused by the station
    imposter = pki.issue("broker.example.org")
    broker = _tls_broker(mosquitto_factory, imposter)
    assert not probe_broker(tls_config(broker, pki.issue(station.station_id)), "x", 2.0)


def test_a_station_cannot_publish_under_another_stations_root(
    tls_broker: Mosquitto,
    pki: Pki,
    station: StationData,
    make_uplink: MakeUplink,
    make_sim: MakeSim,
) -> None:
    sim = make_sim(tls_config(tls_broker, pki.issue("platform")))
    # this station's certificate says JS-ZJ-0001, but it claims to be JS-ZJ-0002
    station.station_id = "JS-ZJ-0002"
    station.commit()
    config = tls_config(tls_broker, pki.issue("JS-ZJ-0001"), client_id="roadside-JS-ZJ-0001")
    up = make_uplink(station, config)
    wait_until(lambda: up.stats()["puback_failures"] >= 1, 10, "the broker's refusal")
    assert sim.count("SELECT count(*) FROM records") == 0
    assert sim.count("SELECT count(*) FROM images") == 0
    row = station.db.read().execute("SELECT published_at, acked_at FROM outbox").fetchone()
    assert tuple(row) == (None, None)  # refused is neither published nor delivered


def test_missing_credentials_do_not_stop_the_station_and_are_picked_up_later(
    tls_broker: Mosquitto,
    pki: Pki,
    station: StationData,
    make_uplink: MakeUplink,
    make_sim: MakeSim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import agent.uplink.delivery

    monkeypatch.setattr(agent.uplink.delivery, "CLIENT_RETRY_S", 0.2)
    sim = make_sim(tls_config(tls_broker, pki.issue("platform")))
    issued = pki.issue(station.station_id)
    pending = CertFiles(issued.ca_file, tmp_path / "later.crt", tmp_path / "later.key")
    up = make_uplink(station, tls_config(tls_broker, pending))  # start() does not raise
    station.commit()
    up.wake()
    wait_until(lambda: "later.crt" in up.stats()["last_error"], 5, "the credential error")
    assert not up.connected and outbox_unacked(station) == 1
    # the technician installs the certificate: the uplink picks it up by itself
    pending.cert_file.write_bytes(issued.cert_file.read_bytes())
    pending.key_file.write_bytes(issued.key_file.read_bytes())
    wait_until(lambda: outbox_unacked(station) == 0, 15, "delivery once the files exist")
    assert sim.count("SELECT count(*) FROM records") == 1
