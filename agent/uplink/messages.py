"""What the station and the platform say to each other: topics and payloads (DESIGN §5).

Every payload the station builds is canonical JSON (:func:`agent.store.integrity.canonical_json`,
the bytes the evidence store hashes), except the images, which travel as they are with their
hash in the MQTT 5 user properties. Records and alarms are not built here: the outbox holds
their final, sealed documents. Nothing here does network I/O; :mod:`agent.uplink.delivery`
publishes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from agent.store.clips import content_type
from agent.store.integrity import canonical_json
from agent.uplink.client import mqtt_properties

log = logging.getLogger(__name__)

HEARTBEAT_SCHEMA = "roadside.heartbeat.v1"
#: ``{root}/status`` (retained): published on every connect; the last will says offline.
ONLINE = canonical_json({"state": "online"})
OFFLINE = canonical_json({"state": "offline"})
#: The platform's ack lists: the key in ``{root}/ack`` and the outbox kind it acknowledges.
ACK_KINDS = (("event_ids", "event"), ("alarm_ids", "alarm"))


@dataclass(frozen=True)
class Topics:
    """The topics under one station's root, ``{prefix}/{station_id}``."""

    root: str

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def heartbeat(self) -> str:
        return f"{self.root}/heartbeat"

    @property
    def events(self) -> str:
        return f"{self.root}/events"

    @property
    def alarms(self) -> str:
        return f"{self.root}/alarms"

    @property
    def ack(self) -> str:
        return f"{self.root}/ack"

    @property
    def commands(self) -> str:
        """The subscription for platform commands, ``{root}/cmd/+``."""
        return f"{self.root}/cmd/+"

    def evidence(self, event_id: str, name: str) -> str:
        return f"{self.root}/evidence/{event_id}/{name}"

    def reply(self, command: str) -> str:
        """Where a reply goes when the command named no MQTT 5 response topic."""
        return f"{self.root}/reply/{command}"

    def command_name(self, topic: str) -> str | None:
        """The command's name if ``topic`` is ``{root}/cmd/{name}``, else ``None``."""
        prefix = f"{self.root}/cmd/"
        return topic[len(prefix) :] if topic.startswith(prefix) else None


@dataclass(frozen=True)
class Message:
    """One MQTT PUBLISH (always QoS 1)."""

    topic: str
    payload: bytes
    properties: Properties | None = None


def heartbeat(
    health: dict[str, Any],
    *,
    station_id: str,
    sent_at: str,
    uptime_s: float,
    queue: dict[str, Any],
    topics: Topics,
) -> Message:
    """The ``roadside.heartbeat.v1`` document: the station's ``health`` and the uplink's queue.

    A value JSON cannot carry (a datetime or Path in the station's health) is sent as its
    ``str()``: it must not stop the heartbeat.
    """
    doc = dict(health)
    doc.update(
        schema=HEARTBEAT_SCHEMA,
        station_id=station_id,
        sent_at=sent_at,
        uptime_s=uptime_s,
        software_version=doc.get("software_version", __version__),
        queue=queue,
    )
    plain = json.loads(json.dumps(doc, default=str))  # str() what JSON cannot carry
    return Message(topics.heartbeat, canonical_json(plain))


def image_message(
    topics: Topics, event_id: str, name: str, sha256: str, path: Path | None
) -> tuple[Message, OSError | None]:
    """An image on ``{root}/evidence/{event_id}/{name}``, and the error if it is unreadable.

    User properties: ``sha256`` and ``content-type`` always; ``evicted: true`` with no bytes
    when retention removed the file (``path`` is ``None``); ``missing: <why>`` with no bytes
    when the file cannot be read. The record still goes: the platform sees what is missing.
    """
    props = mqtt_properties(PacketTypes.PUBLISH)
    user = [("sha256", sha256), ("content-type", content_type(name))]  # a photo or a clip
    data = b""
    error: OSError | None = None
    if path is None:
        user.append(("evicted", "true"))
    else:
        try:
            data = path.read_bytes()
        except OSError as err:
            error = err
            user.append(("missing", str(err)))
    props.UserProperty = user
    return Message(topics.evidence(event_id, name), data, props), error


def command_reply(
    topics: Topics,
    command: str,
    reply: dict[str, Any],
    *,
    response_topic: str | None,
    correlation: bytes | None,
) -> Message:
    """A command's reply: to its MQTT 5 response topic with its correlation data, else to
    ``{root}/reply/{command}``."""
    props = mqtt_properties(PacketTypes.PUBLISH)
    if correlation is not None:
        props.CorrelationData = correlation
    return Message(response_topic or topics.reply(command), canonical_json(reply), props)


def busy_reply(command: str) -> dict[str, Any]:
    """The reply to a command that finds the command queue full (it is not run)."""
    return {
        "command": command,
        "ok": False,
        "error": {"code": "busy", "message": "too many commands waiting; try again"},
    }


def parse_ack(payload: bytes) -> list[tuple[str, list[str]]]:
    """``(outbox kind, ids)`` pairs of an ack on ``{root}/ack``; garbage is logged, not raised."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        log.warning("uplink: ack is not JSON: %r", payload[:200])
        return []
    if not isinstance(doc, dict):
        log.warning("uplink: ack is not a JSON object: %r", payload[:200])
        return []
    acks: list[tuple[str, list[str]]] = []
    for key, kind in ACK_KINDS:
        ids = doc.get(key, [])
        if not isinstance(ids, list):
            log.warning("uplink: ack %s is not a list", key)
            continue
        refs = [i for i in ids if isinstance(i, str)]
        if refs:
            acks.append((kind, refs))
    return acks
