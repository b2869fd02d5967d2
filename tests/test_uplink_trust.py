"""What the station believes from the platform, through a real Mosquitto (issue 17, points 1,
6, 9 and 11): acks must prove what the platform holds, commands and acks must carry the pinned
platform key's signature, the chain head travels with heartbeats and ack receipts, and the
re-send back-off starts again on a fresh connection."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from platform_sim import PlatformSim, sign_properties

from agent.uplink.client import mqtt_properties
from agent.uplink.delivery import Uplink
from tests.conftest import (
    Mosquitto,
    StationData,
    complete_count,
    outbox_unacked,
    uplink_config,
    wait_until,
)

MakeUplink = Callable[..., Uplink]
MakeSim = Callable[..., PlatformSim]


class _Raw:
    """Anyone who can publish on the station's topics (what the broker ACL alone allows)."""

    def __init__(self, broker: Mosquitto, root: str) -> None:
        self.root = root
        self.replies: list[tuple[str, dict[str, Any]]] = []
        self.receipts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}",
                        protocol=mqtt.MQTTv5)  # fmt: skip

        def on_connect(cl: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            cl.subscribe([(f"{root}/reply/#", 1), (f"{root}/acked", 1)])

        def on_subscribe(cl: mqtt.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
            ready.set()

        def on_message(cl: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
            with self._lock:
                doc = json.loads(msg.payload)
                if msg.topic.endswith("/acked"):
                    self.receipts.append(doc)
                else:
                    self.replies.append((msg.topic, doc))

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        c.connect(broker.host, broker.port)
        c.loop_start()
        assert ready.wait(10)
        self.client = c

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        key: Ed25519PrivateKey | None = None,
        response_topic: str | None = None,
        props: Any = None,
        clock: Any = None,
    ) -> Any:
        props = props or mqtt_properties(PacketTypes.PUBLISH)
        if response_topic:
            props.ResponseTopic = response_topic
            props.CorrelationData = uuid.uuid4().hex.encode()
        if key is not None:
            props = sign_properties(key, f"{self.root}/{topic}", payload, clock(), props)
        self.client.publish(
            f"{self.root}/{topic}", payload, qos=1, properties=props
        ).wait_for_publish(5)
        return props

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _acked_at(station: StationData, event_id: str) -> Any:
    return (
        station.db.read()
        .execute("SELECT acked_at FROM outbox WHERE ref = ?", (event_id,))
        .fetchone()[0]
    )


def _proof(stored: Any, **images: str) -> dict[str, Any]:
    record = stored.record
    hashes = {i["name"]: i["sha256"] for i in record["images"]}
    hashes.update(images)
    return {"hash": record["integrity"]["hash"], "images": hashes}


def test_acks_that_prove_nothing_are_refused_counted_and_the_records_stay_owed(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    # one record out at a time, the platform silent: `sent` is on the wire, `waiting` is not
    config = uplink_config(broker, max_unacked=1, ack_timeout_s=600, ack_timeout_max_s=600,
                           heartbeat_s=0.2)  # fmt: skip
    sim = make_sim(config, mode="no-ack")
    sent, waiting = station.commit(), station.commit()
    up = make_uplink(station, config, chain_head=lambda: {"seq": 2, "hash": "cd" * 32})
    assert sim.wait_for(lambda s: complete_count(s) == 1, 10)
    assert sim.record(sent.event_id) is not None and sim.record(waiting.event_id) is None
    raw = _Raw(broker, up.root)
    try:
        forged = [
            {"event_ids": [waiting.event_id]},  # the old ack: no proof, never sent (early)
            {"event_ids": [waiting.event_id], "proofs": {waiting.event_id: _proof(waiting)}},
            {"event_ids": [sent.event_id]},  # sent, but no proof
            {"event_ids": [sent.event_id],
             "proofs": {sent.event_id: _proof(sent, **{"rear.jpg": "00" * 32})}},
        ]  # fmt: skip
        for doc in forged:
            raw.publish("ack", json.dumps(doc).encode())
        wait_until(lambda: up.stats()["acks_refused"] == 4, 10, "four refused acks")
        assert _acked_at(station, sent.event_id) is None
        assert _acked_at(station, waiting.event_id) is None
        assert up.stats()["acks_refused_by_reason"] == {
            "not-sent": 2,
            "no-proof": 1,
            "proof-mismatch": 1,
        }
        # one receipt per sender round: acks arriving together share one
        wait_until(
            lambda: sum(d["refused_count"] for d in list(raw.receipts)) >= 4, 10, "the receipts"
        )
        refused = [r for doc in raw.receipts for r in doc["refused"]]
        assert {r["reason"] for r in refused} == {"not-sent", "no-proof", "proof-mismatch"}
        assert all(doc["chain_head"] == {"seq": 2, "hash": "cd" * 32} for doc in raw.receipts)
        # the heartbeat tells the platform too
        assert sim.wait_for(
            lambda s: any(
                json.loads(p)["queue"].get("acks_refused") == 4
                for (p,) in s.query("SELECT payload FROM heartbeats")
            ),
            10,
        )
        beat = json.loads(sim.query("SELECT payload FROM heartbeats ORDER BY rowid DESC")[0][0])
        assert beat["chain_head"] == {"seq": 2, "hash": "cd" * 32}
        # the platform's own ack, with the proof of what it stored, is what delivers
        sim.set_mode("normal")
        wait_until(lambda: outbox_unacked(station) == 0, 15, "the proven acks")
        assert sim.receipts(station.station_id)[-1]["refused"] == []
        assert sim.count("SELECT count(*) FROM rejected") == 0  # receipts match their schema
    finally:
        raw.close()


def _key_text(key: Ed25519PrivateKey, pem: bool) -> str:
    public = key.public_key()
    if pem:
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def test_with_a_pinned_platform_key_only_signed_fresh_commands_and_acks_are_obeyed(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    key = Ed25519PrivateKey.generate()
    now = station.clock.now
    config = uplink_config(broker, platform_public_key=_key_text(key, pem=True))
    sim = make_sim(config, signing_key=key, sign_clock=now)
    up = make_uplink(station, config)
    wait_until(lambda: up.connected, 10, "connect")
    # the signing platform is obeyed: records delivered, commands answered
    station.commit()
    up.wake()
    wait_until(lambda: outbox_unacked(station) == 0, 15, "signed acks")
    assert sim.command(station.station_id, "ping", {})["ok"] is True
    raw = _Raw(broker, up.root)
    reply_to = f"{up.root}/reply/raw"

    def one(**kw: Any) -> Any:
        """Publish and wait for its reply: a refusal is answered at once, an obeyed command
        from the handler thread, so replies to messages sent together may cross."""
        n = len(raw.replies)
        props = raw.publish("cmd/ping", b"{}", **kw)
        wait_until(lambda: len(raw.replies) == n + 1, 10, f"reply {n + 1}")
        return props

    try:
        one(response_topic=reply_to)  # unsigned
        props = one(key=key, response_topic=reply_to, clock=now)
        one(props=props)  # the same signed message again: a replay
        late = lambda: now() - timedelta(hours=1)  # noqa: E731
        one(key=key, response_topic=reply_to, clock=late)
        one(key=Ed25519PrivateKey.generate(), response_topic=reply_to, clock=now)
        # signed, but the reply would go to another station's root
        one(key=key, clock=now, response_topic="roadside/v1/JS-ZJ-0002/reply/x")
        codes = [doc.get("error", {}).get("code", "ok") for _, doc in raw.replies]
        assert codes == ["unsigned", "ok", "replayed", "stale", "bad-signature",
                         "bad-response-topic"]  # fmt: skip
        assert [t for t, _ in raw.replies][-1] == f"{up.root}/reply/ping"
        assert up.stats()["commands_refused"] == 5
        # an unsigned ack with a perfect proof marks nothing delivered
        sim.set_mode("no-ack")
        stored = station.commit()
        up.wake()
        assert sim.wait_for(lambda s: complete_count(s) == 2, 10)
        doc = {"event_ids": [stored.event_id], "proofs": {stored.event_id: _proof(stored)}}
        raw.publish("ack", json.dumps(doc).encode())
        wait_until(lambda: up.stats()["acks_refused_by_reason"].get("unsigned") == 1, 10, "refusal")
        assert _acked_at(station, stored.event_id) is None
        sim.set_mode("normal")
        wait_until(lambda: outbox_unacked(station) == 0, 15, "the signed ack")
    finally:
        raw.close()


def test_a_raw_base64_platform_key_is_accepted_and_a_bad_one_is_a_config_error() -> None:
    import pytest
    from pydantic import ValidationError

    from agent.uplink.client import UplinkConfig

    key = Ed25519PrivateKey.generate()
    UplinkConfig(host="h", platform_public_key=_key_text(key, pem=False))
    with pytest.raises(ValidationError, match="expected 32 raw Ed25519 key bytes"):
        UplinkConfig(host="h", platform_public_key="AAAA")


def test_after_a_restart_a_missed_record_is_resent_at_the_first_timeout_not_the_longest(
    broker: Mosquitto, station: StationData, make_uplink: MakeUplink, make_sim: MakeSim
) -> None:
    stored = station.commit()
    with station.db.write() as conn:  # eleven attempts in earlier runs, never acked
        conn.execute("UPDATE outbox SET attempts = 11 WHERE ref = ?", (stored.event_id,))
    config = uplink_config(broker, ack_timeout_s=0.3, ack_backoff_factor=2.0,
                           ack_timeout_max_s=600.0)  # fmt: skip
    sim = make_sim(config, mode="no-ack")
    make_uplink(station, config)
    # 0.3 s after its PUBACK (a fresh connection), not min(0.3 × 2¹¹, 600) s
    assert sim.wait_for(
        lambda s: s.count("SELECT coalesce(max(receipts), 0) FROM records") >= 3, 15
    ), "the record was not re-sent within 15 s"


def test_a_message_signed_before_a_restart_is_not_obeyed_after_it() -> None:
    """Nonces live in memory: a restart forgets them. A signed command captured within the
    window before the restart would be obeyed once more; the new process refuses whatever
    was signed before it started (the platform's retry, signed afresh, goes through)."""
    from datetime import datetime, timezone

    from paho.mqtt.properties import Properties

    from agent.uplink.signing import PlatformVerifier, SignatureError

    key = Ed25519PrivateKey.generate()
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))
    clock = {"now": t0}
    topic = "roadside/v1/JS-ZJ-0001/cmd/ping"

    def signed(when: datetime) -> dict[str, str]:
        props = sign_properties(key, topic, b"{}", when, Properties(PacketTypes.PUBLISH))
        return dict(props.UserProperty)

    before = signed(t0 - timedelta(seconds=30))  # captured half a minute before the restart
    restarted = PlatformVerifier(key.public_key(), lambda: clock["now"], window_s=300)
    clock["now"] = t0 + timedelta(seconds=5)
    with pytest.raises(SignatureError, match="before the station's uplink started") as err:
        restarted.check(topic, b"{}", before)
    assert err.value.code == "replayed"
    restarted.check(topic, b"{}", signed(clock["now"]))  # signed afresh: obeyed
