"""The platform simulator keeps the contract honest: schema, integrity, images, acks."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from platform_sim import PlatformSim, check_record, load_schema, validate

from agent.domain import VerdictStatus
from agent.store.integrity import canonical_json
from agent.uplink.client import make_client, mqtt_properties
from tests.conftest import Mosquitto, StationData, uplink_config, wait_until

MakeSim = Callable[..., PlatformSim]
EVENT_SCHEMA = load_schema("vehicle-event.v1")


def test_every_stored_record_matches_the_published_schema(station: StationData) -> None:
    for status in VerdictStatus:
        record = station.commit(status).record
        assert check_record(record, EVENT_SCHEMA) == []


def test_schema_names_what_is_wrong(station: StationData) -> None:
    record = copy.deepcopy(station.commit().record)
    del record["verdict"]
    record["vehicle"]["gross_kg"] = "heavy"
    problems = validate(record, EVENT_SCHEMA)
    assert "$: missing 'verdict'" in problems
    assert any(p.startswith("$.vehicle.gross_kg: expected integer") for p in problems)


def test_an_altered_record_fails_its_integrity_hash(station: StationData) -> None:
    record = copy.deepcopy(station.commit().record)
    record["vehicle"]["gross_kg"] -= 10_000  # someone "fixes" the weight on the way
    assert any("integrity.hash" in p for p in check_record(record, EVENT_SCHEMA))


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_validator_never_crashes_on_any_json(doc: Any) -> None:
    assert isinstance(validate(doc, EVENT_SCHEMA), list)


class _Raw:
    """A bare MQTT client publishing by hand, the way a broken station might."""

    def __init__(self, broker: Mosquitto, acks: list[dict[str, Any]], station_id: str) -> None:
        self.client, props = make_client(uplink_config(broker), "raw-station", clean_start=True)
        root = f"roadside/v1/{station_id}"
        self.client.on_message = lambda c, u, m: acks.append(json.loads(m.payload))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{root}/ack", 1)
        self.client.connect(broker.host, broker.port, properties=props, clean_start=True)
        self.client.loop_start()
        self.root = root

    def publish(
        self, topic: str, payload: bytes, user: list[tuple[str, str]] | None = None
    ) -> None:
        props = mqtt_properties(PacketTypes.PUBLISH)
        if user:
            props.UserProperty = user
        info = self.client.publish(f"{self.root}/{topic}", payload, qos=1, properties=props)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_ack_only_once_the_record_and_all_its_images_arrived_intact(
    broker: Mosquitto, station: StationData, make_sim: MakeSim
) -> None:
    sim = make_sim(uplink_config(broker))
    stored = station.commit(images=2)
    acks: list[dict[str, Any]] = []
    raw = _Raw(broker, acks, station.station_id)
    try:
        files = station.store.image_files(stored.event_id)
        raw.publish("events", canonical_json(stored.record))
        name, sha, path = files[0]
        assert path is not None
        raw.publish(
            f"evidence/{stored.event_id}/{name}",
            path.read_bytes(),
            [("sha256", sha), ("content-type", "image/jpeg")],
        )
        # an image whose bytes do not match its declared hash is refused
        name2, sha2, path2 = files[1]
        assert path2 is not None
        raw.publish(
            f"evidence/{stored.event_id}/{name2}",
            b"garbage",
            [("sha256", sha2), ("content-type", "image/jpeg")],
        )
        assert sim.wait_for(lambda s: s.count("SELECT count(*) FROM rejected") == 1, 5)
        assert sim.count("SELECT count(*) FROM records WHERE complete_at IS NOT NULL") == 0
        raw.publish(
            f"evidence/{stored.event_id}/{name2}",
            path2.read_bytes(),
            [("sha256", hashlib.sha256(path2.read_bytes()).hexdigest())],
        )
        wait_until(lambda: bool(acks), 5, "the platform's ack")
        # the ack proves what the platform holds: the record's hash and each image's, as
        # hashed from the bytes it stored (docs/uplink.md §3.5)
        proof = {
            "hash": stored.record["integrity"]["hash"],
            "images": {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, _, p in files if p},
            "videos": {},
        }
        assert acks == [{"event_ids": [stored.event_id], "proofs": {stored.event_id: proof}}]
        # a record that breaks the schema is rejected and never acked
        bad = dict(stored.record, schema="roadside.vehicle-event.v0", event_id="x")
        raw.publish("events", canonical_json(bad))
        assert sim.wait_for(lambda s: s.count("SELECT count(*) FROM rejected") == 2, 5)
        assert len(acks) == 1
    finally:
        raw.close()


def test_sim_uses_mqtt5_client(broker: Mosquitto) -> None:
    client, _ = make_client(uplink_config(broker), "x")
    assert client.protocol == mqtt.MQTTv5
