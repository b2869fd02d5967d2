"""What the station puts on the wire besides the sealed records: heartbeat, images, replies."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

from agent import __version__
from agent.store.integrity import canonical_json
from agent.uplink import messages
from agent.uplink.commands import COMMAND_QUEUE, Command, CommandRunner, Dispatcher
from agent.uplink.messages import Message, Topics

TOPICS = Topics("roadside/v1/JS-ZJ-0001")


def _user(message: Message) -> dict[str, str]:
    assert message.properties is not None
    return dict(message.properties.UserProperty)


def test_heartbeat_is_canonical_json_and_survives_values_json_cannot_carry() -> None:
    at = datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
    health = {"devices": {"wim-1": {"last_good_at": at}}, "data_dir": Path("/var/lib/x")}
    beat = messages.heartbeat(
        health,
        station_id="JS-ZJ-0001",
        sent_at="2026-11-26T18:30:00.000+08:00",
        uptime_s=12.5,
        queue={"depth": 3, "oldest_unacked_age_s": None, "in_flight": 0},
        topics=TOPICS,
    )
    assert beat.topic == "roadside/v1/JS-ZJ-0001/heartbeat"
    doc = json.loads(beat.payload)
    assert beat.payload == canonical_json(doc)
    assert doc["schema"] == messages.HEARTBEAT_SCHEMA == "roadside.heartbeat.v1"
    assert doc["devices"]["wim-1"]["last_good_at"] == str(at)
    assert doc["data_dir"] == "/var/lib/x"
    assert doc["software_version"] == __version__
    assert doc["queue"]["depth"] == 3
    assert "data_dir" in health and "schema" not in health  # the station's dict is untouched


def test_heartbeat_keeps_the_stations_software_version() -> None:
    beat = messages.heartbeat(
        {"software_version": "9.9"},
        station_id="S",
        sent_at="t",
        uptime_s=0.0,
        queue={},
        topics=TOPICS,
    )
    assert json.loads(beat.payload)["software_version"] == "9.9"


def test_image_message_carries_its_hash_or_says_why_it_has_no_bytes(tmp_path: Path) -> None:
    jpeg = tmp_path / "front.jpg"
    jpeg.write_bytes(b"\xff\xd8jpeg")
    sent, err = messages.image_message(TOPICS, "EV-1", "front.jpg", "ab" * 32, jpeg)
    assert err is None and sent.payload == b"\xff\xd8jpeg"
    assert sent.topic == "roadside/v1/JS-ZJ-0001/evidence/EV-1/front.jpg"
    assert _user(sent) == {"sha256": "ab" * 32, "content-type": "image/jpeg"}

    evicted, err = messages.image_message(TOPICS, "EV-1", "rear.jpg", "cd" * 32, None)
    assert err is None and evicted.payload == b""
    assert _user(evicted)["evicted"] == "true"

    gone, err = messages.image_message(TOPICS, "EV-1", "side.jpg", "ef" * 32, tmp_path / "no")
    assert isinstance(err, OSError) and gone.payload == b""
    assert _user(gone)["missing"] == str(err) and _user(gone)["sha256"] == "ef" * 32


def test_reply_goes_to_the_response_topic_else_the_reply_topic() -> None:
    reply = {"command": "ping", "ok": True, "result": {"pong": True}}
    direct = messages.command_reply(
        TOPICS, "ping", reply, response_topic="platform/r/1", correlation=b"c1"
    )
    assert direct.topic == "platform/r/1" and direct.payload == canonical_json(reply)
    assert direct.properties is not None and direct.properties.CorrelationData == b"c1"
    fallback = messages.command_reply(TOPICS, "ping", reply, response_topic=None, correlation=None)
    assert fallback.topic == "roadside/v1/JS-ZJ-0001/reply/ping"


def test_a_full_command_queue_answers_busy_at_once_and_runs_nothing() -> None:
    ran: list[str] = []
    sent: list[Message] = []
    runner = CommandRunner(
        Dispatcher({"ping": lambda args: ran.append("ping") or {}}), TOPICS, sent.append
    )
    for i in range(COMMAND_QUEUE + 1):
        runner.submit(Command("ping", b"{}", None, f"c{i}".encode()))
    assert len(sent) == 1 and ran == []
    assert json.loads(sent[0].payload) == {
        "command": "ping",
        "ok": False,
        "error": {"code": "busy", "message": "too many commands waiting; try again"},
    }
    assert sent[0].properties is not None
    assert sent[0].properties.CorrelationData == f"c{COMMAND_QUEUE}".encode()
    stop = threading.Event()
    stop.set()
    runner.close()
    runner.run(stop)  # stop already set: returns without running the queued commands
    assert ran == []


def test_ack_parsing_takes_the_ids_and_ignores_garbage() -> None:
    ack = json.dumps({"event_ids": ["EV-1", 7, "EV-2"], "alarm_ids": "A-1"}).encode()
    assert messages.parse_ack(ack) == [
        messages.AckClaim("event", "EV-1", None),
        messages.AckClaim("event", "EV-2", None),
    ]
    assert messages.parse_ack(b'{"alarm_ids": ["A-1"]}') == [
        messages.AckClaim("alarm", "A-1", None)
    ]
    assert messages.parse_ack(b"not json") == []
    assert messages.parse_ack(b"[1, 2]") == []
    assert messages.parse_ack(b"[" * 100_000 + b"]" * 100_000) == []


def test_an_ack_proof_is_the_record_hash_and_every_image_hash() -> None:
    record = {
        "integrity": {"hash": "ab" * 32},
        "images": [
            {"name": "front.jpg", "sha256": "11" * 32},
            {"name": "rear.jpg", "sha256": "22" * 32},
        ],
    }
    published = messages.published_event_proof(json.dumps(record))
    proof = {"hash": "AB" * 32, "images": {"rear.jpg": "22" * 32, "front.jpg": "11" * 32}}
    ack = {
        "event_ids": ["EV-1", "EV-2", "EV-3"],
        "proofs": {
            "EV-1": proof,
            "EV-2": {**proof, "images": {"front.jpg": "11" * 32}},
            "EV-3": "x",
        },
    }
    claims = messages.parse_ack(json.dumps(ack).encode())
    assert claims[0].proof == published  # hex case and order do not matter
    assert claims[1].proof not in (None, published)  # an image left out is another proof
    assert claims[2].proof is None
    alarm = b'{"alarm_id":"A-1"}'
    doc = {"alarm_ids": ["A-1"], "alarm_proofs": {"A-1": hashlib.sha256(alarm).hexdigest()}}
    assert messages.parse_ack(json.dumps(doc).encode())[0].proof == messages.alarm_proof(alarm)


def test_reply_topics_only_under_the_station_reply_root() -> None:
    assert TOPICS.reply_topic_allowed("roadside/v1/JS-ZJ-0001/reply/abc")
    for topic in (
        "roadside/v1/JS-ZJ-0002/reply/abc",
        "roadside/v1/JS-ZJ-0001/cmd/set-config",
        "roadside/v1/JS-ZJ-0001/ack",
        "roadside/v1/JS-ZJ-0001/reply/",
        "roadside/v1/JS-ZJ-0001/reply/#",
        "elsewhere/reply",
    ):
        assert not TOPICS.reply_topic_allowed(topic), topic


def test_topics_name_the_commands() -> None:
    assert TOPICS.command_name("roadside/v1/JS-ZJ-0001/cmd/set-permits") == "set-permits"
    assert TOPICS.command_name("roadside/v1/JS-ZJ-0001/ack") is None
    assert TOPICS.command_name("roadside/v1/JS-ZJ-0002/cmd/ping") is None


def test_status_payloads_are_what_the_platform_reads() -> None:
    assert messages.ONLINE == b'{"state":"online"}'
    assert messages.OFFLINE == b'{"state":"offline"}'
