"""What the station and the platform say to each other: topics and payloads (DESIGN §5).

Every payload the station builds is canonical JSON (:func:`agent.store.integrity.canonical_json`,
the bytes the evidence store hashes), except the images, which travel as they are with their
hash in the MQTT 5 user properties. Records and alarms are not built here: the outbox holds
their final, sealed documents. Nothing here does network I/O; :mod:`agent.uplink.delivery`
publishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
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
    def acked(self) -> str:
        """The station's receipt for each ack (:func:`ack_receipt`)."""
        return f"{self.root}/acked"

    @property
    def commands(self) -> str:
        """The subscription for platform commands, ``{root}/cmd/+``."""
        return f"{self.root}/cmd/+"

    def evidence(self, event_id: str, name: str) -> str:
        return f"{self.root}/evidence/{event_id}/{name}"

    def reply(self, command: str) -> str:
        """Where a reply goes when the command named no MQTT 5 response topic."""
        return f"{self.root}/reply/{command}"

    def reply_topic_allowed(self, topic: str) -> bool:
        """Whether a command's MQTT 5 response topic may be used: only under
        ``{root}/reply/`` and without wildcards (never another station's root, nor the
        station's own command or ack topics, where a reply would come back as a command)."""
        prefix = f"{self.root}/reply/"
        return (
            topic.startswith(prefix)
            and len(topic) > len(prefix)
            and not set(topic) & {"+", "#", "\0"}
        )

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
    chain_head: Mapping[str, Any] | None = None,
) -> Message:
    """The ``roadside.heartbeat.v1`` document: the station's ``health``, the uplink's queue and
    the evidence chain's signed head (``null`` when the station has none to give).

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
        chain_head=None if chain_head is None else dict(chain_head),
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


@dataclass(frozen=True)
class AckClaim:
    """One id of an ack on ``{root}/ack`` with the proof the platform gave for it.

    ``proof`` is the digest of what the platform says it holds (:func:`event_proof`,
    :func:`alarm_proof`), ``None`` when it gave no (well-formed) proof; the uplink compares it
    with the digest of what it published.
    """

    kind: str  # the outbox kind: "event" | "alarm"
    ref: str
    proof: str | None


def event_proof(record_hash: str, images: Mapping[str, str], videos: Mapping[str, str]) -> str:
    """The digest an event ack must match: the record's ``integrity.hash`` and every image's
    and video clip's SHA-256 by name (lower-case hex), in one canonical JSON."""
    doc = {"hash": record_hash, "images": dict(images), "videos": dict(videos)}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def published_event_proof(record_json: str) -> str:
    """:func:`event_proof` of a record as the station publishes it (its stored JSON)."""
    record = json.loads(record_json)
    return event_proof(
        str(record["integrity"]["hash"]),
        {str(i["name"]): str(i["sha256"]) for i in record.get("images") or []},
        {str(v["name"]): str(v["sha256"]) for v in record.get("videos") or []},
    )


def alarm_proof(payload: bytes) -> str:
    """The digest an alarm ack must match: the SHA-256 of the alarm message's bytes."""
    return hashlib.sha256(payload).hexdigest()


def _names_to_hashes(value: Any) -> dict[str, str] | None:
    if value is None:
        return {}
    if not isinstance(value, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return {k: v.lower() for k, v in value.items()}


def _given_event_proof(entry: Any) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
        return None
    images = _names_to_hashes(entry.get("images"))
    videos = _names_to_hashes(entry.get("videos"))
    if images is None or videos is None:
        return None
    return event_proof(entry["hash"].lower(), images, videos)


def _given_alarm_proof(entry: Any) -> str | None:
    return entry.lower() if isinstance(entry, str) else None


#: Per ack key: the key of its proofs and how one proof becomes the digest.
_PROOFS: dict[str, tuple[str, Callable[[Any], str | None]]] = {
    "event_ids": ("proofs", _given_event_proof),
    "alarm_ids": ("alarm_proofs", _given_alarm_proof),
}


def parse_ack(payload: bytes) -> list[AckClaim]:
    """The claims of an ack on ``{root}/ack``; garbage is logged, not raised.

    ``{"event_ids": [...], "proofs": {id: {"hash", "images", "videos"}}, "alarm_ids": [...],
    "alarm_proofs": {id: sha256}}``; an id without a well-formed proof is a claim with
    ``proof=None`` (the uplink refuses it).
    """
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        log.warning("uplink: ack is not JSON: %r", payload[:200])
        return []
    if not isinstance(doc, dict):
        log.warning("uplink: ack is not a JSON object: %r", payload[:200])
        return []
    claims: list[AckClaim] = []
    for key, kind in ACK_KINDS:
        ids = doc.get(key, [])
        if not isinstance(ids, list):
            log.warning("uplink: ack %s is not a list", key)
            continue
        proofs_key, digest = _PROOFS[key]
        proofs = doc.get(proofs_key)
        if not isinstance(proofs, dict):
            proofs = {}
        claims.extend(
            AckClaim(kind, ref, digest(proofs.get(ref))) for ref in ids if isinstance(ref, str)
        )
    return claims


RECEIPT_SCHEMA = "roadside.ack-receipt.v1"
#: Most refused ids listed in one receipt (the rest are counted).
RECEIPT_MAX_REFUSED = 100


def ack_receipt(
    topics: Topics,
    *,
    station_id: str,
    sent_at: str,
    accepted: Mapping[str, int],
    refused: list[dict[str, str]],
    chain_head: Mapping[str, Any] | None,
) -> Message:
    """The station's answer to an ack on ``{root}/acked``: how many ids it accepted per kind,
    which it refused and why, and its signed chain head (so a record cut off the end of the
    chain shows at the platform)."""
    doc = {
        "schema": RECEIPT_SCHEMA,
        "station_id": station_id,
        "sent_at": sent_at,
        "accepted": dict(accepted),
        "refused": refused[:RECEIPT_MAX_REFUSED],
        "refused_count": len(refused),
        "chain_head": None if chain_head is None else dict(chain_head),
    }
    plain = json.loads(json.dumps(doc, default=str))
    return Message(topics.acked, canonical_json(plain))
