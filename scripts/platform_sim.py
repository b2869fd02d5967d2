"""A platform simulator: the other end of the uplink contract (``docs/uplink.md``).

It subscribes to ``{prefix}/+/#``, validates every payload against the JSON Schemas in
``docs/schema/``, checks each record's integrity hash and each image's SHA-256 against the
record, stores records and images in its own SQLite file, and acknowledges a record on
``{root}/ack`` only once the record and all its images have arrived intact. Tests and the demo
run it in-process (:class:`PlatformSim`); ``scripts/platform_sim`` runs it standalone.

Modes (:meth:`PlatformSim.set_mode`), to rehearse a misbehaving platform:

- ``normal``: ack every complete record within a few milliseconds (acks are batched);
- ``no-ack``: store but never ack;
- ``ack-late``: ack ``ack_delay_s`` after the record is complete;
- ``disconnect``: drop the connection and stay away until set back to another mode.

Duplicates are expected (the station re-sends what it has no ack for): the store upserts by
``event_id`` and counts receipts, and a duplicate of an already stored record is acked again
(the station may have lost the first ack).

Each ack proves what the platform holds (``docs/uplink.md`` §3.5): per record the
``integrity.hash`` it verified and the SHA-256 of every image as it stored it, per alarm the
SHA-256 of the bytes it received. Given a ``signing_key`` (the platform's Ed25519 private key),
it signs every ack and command (§5.1, MQTT 5 user properties ``sig-*``). The station's receipts
on ``{root}/acked`` are kept (:meth:`PlatformSim.receipts`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.store.integrity import canonical_json, chain_hash
from agent.uplink.client import (
    UplinkConfig,
    connect_in_background,
    make_client,
    mqtt_properties,
    set_nodelay,
)

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schema"
MODES = ("normal", "no-ack", "ack-late", "disconnect")
#: Acks go out at most this often, seconds (one ack message lists many records).
ACK_BATCH_S = 0.005
ACK_MAX_IDS = 1000


# -- a small JSON Schema validator (the subset docs/schema uses; no runtime dependency) -------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


_Check = Callable[[Any, str, list[str]], None]
_COMPILED: dict[int, tuple[dict[str, Any], _Check]] = {}


def validate(instance: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Problems of ``instance`` against ``schema`` as ``path: message``; empty when valid.

    Supports ``type``, ``const``, ``enum``, ``required``, ``properties``,
    ``additionalProperties`` (``false`` or a schema), ``items``, ``minItems``, ``pattern``,
    ``minLength``, ``maxLength``, ``minimum``, ``maximum``. The schema is compiled into closures
    once (the simulator checks every record of a 100 000-record drain).
    """
    cached = _COMPILED.get(id(schema))
    if cached is None or cached[0] is not schema:
        cached = (schema, _compile(schema))
        _COMPILED[id(schema)] = cached
    problems: list[str] = []
    cached[1](instance, path, problems)
    return problems


def _compile(schema: dict[str, Any]) -> _Check:
    """One schema node as a function appending its problems.

    ``const`` / ``enum`` first, then ``type``; only a value that passes both is checked
    against the keywords of its kind (object, array, string, number).
    """
    values = _value_checks(schema)
    kinds = schema.get("type")
    type_ok: Callable[[Any], bool] | None = None
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        tests = [_TYPES[k] for k in names]
        type_ok = (lambda v: any(t(v) for t in tests)) if len(tests) > 1 else tests[0]
    label = "/".join(kinds) if isinstance(kinds, list) else str(kinds)
    check_object = _object_check(schema)
    check_array = _array_check(schema)
    check_string = _string_check(schema)
    check_number = _number_check(schema)

    def check(v: Any, path: str, out: list[str]) -> None:
        before = len(out)
        for c in values:
            c(v, path, out)
        if len(out) > before:
            return
        if type_ok is not None and not type_ok(v):
            out.append(f"{path}: expected {label}, got {type(v).__name__}")
            return
        if isinstance(v, dict):
            check_object(v, path, out)
        elif isinstance(v, list):
            check_array(v, path, out)
        elif isinstance(v, str):
            check_string(v, path, out)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            check_number(v, path, out)

    return check


def _value_checks(schema: dict[str, Any]) -> list[_Check]:
    """``const`` and ``enum``."""
    checks: list[_Check] = []
    if "const" in schema:
        const = schema["const"]

        def check_const(v: Any, path: str, out: list[str]) -> None:
            if v != const:
                out.append(f"{path}: expected {const!r}, got {v!r}")

        checks.append(check_const)
    if "enum" in schema:
        enum = list(schema["enum"])

        def check_enum(v: Any, path: str, out: list[str]) -> None:
            if v not in enum:
                out.append(f"{path}: {v!r} is not one of {enum}")

        checks.append(check_enum)
    return checks


def _object_check(schema: dict[str, Any]) -> _Check:
    """``required``, ``properties`` and ``additionalProperties`` (``false`` or a schema)."""
    required = list(schema.get("required", []))
    props = {k: _compile(v) for k, v in schema.get("properties", {}).items()}
    extra = schema.get("additionalProperties")
    closed = extra is False
    other = _compile(extra) if isinstance(extra, dict) else None

    def check(v: dict[str, Any], path: str, out: list[str]) -> None:
        for key in required:
            if key not in v:
                out.append(f"{path}: missing {key!r}")
        for key, value in v.items():
            sub = props.get(key) or other
            if sub is not None:
                sub(value, f"{path}.{key}", out)
            elif closed:
                out.append(f"{path}: unexpected {key!r}")

    return check


def _array_check(schema: dict[str, Any]) -> _Check:
    """``minItems`` and ``items``."""
    items = _compile(schema["items"]) if "items" in schema else None
    min_items = schema.get("minItems", 0)

    def check(v: list[Any], path: str, out: list[str]) -> None:
        if len(v) < min_items:
            out.append(f"{path}: fewer than {min_items} items")
        if items is not None:
            for i, item in enumerate(v):
                items(item, f"{path}[{i}]", out)

    return check


def _string_check(schema: dict[str, Any]) -> _Check:
    """``pattern``, ``minLength`` and ``maxLength``."""
    pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
    min_len = schema.get("minLength", 0)
    max_len = schema.get("maxLength")

    def check(v: str, path: str, out: list[str]) -> None:
        if pattern is not None and not pattern.search(v):
            out.append(f"{path}: {v!r} does not match {pattern.pattern}")
        if len(v) < min_len:
            out.append(f"{path}: shorter than {min_len}")
        if max_len is not None and len(v) > max_len:
            out.append(f"{path}: longer than {max_len}")

    return check


def _number_check(schema: dict[str, Any]) -> _Check:
    """``minimum`` and ``maximum``."""
    minimum = schema.get("minimum")
    maximum = schema.get("maximum")

    def check(v: float, path: str, out: list[str]) -> None:
        if minimum is not None and v < minimum:
            out.append(f"{path}: {v} below {minimum}")
        if maximum is not None and v > maximum:
            out.append(f"{path}: {v} above {maximum}")

    return check


def load_schema(name: str, schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    """``docs/schema/{name}.json`` (e.g. ``vehicle-event.v1``)."""
    doc: dict[str, Any] = json.loads((schema_dir / f"{name}.json").read_text(encoding="utf-8"))
    return doc


def check_record(record: Any, schema: dict[str, Any]) -> list[str]:
    """Schema problems plus an integrity hash that does not match the record's bytes."""
    problems = validate(record, schema)
    if problems:
        return problems
    body = {k: v for k, v in record.items() if k != "integrity"}
    seal = record["integrity"]
    if chain_hash(seal["prev_hash"], canonical_json(body)) != seal["hash"]:
        problems.append("$.integrity.hash: does not match the record (altered in transit?)")
    return problems


_MIGRATION = """
CREATE TABLE IF NOT EXISTS records (
    event_id TEXT PRIMARY KEY, station_id TEXT NOT NULL, seq INTEGER, status TEXT,
    measured_at TEXT, record_json TEXT NOT NULL, arrival INTEGER NOT NULL,
    received_mono REAL NOT NULL, receipts INTEGER NOT NULL DEFAULT 1,
    complete_at REAL, acks_sent INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS images (
    event_id TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL,
    data BLOB, evicted INTEGER NOT NULL DEFAULT 0, receipts INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (event_id, name));
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id TEXT PRIMARY KEY, station_id TEXT NOT NULL, kind TEXT, payload TEXT NOT NULL,
    arrival INTEGER NOT NULL, receipts INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS heartbeats (station_id TEXT, received_mono REAL, payload TEXT);
CREATE TABLE IF NOT EXISTS status (station_id TEXT PRIMARY KEY, state TEXT);
CREATE TABLE IF NOT EXISTS rejected (topic TEXT, reason TEXT, payload BLOB);
CREATE TABLE IF NOT EXISTS receipts (station_id TEXT, payload TEXT);
"""


@dataclass
class _PendingAck:
    station_id: str
    key: str  # "event_ids" | "alarm_ids"
    ref: str
    due_mono: float
    proof: Any = None  # what the ack says the platform holds (docs/uplink.md §3.5)


#: The signed string of a platform signature (docs/uplink.md §5.1), written out here on its
#: own: the simulator is the platform's side, it must not borrow the station's code.
SIGNATURE_DOMAIN = "roadside.platform-signature.v1"


def sign_properties(
    key: Ed25519PrivateKey, topic: str, payload: bytes, when: datetime, props: Properties
) -> Properties:
    """Add ``sig-alg``, ``sig-time``, ``sig-nonce``, ``sig`` to ``props`` (and return it)."""
    sig_time = when.isoformat(timespec="milliseconds")
    nonce = uuid.uuid4().hex
    text = "\n".join(
        [SIGNATURE_DOMAIN, topic, sig_time, nonce, hashlib.sha256(payload).hexdigest()]
    )
    signature = base64.b64encode(key.sign(text.encode("utf-8"))).decode("ascii")
    user = list(getattr(props, "UserProperty", None) or [])
    user += [("sig-alg", "ed25519"), ("sig-time", sig_time), ("sig-nonce", nonce)]
    user.append(("sig", signature))
    props.UserProperty = user
    return props


def _evidence_files(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The files a record names that must arrive intact before it is acked: images, videos."""
    return [*record.get("images", []), *record.get("videos", [])]


class PlatformSim:
    """The central platform's side of the contract, on any MQTT 5 broker.

    ``config`` reuses the station's :class:`~agent.uplink.UplinkConfig` for host, port, prefix,
    TLS and credentials (the platform is just another client). Thread-safe accessors; every
    write happens on paho's network thread under one lock.
    """

    def __init__(
        self,
        config: UplinkConfig,
        *,
        db_path: Path | str = ":memory:",
        client_id: str = "platform-sim",
        mode: str = "normal",
        ack_delay_s: float = 0.0,
        schema_dir: Path = SCHEMA_DIR,
        store_images: bool = True,
        signing_key: Ed25519PrivateKey | None = None,
        sign_clock: Callable[[], datetime] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        self.config = config
        self.prefix = config.prefix
        self.client_id = client_id
        self.mode = mode
        self.ack_delay_s = ack_delay_s
        self.store_images = store_images
        self.signing_key = signing_key
        self.sign_clock = sign_clock or (lambda: datetime.now(UTC).astimezone())
        self.event_schema = load_schema("vehicle-event.v1", schema_dir)
        self.alarm_schema = load_schema("alarm.v1", schema_dir)
        self.heartbeat_schema = load_schema("heartbeat.v1", schema_dir)
        self.receipt_schema = load_schema("ack-receipt.v1", schema_dir)
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # a simulator: speed over durability
        self._db.executescript(_MIGRATION)
        # Writes collect in one open transaction, committed just before acks go out: the
        # platform acks only what it has stored, and 100 000 records are not 100 000 commits.
        self._db.execute("BEGIN")
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._arrival = int(
            self._db.execute("SELECT coalesce(max(arrival), 0) FROM records").fetchone()[0]
        )
        self._acks: list[_PendingAck] = []
        self._replies: dict[bytes, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._ack_thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self.acks_published = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and subscribe; returns once subscribed (or raises ``TimeoutError``)."""
        client, props = make_client(self.config, self.client_id)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        connect_in_background(client, self.config, props)
        self._ack_thread = threading.Thread(target=self._ack_loop, name="sim-ack", daemon=True)
        self._ack_thread.start()
        if not self._connected.wait(timeout_s):
            raise TimeoutError(
                f"platform sim: no connection to {self.config.host}:"
                f"{self.config.port} within {timeout_s} s"
            )

    def stop(self) -> None:
        """Disconnect and close the store. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._ack_thread is not None:
            self._ack_thread.join(2)
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
            self._db.close()

    def set_mode(self, mode: str, ack_delay_s: float | None = None) -> None:
        """Switch behaviour (see the module doc); ``disconnect`` drops the link now."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        previous, self.mode = self.mode, mode
        if ack_delay_s is not None:
            self.ack_delay_s = ack_delay_s
        client = self._client
        if client is None:
            return
        if mode == "disconnect" and previous != "disconnect":
            client.disconnect()
            client.loop_stop()
            self._connected.clear()
        elif previous == "disconnect" and mode != "disconnect":
            client.reconnect()
            client.loop_start()
            self._connected.wait(10)
        if previous == "no-ack" and mode != "no-ack":
            self._ack_everything_complete()

    # -- what tests look at -------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[PlatformSim], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked on every stored message)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.2))
        return True

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return [tuple(r) for r in self._db.execute(sql, params).fetchall()]

    def count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return int(self.query(sql, params)[0][0])

    def summary(self) -> dict[str, Any]:
        """Counts of what the platform holds (for the CLI and benchmarks)."""
        return _summary(self)

    def complete_ids(self) -> list[str]:
        """Event ids stored complete (record + intact images), in order of first arrival."""
        return [
            r[0]
            for r in self.query(
                "SELECT event_id FROM records WHERE complete_at IS NOT NULL ORDER BY arrival"
            )
        ]

    def arrival_order(self) -> list[str]:
        return [r[0] for r in self.query("SELECT event_id FROM records ORDER BY arrival")]

    def record(self, event_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT record_json FROM records WHERE event_id = ?", (event_id,))
        return json.loads(rows[0][0]) if rows else None

    def command(
        self, station_id: str, name: str, payload: bytes | dict[str, Any], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """Send a command and wait for its reply (MQTT 5 response topic + correlation data)."""
        assert self._client is not None
        corr = uuid.uuid4().hex.encode()
        props = mqtt_properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{self.prefix}/{station_id}/reply/{corr.decode()}"
        props.CorrelationData = corr
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.publish(f"{self.prefix}/{station_id}/cmd/{name}", data, props)
        if not self.wait_for(lambda s: corr in s._replies, timeout_s):
            raise TimeoutError(f"no reply to {name} from {station_id} within {timeout_s} s")
        with self._lock:
            return self._replies.pop(corr)

    def publish(self, topic: str, payload: bytes, props: Properties | None = None) -> None:
        """Publish at QoS 1, signed when the simulator has a signing key."""
        assert self._client is not None
        if self.signing_key is not None:
            props = sign_properties(
                self.signing_key,
                topic,
                payload,
                self.sign_clock(),
                props or mqtt_properties(PacketTypes.PUBLISH),
            )
        self._client.publish(topic, payload, qos=1, properties=props)

    def receipts(self, station_id: str | None = None) -> list[dict[str, Any]]:
        """The station's ack receipts (``{root}/acked``), oldest first."""
        rows = self.query("SELECT station_id, payload FROM receipts ORDER BY rowid")
        return [json.loads(p) for sid, p in rows if station_id in (None, sid)]

    # -- paho callbacks -----------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            log.error("platform sim: broker refused: %s", rc)
            return
        set_nodelay(client)
        client.subscribe(f"{self.prefix}/+/#", qos=1)
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg)
        except Exception as err:  # never kill the network thread
            log.exception("platform sim: %s failed", msg.topic)
            self._reject(msg.topic, f"internal: {err}", bytes(msg.payload))

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        n = len(self.prefix.split("/"))
        if len(parts) < n + 2:
            return
        station_id, kind, rest = parts[n], parts[n + 1], parts[n + 2 :]
        payload = bytes(msg.payload)
        if kind == "events":
            self._on_event(station_id, payload)
        elif kind == "evidence" and len(rest) == 2:
            self._on_image(station_id, rest[0], rest[1], payload, msg)
        elif kind == "alarms":
            self._on_alarm(station_id, payload)
        elif kind == "heartbeat":
            self._on_json(station_id, "heartbeat", payload, self.heartbeat_schema)
        elif kind == "status":
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO status VALUES (?, ?)",
                    (station_id, payload.decode(errors="replace")),
                )
                self._changed.notify_all()
        elif kind == "acked":
            problems = validate(self._parse(msg.topic, payload), self.receipt_schema)
            if problems:
                self._reject(msg.topic, "; ".join(problems[:5]), payload)
                return
            with self._lock:
                self._db.execute(
                    "INSERT INTO receipts VALUES (?, ?)", (station_id, payload.decode())
                )
                self._changed.notify_all()
        elif kind == "reply":
            corr = getattr(msg.properties, "CorrelationData", None)
            if isinstance(corr, bytes | bytearray):
                with self._lock:
                    self._replies[bytes(corr)] = json.loads(payload)
                    self._changed.notify_all()

    def _reject(self, topic: str, reason: str, payload: bytes) -> None:
        log.warning("platform sim: rejected %s: %s", topic, reason)
        with self._lock:
            self._db.execute("INSERT INTO rejected VALUES (?, ?, ?)", (topic, reason, payload))
            self._changed.notify_all()

    def _parse(self, topic: str, payload: bytes) -> Any:
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError) as err:
            self._reject(topic, f"not JSON: {err}", payload)
            return None

    def _on_event(self, station_id: str, payload: bytes) -> None:
        topic = f"{self.prefix}/{station_id}/events"
        record = self._parse(topic, payload)
        if record is None:
            return
        problems = check_record(record, self.event_schema)
        if not problems and record["station_id"] != station_id:
            problems = [f"$.station_id {record['station_id']!r} published under {station_id!r}"]
        if problems:
            self._reject(topic, "; ".join(problems[:5]), payload)
            return
        event_id = record["event_id"]
        now = time.monotonic()
        with self._lock:
            # one statement: insert, or count a duplicate receipt (the station re-sends)
            receipts = self._db.execute(
                "INSERT INTO records (event_id, station_id, seq, status, measured_at,"
                " record_json, arrival, received_mono, complete_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id)"
                " DO UPDATE SET receipts = receipts + 1 RETURNING receipts",
                (
                    event_id,
                    station_id,
                    record["seq"],
                    record["verdict"]["status"],
                    record["measured_at"],
                    payload.decode(),
                    self._arrival + 1,
                    now,
                    None if _evidence_files(record) else now,
                ),
            ).fetchone()[0]
            if receipts == 1:
                self._arrival += 1
            if _evidence_files(record):
                self._check_complete(station_id, event_id, record)
            else:
                self._queue_ack(station_id, "event_ids", event_id)
                self._changed.notify_all()

    def _on_image(
        self, station_id: str, event_id: str, name: str, payload: bytes, msg: mqtt.MQTTMessage
    ) -> None:
        user = dict(getattr(msg.properties, "UserProperty", []) or []) if msg.properties else {}
        evicted = user.get("evicted") == "true"
        digest = hashlib.sha256(payload).hexdigest()
        if not evicted and user.get("sha256") != digest:
            self._reject(
                msg.topic,
                f"sha256 user property {user.get('sha256')!r} does not match the bytes ({digest})",
                b"",
            )
            return
        with self._lock:
            self._db.execute(
                "INSERT INTO images (event_id, name, sha256, bytes, data, evicted)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, name) DO UPDATE SET"
                " receipts = receipts + 1, sha256 = excluded.sha256, data = excluded.data,"
                " evicted = excluded.evicted",
                (
                    event_id,
                    name,
                    user.get("sha256", digest) if evicted else digest,
                    len(payload),
                    payload if self.store_images else None,
                    int(evicted),
                ),
            )
            row = self._db.execute(
                "SELECT record_json FROM records WHERE event_id = ?", (event_id,)
            ).fetchone()
            if row is not None:
                self._check_complete(station_id, event_id, json.loads(row[0]))
            else:
                self._changed.notify_all()

    def _check_complete(self, station_id: str, event_id: str, record: dict[str, Any]) -> None:
        """Under the lock: ack when the record and all its images are stored intact."""
        images = {
            r[0]: (r[1], r[2])
            for r in self._db.execute(
                "SELECT name, sha256, evicted FROM images WHERE event_id = ?", (event_id,)
            )
        }
        for img in _evidence_files(record):  # photos and video clips alike (DESIGN §4a)
            got = images.get(img["name"])
            if got is None:
                self._changed.notify_all()
                return
            if got[0] != img["sha256"]:
                self._reject(
                    f"{self.prefix}/{station_id}/evidence/{event_id}/{img['name']}",
                    "evidence file sha256 differs from the record",
                    b"",
                )
                return
        self._db.execute(
            "UPDATE records SET complete_at = coalesce(complete_at, ?) WHERE event_id = ?",
            (time.monotonic(), event_id),
        )
        self._queue_ack(station_id, "event_ids", event_id)
        self._changed.notify_all()

    def _on_alarm(self, station_id: str, payload: bytes) -> None:
        topic = f"{self.prefix}/{station_id}/alarms"
        doc = self._parse(topic, payload)
        if doc is None:
            return
        problems = validate(doc, self.alarm_schema)
        if problems:
            self._reject(topic, "; ".join(problems[:5]), payload)
            return
        with self._lock:
            cur = self._db.execute(
                "UPDATE alarms SET receipts = receipts + 1 WHERE alarm_id = ?", (doc["alarm_id"],)
            )
            if cur.rowcount == 0:
                self._arrival += 1
                self._db.execute(
                    "INSERT INTO alarms VALUES (?, ?, ?, ?, ?, 1)",
                    (doc["alarm_id"], station_id, doc["kind"], payload.decode(), self._arrival),
                )
            self._queue_ack(station_id, "alarm_ids", doc["alarm_id"])
            self._changed.notify_all()

    def _on_json(self, station_id: str, kind: str, payload: bytes, schema: dict[str, Any]) -> None:
        topic = f"{self.prefix}/{station_id}/{kind}"
        doc = self._parse(topic, payload)
        if doc is None:
            return
        problems = validate(doc, schema)
        if problems:
            self._reject(topic, "; ".join(problems[:5]), payload)
            return
        with self._lock:
            self._db.execute(
                "INSERT INTO heartbeats VALUES (?, ?, ?)",
                (station_id, time.monotonic(), payload.decode()),
            )
            self._changed.notify_all()

    # -- acks ---------------------------------------------------------------------------------

    def _queue_ack(self, station_id: str, key: str, ref: str) -> None:
        """Under the lock: ack ``ref`` soon, with the proof of what is stored for it."""
        if self.mode == "no-ack":
            return
        delay = self.ack_delay_s if self.mode == "ack-late" else 0.0
        proof = self._event_proof(ref) if key == "event_ids" else self._alarm_proof(ref)
        self._acks.append(_PendingAck(station_id, key, ref, time.monotonic() + delay, proof))

    def _event_proof(self, event_id: str) -> dict[str, Any]:
        """The record hash the simulator verified and each photo's and clip's hash as it stored
        them (the clips are the files the record lists under ``videos``)."""
        row = self._db.execute(
            "SELECT record_json FROM records WHERE event_id = ?", (event_id,)
        ).fetchone()
        record = json.loads(row[0])
        clips = {str(v.get("name")) for v in record.get("videos") or []}
        stored = dict(
            self._db.execute("SELECT name, sha256 FROM images WHERE event_id = ?", (event_id,))
        )
        return {
            "hash": record["integrity"]["hash"],
            "images": {n: h for n, h in stored.items() if n not in clips},
            "videos": {n: h for n, h in stored.items() if n in clips},
        }

    def _alarm_proof(self, alarm_id: str) -> str:
        row = self._db.execute(
            "SELECT payload FROM alarms WHERE alarm_id = ?", (alarm_id,)
        ).fetchone()
        return hashlib.sha256(row[0].encode("utf-8")).hexdigest()

    def _ack_everything_complete(self) -> None:
        with self._lock:
            for station_id, event_id in self._db.execute(
                "SELECT station_id, event_id FROM records WHERE complete_at IS NOT NULL"
            ):
                self._queue_ack(station_id, "event_ids", event_id)
            for station_id, alarm_id in self._db.execute("SELECT station_id, alarm_id FROM alarms"):
                self._queue_ack(station_id, "alarm_ids", alarm_id)

    def _ack_loop(self) -> None:
        while not self._stop.wait(ACK_BATCH_S):
            try:
                self._flush_acks()
            except Exception:
                log.exception("platform sim: ack loop")

    def _flush_acks(self) -> None:
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
            self._db.execute("BEGIN")
        client = self._client
        if client is None or not self._connected.is_set() or self.mode == "disconnect":
            return
        now = time.monotonic()
        with self._lock:
            due = [a for a in self._acks if a.due_mono <= now]
            if not due:
                return
            self._acks = [a for a in self._acks if a.due_mono > now]
        batches: dict[str, list[_PendingAck]] = {}
        for a in due:
            batches.setdefault(a.station_id, []).append(a)
        for station_id, pending in batches.items():
            for i in range(0, len(pending), ACK_MAX_IDS):
                self.publish(
                    f"{self.prefix}/{station_id}/ack", ack_body(pending[i : i + ACK_MAX_IDS])
                )
                self.acks_published += 1
            with self._lock:
                self._db.executemany(
                    "UPDATE records SET acks_sent = acks_sent + 1 WHERE event_id = ?",
                    [(a.ref,) for a in pending if a.key == "event_ids"],
                )


def ack_body(pending: list[_PendingAck]) -> bytes:
    """One ack message: the ids by kind and the proof for each (docs/uplink.md §3.5)."""
    body: dict[str, Any] = {}
    for a in pending:
        body.setdefault(a.key, []).append(a.ref)
        proofs_key = "proofs" if a.key == "event_ids" else "alarm_proofs"
        body.setdefault(proofs_key, {})[a.ref] = a.proof
    return json.dumps(body).encode()


def _summary(sim: PlatformSim) -> dict[str, Any]:
    return {
        "records": sim.count("SELECT count(*) FROM records"),
        "complete": sim.count("SELECT count(*) FROM records WHERE complete_at IS NOT NULL"),
        "receipts": sim.count("SELECT coalesce(sum(receipts), 0) FROM records"),
        "images": sim.count("SELECT count(*) FROM images"),
        "alarms": sim.count("SELECT count(*) FROM alarms"),
        "heartbeats": sim.count("SELECT count(*) FROM heartbeats"),
        "rejected": sim.count("SELECT count(*) FROM rejected"),
        "acks_published": sim.acks_published,
        "mode": sim.mode,
    }
