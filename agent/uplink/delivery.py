"""The uplink: delivers the outbox to the platform over MQTT 5 (DESIGN §5, ``docs/uplink.md``).

One component owns delivery and retries: the outbox table (:mod:`agent.store.outbox`). paho's
session
only carries what is in flight on one connection; the outbox says what is delivered. Threads:

- ``uplink-send``: reads due rows by priority, publishes each record's images and then the
  record (QoS 1), tracks their PUBACKs (reason code checked) and the platform's acks on
  ``{root}/ack``, and re-sends what stays unacknowledged ``ack_timeout_s`` after its PUBACK
  (backing off by ``ack_backoff_factor`` up to ``ack_timeout_max_s``). At most
  ``max_unacked`` records / ``max_unacked_bytes`` are out at once, which also bounds the
  duplicates a reconnect can put on the wire. It also publishes the heartbeat.
- ``uplink-book``: writes what the sender learnt (attempts, published, acknowledged, expired)
  to the outbox in one transaction per batch, so sending never waits for an fsync or for the
  evidence store's transaction (one writer).
- paho's network thread (``loop_start``): reconnects by itself; its callbacks only hand
  facts to the sender through deques, never block, and are guarded so an exception cannot kill
  the thread.
- ``uplink-cmd``: runs platform commands (which may block, e.g. ``set-config`` probing the
  broker) off the network thread, one at a time from a bounded queue.

A restart loses nothing: every unacknowledged row is due again when :meth:`Uplink.start` runs,
and on every new connection (the broker may have lost its state), so a station that was offline
for a day catches up by itself, alarms first, then live violations, then the backlog.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field

from agent import __version__
from agent.store import outbox
from agent.store.db import Database
from agent.uplink.commands import CommandError, Dispatcher, Handler, parse_time
from drivers.clock import Clock, SystemClock

log = logging.getLogger(__name__)

HEARTBEAT_SCHEMA = "roadside.heartbeat.v1"
#: Rows read from the outbox per round (one write transaction marks them attempted).
SEND_BATCH = 256
#: Platform commands waiting to run; more get an immediate ``busy`` reply.
COMMAND_QUEUE = 16
#: Longest idle wait of the sender, seconds (it also wakes on every ack, PUBACK and commit).
IDLE_WAIT_S = 0.25
#: Shortest time between two rounds of the sender, seconds: PUBACKs and acks arriving meanwhile
#: are taken together, at the cost of at most this much latency.
MIN_ROUND_S = 0.005
#: Seconds between attempts to set up the MQTT client when its credentials cannot be read.
CLIENT_RETRY_S = 30.0


class TlsConfig(BaseModel):
    """``[uplink.tls]``: mutual TLS. Relative paths resolve in ``$CREDENTIALS_DIRECTORY``."""

    model_config = ConfigDict(extra="forbid")

    ca_file: str = Field(description="CA certificate (PEM) that signed the broker's certificate")
    cert_file: str = Field(
        description="this station's client certificate (PEM); its CN is the "
        "station id the broker's ACL confines it to"
    )
    key_file: str = Field(
        description="private key of the client certificate (PEM); deliver it "
        "with systemd LoadCredential=, never in the config"
    )


class UplinkConfig(BaseModel):
    """``[uplink]``: the MQTT 5 broker of the platform. ``host``, ``port``, ``prefix`` are fixed."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        description="broker host name or address (checked against its TLS "
        "certificate when [uplink.tls] is set)"
    )
    port: int = Field(default=1883, ge=1, le=65535, description="broker TCP port (8883 for TLS)")
    prefix: str = Field(default="roadside/v1", description="topic prefix; root is prefix/station")
    client_id: str = Field(
        default="",
        description="MQTT client id, stable across restarts so "
        "the broker keeps the session; empty: roadside-{station_id}",
    )
    keepalive_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="MQTT keep-alive, seconds; "
        "a dead (half-open) link is noticed after about 1.5 times this",
    )
    session_expiry_s: int = Field(
        default=7 * 86400,
        ge=0,
        description="how long the broker "
        "keeps this station's session (acks, commands) while it is "
        "offline, seconds",
    )
    ack_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="re-send a record the platform has not acknowledged after this many seconds",
    )
    ack_backoff_factor: float = Field(
        default=2.0,
        ge=1.0,
        description="each further re-send of the same record waits this many times longer",
    )
    ack_timeout_max_s: float = Field(
        default=600.0, gt=0, description="longest wait between re-sends of one record, seconds"
    )
    max_inflight: int = Field(
        default=50,
        ge=1,
        le=65535,
        description="MQTT messages published and not yet PUBACKed (paho's in-flight window)",
    )
    max_unacked: int = Field(
        default=500,
        ge=1,
        description="records sent and not yet "
        "acknowledged by the platform; bounds duplicates after a reconnect",
    )
    max_unacked_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1,
        description="payload bytes (records and images) sent and not yet acknowledged; keeps "
        "a slow 4G link from holding hundreds of photos in memory and on the wire",
    )
    heartbeat_s: float = Field(default=60.0, gt=0, description="heartbeat period, seconds")
    live_window_s: float = Field(
        default=300.0,
        ge=0,
        description="violations measured within "
        "this many seconds are live and go ahead of the old backlog",
    )
    reconnect_min_s: float = Field(default=1.0, gt=0, description="first reconnect delay, s")
    reconnect_max_s: float = Field(default=60.0, gt=0, description="longest reconnect delay, s")
    tls: TlsConfig | None = Field(default=None, description="mutual TLS; plain TCP when absent")
    username: str = Field(
        default="",
        description="MQTT user name (most brokers take the "
        "identity from the TLS certificate instead)",
    )
    password: str = Field(default="", description="MQTT password; prefer password_file")
    password_file: str = Field(
        default="",
        description="file holding the MQTT password; relative "
        "names resolve in $CREDENTIALS_DIRECTORY",
    )

    def client_id_for(self, station_id: str) -> str:
        return self.client_id or f"roadside-{station_id}"


class UplinkError(Exception):
    """The uplink cannot be set up (unreadable certificate, bad credentials file)."""


class RecordSource(Protocol):
    """What the uplink needs from the evidence store (records come with the outbox rows)."""

    def image_files(self, event_id: str) -> list[tuple[str, str, Path | None]]: ...


def credential_path(name: str) -> Path:
    """``name`` as given if absolute, else in ``$CREDENTIALS_DIRECTORY`` when systemd set it."""
    path = Path(name)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds:
        return Path(creds) / path
    return path


def canonical_json(obj: Any) -> bytes:
    """The record's wire bytes: the same canonical JSON the evidence store hashes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def make_client(
    config: UplinkConfig,
    client_id: str,
    *,
    clean_start: bool = False,
    will: tuple[str, bytes] | None = None,
) -> tuple[mqtt.Client, Properties]:
    """A paho MQTT 5 client set up from ``config`` (TLS, credentials, windows, will).

    Returns the client and the CONNECT properties to pass to ``connect``. Raises
    :class:`UplinkError` when a certificate, key or password file cannot be read.
    """
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    # paho logs (not raises) an exception escaping a callback; ours are guarded anyway.
    client.suppress_exceptions = True
    if config.tls is not None:
        files = [
            credential_path(f)
            for f in (config.tls.ca_file, config.tls.cert_file, config.tls.key_file)
        ]
        for f in files:
            if not f.is_file():
                raise UplinkError(
                    f"uplink TLS: {f} not found (set [uplink.tls] or LoadCredential= in the unit)"
                )
        try:
            client.tls_set(
                ca_certs=str(files[0]),
                certfile=str(files[1]),
                keyfile=str(files[2]),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError, ValueError) as err:
            raise UplinkError(f"uplink TLS: cannot load {files[1]} / {files[2]}: {err}") from err
        client.tls_insecure_set(False)  # hostname verification stays on
    password = config.password or None
    if config.password_file:
        try:
            password = credential_path(config.password_file).read_text().strip()
        except OSError as err:
            raise UplinkError(f"uplink: cannot read the password file: {err}") from err
    if config.username:
        client.username_pw_set(config.username, password)
    client.max_inflight_messages_set(config.max_inflight)
    # paho keeps every unacked QoS 1 message; our window bounds it, this is the backstop.
    client.max_queued_messages_set(max(1000, config.max_unacked * 10))
    client.reconnect_delay_set(
        max(1, round(config.reconnect_min_s)), max(1, round(config.reconnect_max_s))
    )
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    props = mqtt_properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0 if clean_start else config.session_expiry_s
    return client, props


def set_nodelay(client: mqtt.Client) -> None:
    """Switch off Nagle's algorithm on the client's socket (paho leaves it on).

    An image followed by its small record message otherwise sits behind the receiver's
    delayed ACK for up to 40 ms; paho writes whole MQTT packets, so nothing is gained by it.
    """
    sock = client.socket()
    if not isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as err:
        log.debug("uplink: TCP_NODELAY not set: %s", err)


def probe_broker(config: UplinkConfig, station_id: str, timeout_s: float) -> bool:
    """Whether a connection with ``config`` is accepted within ``timeout_s`` (for set-config).

    Uses its own client id (``…-probe``) and a clean session, so the station's session is
    untouched. Never raises.
    """
    done = threading.Event()
    ok: list[bool] = []

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        ok.append(not rc.is_failure)
        done.set()

    try:
        client, props = make_client(
            config, f"{config.client_id_for(station_id)}-probe", clean_start=True
        )
        client.on_connect = on_connect
        client.connect_async(
            config.host, config.port, config.keepalive_s, clean_start=True, properties=props
        )
        client.loop_start()
    except Exception as err:
        log.warning("broker probe %s:%d failed: %s", config.host, config.port, err)
        return False
    try:
        done.wait(timeout_s)
        return bool(ok and ok[0])
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(fn: _F) -> _F:
    """An exception in a paho callback is logged, never propagated into the network thread."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.exception("uplink: %s failed", fn.__name__)
            return None

    return wrapper  # type: ignore[return-value]


@dataclass
class _Flight:
    """A row published and waiting for its PUBACKs and the platform's ack."""

    row_id: int
    key: tuple[str, str]  # (kind, ref)
    deadline_mono: float
    timeout_s: float  # the ack timeout once every part is PUBACKed
    pending_mids: set[int] = field(default_factory=set)
    size_bytes: int = 0
    failed: bool = False


@dataclass
class _Book:
    """What one sender round learnt, for the bookkeeping thread to write (in order)."""

    acks: list[tuple[str, list[str]]] = field(default_factory=list)
    published: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    now_mono: float = 0.0
    sent: list[tuple[int, str, float]] = field(default_factory=list)
    reset: bool = False


@dataclass
class _Command:
    name: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


class Uplink:
    """Delivers the outbox to ``{prefix}/{station_id}`` on the platform's broker.

    ``store`` is the evidence store (records and image files); ``health()`` gives the station's
    part of the heartbeat (devices, disk, clock, config hash); ``handlers`` maps command names
    (``set-permits``, ``set-watchlist``, ``capture-test``, ``get-config``, ``set-config``) to
    callables taking the command's JSON object and returning the reply's ``result``, raising
    :class:`~agent.uplink.commands.CommandError` to reject. ``ping`` and ``resend`` are built in.
    """

    def __init__(
        self,
        config: UplinkConfig,
        *,
        station_id: str,
        db: Database,
        store: RecordSource,
        clock: Clock | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
        handlers: Mapping[str, Handler] | None = None,
    ) -> None:
        self.config = config
        self.station_id = station_id
        self.root = f"{config.prefix}/{station_id}"
        self.db = db
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.health = health
        builtin: dict[str, Handler] = {"ping": self._cmd_ping, "resend": self._cmd_resend}
        self.dispatcher = Dispatcher({**builtin, **(handlers or {})})
        db.migrate("outbox", outbox.MIGRATIONS)
        self._client: mqtt.Client | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._threads: list[threading.Thread] = []
        self._gen = 0  # connections made (paho thread writes, sender reads)
        self._seen_gen = 0
        self._pubacks: deque[tuple[int, bool, str]] = deque()
        self._acks: deque[tuple[str, list[str]]] = deque()
        self._commands: queue.Queue[_Command | None] = queue.Queue(COMMAND_QUEUE)
        self._inflight: dict[int, _Flight] = {}
        self._book: deque[_Book] = deque()
        self._book_ready = threading.Event()
        self._book_lock = threading.Lock()
        self._acked_unwritten: set[tuple[str, str]] = set()  # acked, not yet in the outbox
        self._sender_done = threading.Event()
        self._inflight_bytes = 0
        self._by_mid: dict[int, int] = {}
        self._by_key: dict[tuple[str, str], int] = {}
        self._started_mono = self.clock.monotonic()
        self._next_heartbeat = 0.0
        self._next_client_try = 0.0
        self._failing = False  # first failure at ERROR, repeats at DEBUG
        self._counts = {
            "sent": 0,
            "resent": 0,
            "published": 0,
            "acked": 0,
            "puback_failures": 0,
            "connects": 0,
            "commands": 0,
        }
        self._last_error = ""
        self._stopped = False

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background) and start delivering.

        Never raises for the link: an unreadable certificate or key is logged at ERROR, shown
        in :meth:`stats` and retried every :data:`CLIENT_RETRY_S` (a credential may be
        installed later); records keep going into the outbox meanwhile.
        """
        if self._threads:
            return
        with self.db.write() as conn:
            due_again = outbox.reset_deadlines(conn)
        if due_again:
            log.info("uplink: %d unacknowledged message(s) due again after a restart", due_again)
        self._try_client()
        for name, target in (
            ("uplink-send", self._send_loop),
            ("uplink-book", self._book_loop),
            ("uplink-cmd", self._cmd_loop),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(t)
            t.start()
        log.info(
            "uplink: delivering to %s:%d under %s", self.config.host, self.config.port, self.root
        )

    def _try_client(self) -> None:
        """Set up the paho client and start connecting; on a credential problem, say so."""
        self._next_client_try = self.clock.monotonic() + CLIENT_RETRY_S
        try:
            client, props = make_client(
                self.config,
                self.config.client_id_for(self.station_id),
                will=(f"{self.root}/status", b'{"state":"offline"}'),
            )
        except UplinkError as err:
            self._note_failure(str(err))
            return
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.connect_async(
            self.config.host,
            self.config.port,
            self.config.keepalive_s,
            clean_start=False,
            properties=props,
        )
        client.loop_start()
        self._client = client

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline, disconnect and stop the threads. Idempotent; unsent rows stay queued."""
        if self._stopped:
            return
        self._stopped = True
        deadline = self.clock.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        with contextlib.suppress(queue.Full):
            self._commands.put_nowait(None)  # wakes the command thread
        for t in self._threads:
            t.join(max(0.1, deadline - self.clock.monotonic()))
            if t.is_alive():
                log.error("uplink: thread %s did not stop in time", t.name)
        client = self._client
        if client is not None:
            if self._connected.is_set():
                try:
                    info = client.publish(f"{self.root}/status", b'{"state":"offline"}', 1, True)
                    info.wait_for_publish(max(0.1, min(1.0, deadline - self.clock.monotonic())))
                except (RuntimeError, ValueError) as err:
                    log.debug("uplink: offline status not sent: %s", err)
            client.disconnect()
            client.loop_stop()

    def wake(self) -> None:
        """Something was queued: send it now rather than at the next poll."""
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stats(self) -> dict[str, Any]:
        """Queue and link figures for ``status`` and the heartbeat."""
        conn = self.db.read()
        oldest = outbox.oldest_pending_created_at(conn)
        age_s: float | None = None
        if oldest is not None:
            try:
                age_s = round(
                    (self.clock.now() - datetime.fromisoformat(oldest)).total_seconds(), 3
                )
            except ValueError:
                age_s = None
        return {
            "broker": f"{self.config.host}:{self.config.port}",
            "root": self.root,
            "connected": self.connected,
            "queue_depth": outbox.pending_count(conn),
            "oldest_unacked_age_s": age_s,
            "in_flight": len(self._inflight),
            "in_flight_bytes": self._inflight_bytes,
            "last_error": self._last_error,
            **self._counts,
        }

    # -- paho callbacks (network thread): hand over, never block ------------------------------

    @_guarded
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            self._note_failure(f"broker refused the connection: {reason_code}")
            return
        set_nodelay(client)
        client.subscribe([(f"{self.root}/ack", 1), (f"{self.root}/cmd/+", 1)])
        client.publish(f"{self.root}/status", b'{"state":"online"}', qos=1, retain=True)
        self._gen += 1
        self._counts["connects"] += 1
        self._connected.set()
        if self._failing:
            log.warning("uplink: connected to %s:%d again", self.config.host, self.config.port)
        else:
            log.info(
                "uplink: connected to %s:%d (session present: %s)",
                self.config.host,
                self.config.port,
                getattr(flags, "session_present", "?"),
            )
        self._failing = False
        self._wake.set()

    @_guarded
    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            self._note_failure(f"disconnected from the broker: {reason_code}")

    @_guarded
    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._pubacks.append((mid, bool(reason_code.is_failure), str(reason_code)))
        self._wake.set()

    @_guarded
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic == f"{self.root}/ack":
            self._take_ack(bytes(msg.payload))
        elif topic.startswith(f"{self.root}/cmd/"):
            props = msg.properties
            cmd = _Command(
                name=topic[len(self.root) + 5 :],
                payload=bytes(msg.payload),
                response_topic=getattr(props, "ResponseTopic", None) if props else None,
                correlation=getattr(props, "CorrelationData", None) if props else None,
            )
            try:
                self._commands.put_nowait(cmd)
            except queue.Full:
                self._reply(
                    cmd,
                    {
                        "command": cmd.name,
                        "ok": False,
                        "error": {
                            "code": "busy",
                            "message": "too many commands waiting; try again",
                        },
                    },
                )
        else:
            log.debug("uplink: ignoring a message on %s", topic)

    def _take_ack(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            log.warning("uplink: ack is not JSON: %r", payload[:200])
            return
        if not isinstance(doc, dict):
            log.warning("uplink: ack is not a JSON object: %r", payload[:200])
            return
        for key, kind in (("event_ids", "event"), ("alarm_ids", "alarm")):
            ids = doc.get(key, [])
            if not isinstance(ids, list):
                log.warning("uplink: ack %s is not a list", key)
                continue
            refs = [i for i in ids if isinstance(i, str)]
            if refs:
                self._acks.append((kind, refs))
        self._wake.set()

    def _note_failure(self, what: str) -> None:
        self._last_error = what
        if self._failing:
            log.debug("uplink: %s", what)
        else:
            log.error(
                "uplink: %s (%s:%d); records stay in the outbox",
                what,
                self.config.host,
                self.config.port,
            )
            self._failing = True

    # -- the sender ---------------------------------------------------------------------------

    def _send_loop(self) -> None:
        last_round = 0.0
        while not self._stop.is_set():
            # At most one round (and so one fsync'd commit) per MIN_ROUND_S: acks and PUBACKs
            # arriving meanwhile are applied together instead of one commit each.
            pause = MIN_ROUND_S - (time.monotonic() - last_round)
            if pause > 0 and self._stop.wait(pause):
                break
            last_round = time.monotonic()
            # cleared before the round, so a wake() during the round is never lost
            self._wake.clear()
            try:
                busy = self._step()
            except Exception as err:
                self._note_failure(f"send loop: {err}")
                log.debug("uplink: send loop failed", exc_info=True)
                self._stop.wait(1.0)
                continue
            if not busy:
                self._wake.wait(IDLE_WAIT_S)
        self._sender_done.set()
        self._book_ready.set()

    def _step(self) -> bool:
        """One round; True when it sent something (go again without waiting).

        Everything the round learnt (acks, PUBACKs, expired deadlines, new attempts) is
        written in one transaction at its end.
        """
        now_mono = self.clock.monotonic()
        if self._client is None and now_mono >= self._next_client_try:
            self._try_client()
        if self._gen != self._seen_gen:
            self._seen_gen = self._gen
            self._inflight.clear()
            self._inflight_bytes = 0
            self._by_mid.clear()
            self._by_key.clear()
            self._book.append(_Book(reset=True))
        acks = self._take_acks()
        published = self._take_pubacks()
        expired = [r for r, f in self._inflight.items() if f.deadline_mono <= now_mono]
        for row_id in expired:
            self._forget(row_id)
        sent: list[tuple[int, str, float]] = []
        taken = True
        with self._book_lock:
            for kind, refs in acks:
                self._acked_unwritten.update((kind, ref) for ref in refs)
            skip = set(self._acked_unwritten)
        if self._connected.is_set():
            if now_mono >= self._next_heartbeat:
                self._next_heartbeat = now_mono + self.config.heartbeat_s
                self._heartbeat()
            taken = self._send_due(now_mono, sent, skip)
        if acks or published or expired or sent:
            self._book.append(_Book(acks, published, expired, now_mono, sent))
            self._book_ready.set()
        return bool(sent) and taken

    def _book_loop(self) -> None:
        """Write what the sender learnt, batched: the sender never waits for an fsync or for
        the evidence store's transaction (one writer), which keeps a live record's latency
        down to the network's."""
        while True:
            stopping = self._sender_done.is_set()
            self._book_ready.wait(IDLE_WAIT_S)
            self._book_ready.clear()  # books appended after this are seen by the next turn
            try:
                self._write_books()
            except Exception as err:
                self._note_failure(f"outbox bookkeeping: {err}")
                log.debug("uplink: bookkeeping failed", exc_info=True)
                if self._sender_done.wait(1.0) and stopping:
                    return
                continue
            if stopping and not self._book:
                return

    def _write_books(self) -> None:
        books: list[_Book] = []
        while self._book:
            books.append(self._book.popleft())
        if not books:
            return
        at = self._now_iso()
        written: list[tuple[str, str]] = []
        with self.db.write() as conn:
            for book in books:
                if book.reset:
                    outbox.reset_deadlines(conn)
                for kind, refs in book.acks:
                    done = outbox.mark_acked(conn, kind, refs, at)
                    self._counts["acked"] += done
                    written.extend((kind, ref) for ref in refs)
                    if done < len(refs):
                        log.debug(
                            "uplink: ack for %d unknown or already acked %s id(s)",
                            len(refs) - done,
                            kind,
                        )
                if book.published:
                    outbox.mark_published(conn, book.published, at)
                if book.expired:
                    outbox.retry_soon(conn, book.expired, book.now_mono)
                if book.sent:
                    outbox.mark_attempts(conn, book.sent)
        with self._book_lock:
            self._acked_unwritten.difference_update(written)

    def _send_due(
        self, now_mono: float, sent: list[tuple[int, str, float]], skip: set[tuple[str, str]]
    ) -> bool:
        """Publish due rows while the window has room; False when paho refused one."""
        free = self.config.max_unacked - len(self._inflight)
        if free <= 0 or self._inflight_bytes >= self.config.max_unacked_bytes:
            return True
        now = self.clock.now()
        rows = outbox.due(
            self.db.read(),
            now_mono=now_mono,
            live_since=now - timedelta(seconds=self.config.live_window_s),
            limit=min(free, SEND_BATCH),
        )
        at = now.isoformat(timespec="milliseconds")
        for row in rows:
            if row.id in self._inflight or (row.kind, row.ref) in skip:
                continue
            if self._inflight_bytes >= self.config.max_unacked_bytes:
                break
            # Until its PUBACK arrives a row waits longer: on a slow link its images may take
            # a while to leave, and a dead link is the keep-alive's job (a reconnect makes
            # everything due again). The ack timeout proper starts when the broker has it all.
            deadline = (
                now_mono
                + self._timeout(row)
                + self.config.ack_timeout_max_s
                + 2 * self.config.keepalive_s
            )
            try:
                taken = self._send(row, deadline)
            except Exception as err:
                # one bad row (unreadable image, broken record) must not block the queue
                # behind it: it waits its longest back-off and the others go on
                self._note_failure(f"cannot send {row.kind} {row.ref}: {err}")
                self._forget(row.id)
                sent.append((row.id, at, now_mono + self.config.ack_timeout_max_s))
                continue
            if not taken:
                self._forget(row.id)
                return False
            sent.append((row.id, at, deadline))
        return True

    def _timeout(self, row: outbox.Row) -> float:
        t = self.config.ack_timeout_s * self.config.ack_backoff_factor**row.attempts
        return float(min(t, self.config.ack_timeout_max_s))

    def _send(self, row: outbox.Row, deadline_mono: float) -> bool:
        """Publish one row (images first); False when paho would not take it."""
        client = self._client
        assert client is not None
        flight = _Flight(row.id, (row.kind, row.ref), deadline_mono, self._timeout(row))
        messages: list[tuple[str, bytes, Properties | None]] = []
        if row.kind == "event":
            if row.record_json is None:
                self._note_failure(f"outbox names record {row.ref}, which is not stored")
                return True  # retried after its timeout; nothing else to do
            if row.image_count:
                for name, sha256, path in self.store.image_files(row.ref):
                    messages.append(self._image_message(row.ref, name, sha256, path))
            # the stored canonical JSON: the very bytes that were hashed and signed
            messages.append((f"{self.root}/events", row.record_json.encode(), None))
        else:
            # the alarm as agent.store.alarms queued it: the final roadside.alarm.v1 document
            messages.append((f"{self.root}/alarms", (row.payload or "{}").encode(), None))
        flight.size_bytes = sum(len(m[1]) for m in messages)
        self._inflight[row.id] = flight
        self._inflight_bytes += flight.size_bytes
        self._by_key[flight.key] = row.id
        for topic, payload, props in messages:
            info = client.publish(topic, payload, qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.debug("uplink: publish of %s not taken: %s", topic, mqtt.error_string(info.rc))
                return False
            flight.pending_mids.add(info.mid)
            self._by_mid[info.mid] = row.id
        self._counts["resent" if row.attempts else "sent"] += 1
        return True

    def _image_message(
        self, event_id: str, name: str, sha256: str, path: Path | None
    ) -> tuple[str, bytes, Properties]:
        props = mqtt_properties(PacketTypes.PUBLISH)
        user = [("sha256", sha256), ("content-type", "image/jpeg")]
        data = b""
        if path is None:
            user.append(("evicted", "true"))
        else:
            try:
                data = path.read_bytes()
            except OSError as err:
                self._note_failure(f"image {name} of {event_id} unreadable: {err}")
                user.append(("missing", str(err)))
        props.UserProperty = user
        return f"{self.root}/evidence/{event_id}/{name}", data, props

    def _forget(self, row_id: int) -> None:
        flight = self._inflight.pop(row_id, None)
        if flight is None:
            return
        self._inflight_bytes -= flight.size_bytes
        for mid in flight.pending_mids:
            self._by_mid.pop(mid, None)
        self._by_key.pop(flight.key, None)

    def _take_pubacks(self) -> list[int]:
        """Apply PUBACKs to the flights; returns the rows now wholly published."""
        published: list[int] = []
        while self._pubacks:
            mid, failed, reason = self._pubacks.popleft()
            row_id = self._by_mid.pop(mid, None)
            flight = self._inflight.get(row_id) if row_id is not None else None
            if flight is None:
                continue  # a resend of an earlier connection; the outbox decides, not paho
            flight.pending_mids.discard(mid)
            if failed:
                flight.failed = True
                self._counts["puback_failures"] += 1
                self._note_failure(f"broker rejected {flight.key[1]}: {reason}")
            if not flight.pending_mids:
                # the broker has it all (or refused it): the ack timeout proper starts now
                flight.deadline_mono = self.clock.monotonic() + flight.timeout_s
                if not flight.failed:
                    published.append(flight.row_id)
        self._counts["published"] += len(published)
        return published

    def _take_acks(self) -> list[tuple[str, list[str]]]:
        """The platform's acks since the last round; their flights are done."""
        acks: list[tuple[str, list[str]]] = []
        while self._acks:
            kind, refs = self._acks.popleft()
            acks.append((kind, refs))
            for ref in refs:
                row_id = self._by_key.get((kind, ref))
                if row_id is not None:
                    self._forget(row_id)
        return acks

    def _now_iso(self) -> str:
        return self.clock.now().isoformat(timespec="milliseconds")

    def _heartbeat(self) -> None:
        doc: dict[str, Any] = {}
        if self.health is not None:
            try:
                doc.update(self.health())
            except Exception as err:
                log.debug("uplink: health() failed", exc_info=True)
                doc["health_error"] = str(err)
        stats = self.stats()
        doc.update(
            schema=HEARTBEAT_SCHEMA,
            station_id=self.station_id,
            sent_at=self._now_iso(),
            uptime_s=round(self.clock.monotonic() - self._started_mono, 1),
            software_version=doc.get("software_version", __version__),
            queue={
                "depth": stats["queue_depth"],
                "oldest_unacked_age_s": stats["oldest_unacked_age_s"],
                "in_flight": stats["in_flight"],
            },
        )
        assert self._client is not None
        # default=str: a datetime or Path in the station's health must not stop the heartbeat
        payload = json.dumps(
            doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
        ).encode()
        self._client.publish(f"{self.root}/heartbeat", payload, qos=1)

    # -- commands -----------------------------------------------------------------------------

    def _cmd_loop(self) -> None:
        while not self._stop.is_set():
            try:
                cmd = self._commands.get(timeout=0.5)
            except queue.Empty:
                continue
            if cmd is None:
                return
            try:
                self._counts["commands"] += 1
                self._reply(cmd, self.dispatcher.dispatch(cmd.name, cmd.payload))
            except Exception:
                log.exception("uplink: command %s failed", cmd.name)

    def _reply(self, cmd: _Command, reply: dict[str, Any]) -> None:
        client = self._client
        if client is None:
            return
        props = mqtt_properties(PacketTypes.PUBLISH)
        if cmd.correlation is not None:
            props.CorrelationData = cmd.correlation
        topic = cmd.response_topic or f"{self.root}/reply/{cmd.name}"
        client.publish(topic, canonical_json(reply), qos=1, properties=props)

    def _cmd_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "station_id": self.station_id,
            "time": self._now_iso(),
            "software_version": __version__,
        }

    def _cmd_resend(self, args: dict[str, Any]) -> dict[str, Any]:
        since = parse_time(args, "from")
        until = parse_time(args, "to")
        if until < since:
            raise CommandError("bad-argument", "'to' is before 'from'")
        with self.db.write() as conn:
            n = outbox.requeue_events(conn, since, until)
        self._wake.set()
        return {"requeued": n}
