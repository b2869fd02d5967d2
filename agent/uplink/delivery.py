"""The uplink: delivers the outbox to the platform over MQTT 5 (DESIGN §5, ``docs/uplink.md``).

One component owns delivery and retries: the outbox table (:mod:`agent.store.outbox`). paho's
session only carries what is in flight on one connection; the outbox says what is delivered.
The link's set-up is :mod:`agent.uplink.client`, the payloads :mod:`agent.uplink.messages`, the
platform's commands :mod:`agent.uplink.commands`. Threads:

- ``uplink-send``: reads due rows by priority, publishes each record's images and then the
  record (QoS 1), tracks their PUBACKs (reason code checked) and the platform's acks on
  ``{root}/ack`` (:class:`_Window`), and re-sends what stays unacknowledged ``ack_timeout_s``
  after its PUBACK (backing off by ``ack_backoff_factor`` up to ``ack_timeout_max_s``). At most
  ``max_unacked`` records / ``max_unacked_bytes`` are out at once, which also bounds the
  duplicates a reconnect can put on the wire. It also publishes the heartbeat.
- ``uplink-book`` (:class:`_Bookkeeper`): writes what the sender learnt (attempts, published,
  acknowledged, expired) to the outbox in one transaction per batch, so sending never waits
  for an fsync or for the evidence store's transaction (one writer).
- paho's network thread (``loop_start``): reconnects by itself; its callbacks (:class:`_Link`)
  only hand facts to the sender through deques, never block, and are guarded so an exception
  cannot kill the thread.
- ``uplink-cmd`` (:class:`~agent.uplink.commands.CommandRunner`): runs platform commands (which
  may block, e.g. ``set-config`` probing the broker) off the network thread, one at a time
  from a bounded queue.

A restart loses nothing: every unacknowledged row is due again when :meth:`Uplink.start` runs,
and on every new connection (the broker may have lost its state), so a station that was offline
for a day catches up by itself, alarms first, then live violations, then the backlog.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.store import outbox
from agent.store.db import Database
from agent.uplink import messages
from agent.uplink.client import (
    UplinkConfig,
    UplinkError,
    connect_in_background,
    guarded,
    make_client,
    set_nodelay,
)
from agent.uplink.commands import Command, CommandRunner, Dispatcher, Handler, builtin_handlers
from agent.uplink.messages import AckClaim, Message, Topics
from agent.uplink.signing import PlatformVerifier, SignatureError, parse_public_key
from drivers.clock import Clock, SystemClock

log = logging.getLogger(__name__)

#: Rows looked at in the outbox per round (ids and sizes; only those the byte window admits
#: have their record read; one write transaction marks them attempted).
SEND_BATCH = 256
#: Longest idle wait of the sender, seconds. It wakes on every commit, ack, PUBACK and
#: (re)connect, and at its next deadline (heartbeat, an ack timeout, a client retry); this is
#: only the backstop for a row queued by someone who does not wake it (an alarm raised by the
#: clock monitor or retention goes out within this long).
IDLE_WAIT_S = 1.0
#: Shortest time between two rounds of the sender, seconds: PUBACKs and acks arriving meanwhile
#: are taken together, at the cost of at most this much latency.
MIN_ROUND_S = 0.005
#: Seconds between attempts to set up the MQTT client when its credentials cannot be read.
CLIENT_RETRY_S = 30.0
#: Seconds between two journal lines about refused acks or commands (each reason's first
#: refusal is logged at once; the others are summed up in the next line).
REFUSAL_LOG_S = 60.0
#: Fewest publications remembered for their ack proofs (else 4 × ``max_unacked``).
PUBLISHED_MIN = 1000

_T = TypeVar("_T")


class RecordSource(Protocol):
    """What the uplink needs from the evidence store (records come with the outbox rows)."""

    def image_files(self, event_id: str) -> list[tuple[str, str, Path | None]]: ...


#: The evidence chain's signed head (``seq``, ``hash``, signature …) for the heartbeat and
#: each ack receipt; the evidence store provides it (``None``: no record yet).
ChainHead = Callable[[], Mapping[str, Any] | None]


def _drain(items: deque[_T]) -> list[_T]:
    """Everything in ``items`` now (another thread may go on appending)."""
    out: list[_T] = []
    while items:
        out.append(items.popleft())
    return out


class _Trouble:
    """The link's failures for the journal: the first at ERROR, repeats at DEBUG, the
    recovery at WARNING (by whoever sees it)."""

    def __init__(self, config: UplinkConfig) -> None:
        self.host, self.port = config.host, config.port
        self.failing = False
        self.last_error = ""

    def note(self, what: str) -> None:
        self.last_error = what
        if self.failing:
            log.debug("uplink: %s", what)
        else:
            log.error("uplink: %s (%s:%d); records stay in the outbox", what, self.host, self.port)
            self.failing = True

    def recovered(self) -> bool:
        """Clear the failing state; whether it was failing."""
        was, self.failing = self.failing, False
        return was


class _Published:
    """What this process published, with the digest an ack must prove for it
    (:func:`~agent.uplink.messages.event_proof`), the newest ``cap`` publications; the
    sender's alone.

    An ack is accepted only for a message published here whose proof matches: an ack for a
    record never sent, or sent before a restart, or naming other hashes, marks nothing
    delivered (a publication forgotten meanwhile is sent again, and its next ack counts).
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._proofs: dict[tuple[str, str], str] = {}

    def add(self, key: tuple[str, str], proof: str) -> None:
        self._proofs.pop(key, None)
        self._proofs[key] = proof
        while len(self._proofs) > self.cap:
            del self._proofs[next(iter(self._proofs))]

    def refusal(self, claim: AckClaim) -> str | None:
        """Why ``claim`` is refused (``not-sent``, ``no-proof``, ``proof-mismatch``), or
        ``None`` when it proves the platform holds what was published."""
        expected = self._proofs.get((claim.kind, claim.ref))
        if expected is None:
            return "not-sent"
        if claim.proof is None:
            return "no-proof"
        if claim.proof != expected:
            return "proof-mismatch"
        return None


class _Refusals:
    """Refused acks and commands: counted by reason, logged rate-limited (a flood of forged
    acks must not flood the journal)."""

    def __init__(self, clock: Clock, what: str) -> None:
        self.clock = clock
        self.what = what
        self.by_reason: dict[str, int] = {}
        self._unlogged = 0
        self._next_log_mono = 0.0

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, reason: str, detail: str) -> None:
        first = reason not in self.by_reason
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        now = self.clock.monotonic()
        if first or now >= self._next_log_mono:
            more = f" (and {self._unlogged} more since the last line)" if self._unlogged else ""
            log.warning("uplink: %s refused (%s): %s%s", self.what, reason, detail, more)
            self._unlogged = 0
            self._next_log_mono = now + REFUSAL_LOG_S
        else:
            self._unlogged += 1
            log.debug("uplink: %s refused (%s): %s", self.what, reason, detail)


@dataclass
class _Flight:
    """A row published and waiting for its PUBACKs and the platform's ack."""

    row_id: int
    key: tuple[str, str]  # (kind, ref)
    deadline_mono: float
    timeout_s: float  # the ack timeout once every part is PUBACKed
    size_bytes: int = 0
    pending_mids: set[int] = field(default_factory=set)
    failed: bool = False


class _Window:
    """The rows out on the wire and not yet acknowledged, by row, by MQTT mid and by
    ``(kind, ref)``; the sender's alone (only its thread touches it)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.flights: dict[int, _Flight] = {}
        self.size_bytes = 0
        self._by_mid: dict[int, int] = {}
        self._by_key: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self.flights)

    def __contains__(self, row_id: int) -> bool:
        return row_id in self.flights

    def add(self, flight: _Flight) -> None:
        self.flights[flight.row_id] = flight
        self.size_bytes += flight.size_bytes
        self._by_key[flight.key] = flight.row_id

    def add_mid(self, flight: _Flight, mid: int) -> None:
        flight.pending_mids.add(mid)
        self._by_mid[mid] = flight.row_id

    def forget(self, row_id: int) -> None:
        flight = self.flights.pop(row_id, None)
        if flight is None:
            return
        self.size_bytes -= flight.size_bytes
        for mid in flight.pending_mids:
            self._by_mid.pop(mid, None)
        self._by_key.pop(flight.key, None)

    def clear(self) -> None:
        """A new connection: whatever was in flight is the outbox's to send again."""
        self.flights.clear()
        self.size_bytes = 0
        self._by_mid.clear()
        self._by_key.clear()

    def next_deadline(self) -> float | None:
        """The earliest deadline in flight (``None``: nothing in flight)."""
        return min((f.deadline_mono for f in self.flights.values()), default=None)

    def expire(self, now_mono: float) -> list[int]:
        """Forget and return the rows whose deadline has passed."""
        expired = [r for r, f in self.flights.items() if f.deadline_mono <= now_mono]
        for row_id in expired:
            self.forget(row_id)
        return expired

    def acked(self, acks: Iterable[tuple[str, list[str]]]) -> None:
        """The platform has these: their flights are done."""
        for kind, refs in acks:
            for ref in refs:
                row_id = self._by_key.get((kind, ref))
                if row_id is not None:
                    self.forget(row_id)

    def puback(self, mid: int, failed: bool) -> _Flight | None:
        """Apply one PUBACK to its flight and return the flight (``None``: a message of an
        earlier connection; the outbox decides what is delivered, not paho)."""
        row_id = self._by_mid.pop(mid, None)
        flight = self.flights.get(row_id) if row_id is not None else None
        if flight is None:
            return None
        flight.pending_mids.discard(mid)
        flight.failed = flight.failed or failed
        if not flight.pending_mids:
            # the broker has it all (or refused it): the ack timeout proper starts now
            flight.deadline_mono = self.clock.monotonic() + flight.timeout_s
        return flight


@dataclass
class _Book:
    """What one sender round learnt, for the bookkeeping thread to write (in order)."""

    acks: list[tuple[str, list[str]]] = field(default_factory=list)
    published: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    now_mono: float = 0.0
    sent: list[tuple[int, str, float]] = field(default_factory=list)
    reset: bool = False


class _Bookkeeper:
    """``uplink-book``: writes what the sender learnt to the outbox, batched, so the sender
    never waits for an fsync or for the evidence store's transaction (one writer), which keeps
    a live record's latency down to the network's."""

    def __init__(self, db: Database, now_iso: Callable[[], str], trouble: _Trouble) -> None:
        self.db = db
        self.now_iso = now_iso
        self.trouble = trouble
        self.acked = 0  # outbox rows marked acknowledged
        self._books: deque[_Book] = deque()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._acked_unwritten: set[tuple[str, str]] = set()  # acked, not yet in the outbox

    def add(self, book: _Book) -> None:
        self._books.append(book)
        self._ready.set()

    def reset(self) -> None:
        """A new connection: every unacknowledged row is due again (the broker may have lost
        its state). Written before the next round's book."""
        self._books.append(_Book(reset=True))
        self._ready.set()

    def not_to_send(self, acks: Iterable[tuple[str, list[str]]]) -> set[tuple[str, str]]:
        """``(kind, ref)`` acknowledged but not yet written (``acks`` are the newest): the
        outbox still calls them due, the sender must not."""
        with self._lock:
            for kind, refs in acks:
                self._acked_unwritten.update((kind, ref) for ref in refs)
            return set(self._acked_unwritten)

    def wake(self) -> None:
        self._ready.set()

    def run(self, sender_done: threading.Event) -> None:
        """The thread's loop: until the sender is done and every book is written."""
        while True:
            stopping = sender_done.is_set()
            if not stopping:
                # only books make work: add(), reset() and the sender's end set it
                self._ready.wait()
            self._ready.clear()  # books appended after this are seen by the next turn
            try:
                self.write()
            except Exception as err:
                self.trouble.note(f"outbox bookkeeping: {err}")
                log.debug("uplink: bookkeeping failed", exc_info=True)
                if sender_done.wait(1.0) and stopping:
                    return
                continue
            if stopping and not self._books:
                return

    def write(self) -> None:
        books = _drain(self._books)
        if not books:
            return
        at = self.now_iso()
        written: list[tuple[str, str]] = []
        with self.db.write() as conn:
            for book in books:
                if book.reset:
                    outbox.reset_deadlines(conn)
                for kind, refs in book.acks:
                    done = outbox.mark_acked(conn, kind, refs, at)
                    self.acked += done
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
        with self._lock:
            self._acked_unwritten.difference_update(written)


class _Link:
    """paho's callbacks (its network thread): each hands a fact over and returns.

    None blocks: PUBACKs and acks go into deques the sender drains, commands into the command
    runner's bounded queue. Each is guarded: an exception is logged, never raised into paho's
    thread.
    """

    def __init__(
        self,
        topics: Topics,
        trouble: _Trouble,
        commands: CommandRunner,
        wake: threading.Event,
        stop: threading.Event,
        verifier: PlatformVerifier | None = None,
        refused_commands: _Refusals | None = None,
    ) -> None:
        self.topics = topics
        self.trouble = trouble
        self.commands = commands
        self.wake = wake
        self.stop = stop
        self.verifier = verifier
        self.refused_commands = refused_commands
        self.connected = threading.Event()
        self.gen = 0  # connections made (this thread writes, the sender reads)
        self.connects = 0
        self.connect_failures = 0
        self.pubacks: deque[tuple[int, bool, str]] = deque()  # (mid, failed, reason)
        #: one entry per ack message: its claims, and why its signature was refused (or None)
        self.acks: deque[tuple[list[AckClaim], str | None]] = deque()

    def attach(self, client: mqtt.Client) -> None:
        client.on_connect = self.on_connect
        client.on_connect_fail = self.on_connect_fail
        client.on_disconnect = self.on_disconnect
        client.on_publish = self.on_publish
        client.on_message = self.on_message

    @guarded
    def on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, props: Any
    ) -> None:
        if reason_code.is_failure:
            self.trouble.note(f"broker refused the connection: {reason_code}")
            return
        set_nodelay(client)
        client.subscribe([(self.topics.ack, 1), (self.topics.commands, 1)])
        client.publish(self.topics.status, messages.ONLINE, qos=1, retain=True)
        self.gen += 1
        self.connects += 1
        self.connected.set()
        where = (self.trouble.host, self.trouble.port)
        if self.trouble.recovered():
            log.warning("uplink: connected to %s:%d again", *where)
        else:
            log.info(
                "uplink: connected to %s:%d (session present: %s)",
                *where,
                getattr(flags, "session_present", "?"),
            )
        self.wake.set()

    @guarded
    def on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """No connection at all (refused, unreachable, unknown host, TLS handshake): paho calls
        this inside its ``except OSError``, so the exception being handled is the reason."""
        self.connect_failures += 1
        err = sys.exc_info()[1]
        self.trouble.note(f"cannot connect to the broker: {err}" if err else "cannot connect")

    @guarded
    def on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, props: Any
    ) -> None:
        self.connected.clear()
        if not self.stop.is_set():
            self.trouble.note(f"disconnected from the broker: {reason_code}")

    @guarded
    def on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, props: Any
    ) -> None:
        self.pubacks.append((mid, bool(reason_code.is_failure), str(reason_code)))
        self.wake.set()

    @guarded
    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        props = msg.properties
        refused = self._signature_refused(msg.topic, payload, props)
        if msg.topic == self.topics.ack:
            self.acks.append((messages.parse_ack(payload), refused))
            self.wake.set()
            return
        name = self.topics.command_name(msg.topic)
        if name is None:
            log.debug("uplink: ignoring a message on %s", msg.topic)
            return
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        cmd = Command(
            name=name,
            payload=payload,
            response_topic=response_topic,
            correlation=getattr(props, "CorrelationData", None) if props else None,
        )
        if (
            refused is None
            and response_topic
            and not self.topics.reply_topic_allowed(response_topic)
        ):
            refused = (
                "bad-response-topic: replies go only to response topics under"
                f" {self.topics.root}/reply/, not {response_topic[:200]!r}"
            )
        if refused is not None:
            code, _, message = refused.partition(": ")
            if self.refused_commands is not None:
                self.refused_commands.add(code, f"{name}: {message}")
            self.commands.refuse(cmd, code, message)
            return
        self.commands.submit(cmd)

    def _signature_refused(self, topic: str, payload: bytes, props: Any) -> str | None:
        """``"code: message"`` when a platform key is pinned and ``topic``'s message lacks a
        valid, fresh signature; ``None`` when it is fine (or no key is pinned)."""
        if self.verifier is None:
            return None
        user = getattr(props, "UserProperty", None) if props else None
        try:
            self.verifier.check(topic, payload, dict(user or []))
        except SignatureError as err:
            return f"{err.code}: {err.message}"
        return None


def _verifier(config: UplinkConfig, clock: Clock) -> PlatformVerifier | None:
    """The platform signature check when a platform key is pinned, else ``None``."""
    if not config.platform_public_key.strip():
        return None
    return PlatformVerifier(
        parse_public_key(config.platform_public_key), clock.now, config.platform_signature_window_s
    )


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
        chain_head: ChainHead | None = None,
    ) -> None:
        self.config = config
        self.station_id = station_id
        self.topics = Topics(f"{config.prefix}/{station_id}")
        self.root = self.topics.root
        self.db = db
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.health = health
        self.chain_head = chain_head
        builtin = builtin_handlers(station_id=station_id, db=db, now=self.clock.now, wake=self.wake)
        self.dispatcher = Dispatcher({**builtin, **(handlers or {})})
        db.migrate("outbox", outbox.MIGRATIONS)
        self._client: mqtt.Client | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._sender_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._trouble = _Trouble(config)
        self._commands = CommandRunner(self.dispatcher, self.topics, self._publish)
        self._refused_acks = _Refusals(self.clock, "ack")
        self._refused_commands = _Refusals(self.clock, "command")
        self._link = _Link(
            self.topics,
            self._trouble,
            self._commands,
            self._wake,
            self._stop,
            _verifier(config, self.clock),
            self._refused_commands,
        )
        self._published = _Published(max(PUBLISHED_MIN, 4 * config.max_unacked))
        #: sends of each (kind, ref) on the current connection: the back-off's exponent
        #: (a fresh connection starts it again, DESIGN §5)
        self._conn_attempts: dict[tuple[str, str], int] = {}
        self._books = _Bookkeeper(db, self._now_iso, self._trouble)
        self._window = _Window(self.clock)
        self._seen_gen = 0
        self._started_mono = self.clock.monotonic()
        self._next_heartbeat = 0.0
        self._next_client_try = 0.0
        #: the earliest deadline of a row put back after a failed send (not in the window)
        self._retry_at: float | None = None
        #: mean bytes of the rows sent lately (``None``: none yet); sizes the outbox look-up
        self._mean_bytes: float | None = None
        self._counts = {"sent": 0, "resent": 0, "published": 0, "puback_failures": 0}
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
            ("uplink-book", lambda: self._books.run(self._sender_done)),
            ("uplink-cmd", lambda: self._commands.run(self._stop)),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(t)
            t.start()
        log.info(
            "uplink: delivering to %s:%d under %s", self.config.host, self.config.port, self.root
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline, disconnect and stop the threads. Idempotent; unsent rows stay queued."""
        if self._stopped:
            return
        self._stopped = True
        deadline = self.clock.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        self._commands.close()
        for t in self._threads:
            t.join(max(0.1, deadline - self.clock.monotonic()))
            if t.is_alive():
                log.error("uplink: thread %s did not stop in time", t.name)
        client = self._client
        if client is None:
            return
        if self._link.connected.is_set():
            try:
                info = client.publish(self.topics.status, messages.OFFLINE, 1, True)
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
        return self._link.connected.is_set()

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
        counts = self._counts
        return {
            "broker": f"{self.config.host}:{self.config.port}",
            "root": self.root,
            "connected": self.connected,
            "queue_depth": outbox.pending_count(conn),
            "oldest_unacked_age_s": age_s,
            "in_flight": len(self._window),
            "in_flight_bytes": self._window.size_bytes,
            "last_error": self._trouble.last_error,
            "sent": counts["sent"],
            "resent": counts["resent"],
            "published": counts["published"],
            "acked": self._books.acked,
            "puback_failures": counts["puback_failures"],
            "connects": self._link.connects,
            "connect_failures": self._link.connect_failures,
            "commands": self._commands.handled,
            "acks_refused": self._refused_acks.total,
            "acks_refused_by_reason": dict(self._refused_acks.by_reason),
            "commands_refused": self._refused_commands.total,
            "commands_refused_by_reason": dict(self._refused_commands.by_reason),
            "signatures_required": self._link.verifier is not None,
        }

    # -- the client ---------------------------------------------------------------------------

    def _try_client(self) -> None:
        """Set up the paho client and start connecting; on a credential problem, say so."""
        self._next_client_try = self.clock.monotonic() + CLIENT_RETRY_S
        try:
            client, props = make_client(
                self.config,
                self.config.client_id_for(self.station_id),
                will=(self.topics.status, messages.OFFLINE),
            )
        except UplinkError as err:
            self._trouble.note(str(err))
            return
        self._link.attach(client)
        connect_in_background(client, self.config, props)
        self._client = client

    def _publish(self, message: Message) -> None:
        """Publish at QoS 1 if there is a client (paho queues it while reconnecting)."""
        client = self._client
        if client is not None:
            client.publish(message.topic, message.payload, qos=1, properties=message.properties)

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
                self._trouble.note(f"send loop: {err}")
                log.debug("uplink: send loop failed", exc_info=True)
                self._stop.wait(1.0)
                continue
            if not busy:
                self._wake.wait(self._idle_wait_s())
        self._sender_done.set()
        self._books.wake()

    def _idle_wait_s(self) -> float:
        """Seconds until the sender's next deadline (heartbeat, an ack timeout in flight, a
        row put back after a failed send, the next client set-up), at most
        :data:`IDLE_WAIT_S`; events wake it earlier."""
        deadlines: list[float | None] = []
        if self._client is None:
            deadlines.append(self._next_client_try)
        if self._link.connected.is_set():  # offline, only a connect (an event) makes work
            deadlines += [self._next_heartbeat, self._window.next_deadline(), self._retry_at]
        soonest = min((d for d in deadlines if d is not None), default=None)
        if soonest is None:
            return IDLE_WAIT_S
        return max(0.0, min(IDLE_WAIT_S, soonest - self.clock.monotonic()))

    def _step(self) -> bool:
        """One round; True when it sent something (go again without waiting).

        Everything the round learnt (acks, PUBACKs, expired deadlines, new attempts) is
        written in one transaction at its end.
        """
        now_mono = self.clock.monotonic()
        if self._client is None and now_mono >= self._next_client_try:
            self._try_client()
        if self._link.gen != self._seen_gen:
            self._seen_gen = self._link.gen
            self._window.clear()
            self._books.reset()
            self._conn_attempts.clear()
        acks = self._accepted_acks(_drain(self._link.acks))
        self._window.acked(acks)
        published = self._take_pubacks()
        expired = self._window.expire(now_mono)
        sent: list[tuple[int, str, float]] = []
        taken = True
        skip = self._books.not_to_send(acks)
        if self._link.connected.is_set():
            if now_mono >= self._next_heartbeat:
                self._next_heartbeat = now_mono + self.config.heartbeat_s
                self._heartbeat()
            taken = self._send_due(now_mono, sent, skip)
        if acks or published or expired or sent:
            self._books.add(_Book(acks, published, expired, now_mono, sent))
        return bool(sent) and taken

    def _accepted_acks(
        self, messages_in: list[tuple[list[AckClaim], str | None]]
    ) -> list[tuple[str, list[str]]]:
        """The ids of these ack messages that prove the platform holds what was published,
        as ``(kind, refs)``; the others are counted, logged and listed in the receipt."""
        if not messages_in:
            return []
        accepted: dict[str, list[str]] = {}
        refused: list[dict[str, str]] = []
        for claims, signature_refused in messages_in:
            code = None if signature_refused is None else signature_refused.partition(": ")[0]
            if code is not None and not claims:
                self._refused_acks.add(code, signature_refused or "")
                refused.append({"kind": "ack", "id": "", "reason": code})
            for claim in claims:
                reason = code or self._published.refusal(claim)
                if reason is None:
                    accepted.setdefault(claim.kind, []).append(claim.ref)
                    self._conn_attempts.pop((claim.kind, claim.ref), None)
                    continue
                self._refused_acks.add(reason, f"{claim.kind} {claim.ref}")
                refused.append({"kind": claim.kind, "id": claim.ref, "reason": reason})
        self._publish(
            messages.ack_receipt(
                self.topics,
                station_id=self.station_id,
                sent_at=self._now_iso(),
                accepted={kind: len(refs) for kind, refs in accepted.items()},
                refused=refused,
                chain_head=self._chain_head(),
            )
        )
        return list(accepted.items())

    def _chain_head(self) -> Mapping[str, Any] | None:
        if self.chain_head is None:
            return None
        try:
            return self.chain_head()
        except Exception as err:
            log.debug("uplink: chain_head() failed", exc_info=True)
            return {"error": str(err)}

    def _take_pubacks(self) -> list[int]:
        """Apply the PUBACKs since the last round; returns the rows now wholly published."""
        published: list[int] = []
        for mid, failed, reason in _drain(self._link.pubacks):
            flight = self._window.puback(mid, failed)
            if flight is None:
                continue
            if failed:
                self._counts["puback_failures"] += 1
                self._trouble.note(f"broker rejected {flight.key[1]}: {reason}")
            if not flight.pending_mids and not flight.failed:
                published.append(flight.row_id)
        self._counts["published"] += len(published)
        return published

    def _send_due(
        self, now_mono: float, sent: list[tuple[int, str, float]], skip: set[tuple[str, str]]
    ) -> bool:
        """Publish due rows while the window has room; False when paho refused one."""
        free = self.config.max_unacked - len(self._window)
        if free <= 0 or self._window.size_bytes >= self.config.max_unacked_bytes:
            return True
        now = self.clock.now()
        if self._retry_at is not None and self._retry_at <= now_mono:
            self._retry_at = None
        window = self._window
        room = self.config.max_unacked_bytes - window.size_bytes
        # ids and sizes first: only what the byte window has room for gets its record read
        rows = outbox.due(
            self.db.read(),
            now_mono=now_mono,
            live_since=now - timedelta(seconds=self.config.live_window_s),
            limit=self._due_limit(free, room, len(skip)),
            max_bytes=room,
            skip=lambda row_id, kind, ref: row_id in window or (kind, ref) in skip,
        )
        at = now.isoformat(timespec="milliseconds")
        for row in rows:
            if self._window.size_bytes >= self.config.max_unacked_bytes:
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
                self._trouble.note(f"cannot send {row.kind} {row.ref}: {err}")
                self._window.forget(row.id)
                retry_at = now_mono + self.config.ack_timeout_max_s
                sent.append((row.id, at, retry_at))
                self._retry_at = min(retry_at, self._retry_at or retry_at)
                continue
            if not taken:
                self._window.forget(row.id)
                return False
            sent.append((row.id, at, deadline))
        return True

    def _due_limit(self, free: int, room_bytes: int, skipped: int) -> int:
        """Rows to look at this round: as many as ``room_bytes`` holds at the mean size sent
        lately, plus the rows that may still look due while in flight (their send not yet
        written), at most ``free`` and :data:`SEND_BATCH`. With photos the window holds
        a few dozen records, and a round after an ack has room for two or three: reading 256
        rows' heads for those would be most of the round's work."""
        if self._mean_bytes is None:
            return min(free, SEND_BATCH)
        expected = int(room_bytes / max(1.0, self._mean_bytes)) + 1
        return max(1, min(free, SEND_BATCH, expected + len(self._window) + skipped + 4))

    def _timeout(self, row: outbox.Row) -> float:
        """The ack timeout of ``row``'s next send: backing off with its sends on this
        connection, not with its attempts since it was queued (a restart or a reconnect is a
        fresh start: a record missed before it must not wait ``ack_timeout_max_s``)."""
        sends = self._conn_attempts.get((row.kind, row.ref), 0)
        t = self.config.ack_timeout_s * self.config.ack_backoff_factor**sends
        return float(min(t, self.config.ack_timeout_max_s))

    def _send(self, row: outbox.Row, deadline_mono: float) -> bool:
        """Publish one row (images first); False when paho would not take it."""
        client = self._client
        assert client is not None
        parts = self._messages(row)
        if parts is None:
            return True  # retried after its timeout; nothing else to do
        proof = (
            messages.published_event_proof(parts[-1].payload.decode())
            if row.kind == "event"
            else messages.alarm_proof(parts[-1].payload)
        )
        flight = _Flight(
            row.id,
            (row.kind, row.ref),
            deadline_mono,
            self._timeout(row),
            size_bytes=sum(len(m.payload) for m in parts),
        )
        self._window.add(flight)
        # what a row weighs on the wire lately (an exponential mean over ~20 rows)
        mean = self._mean_bytes
        self._mean_bytes = (
            flight.size_bytes if mean is None else mean + (flight.size_bytes - mean) / 20
        )
        for m in parts:
            info = client.publish(m.topic, m.payload, qos=1, properties=m.properties)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.debug(
                    "uplink: publish of %s not taken: %s", m.topic, mqtt.error_string(info.rc)
                )
                return False
            self._window.add_mid(flight, info.mid)
        self._counts["resent" if row.attempts else "sent"] += 1
        key = (row.kind, row.ref)
        self._conn_attempts[key] = self._conn_attempts.get(key, 0) + 1
        self._published.add(key, proof)
        return True

    def _messages(self, row: outbox.Row) -> list[Message] | None:
        """What one outbox row puts on the wire; ``None`` when its record is not stored."""
        if row.kind != "event":
            # the alarm as agent.store.alarms queued it: the final roadside.alarm.v1 document
            return [Message(self.topics.alarms, (row.payload or "{}").encode())]
        if row.record_json is None:
            self._trouble.note(f"outbox names record {row.ref}, which is not stored")
            return None
        parts: list[Message] = []
        if row.image_count:
            for name, sha256, path in self.store.image_files(row.ref):
                image, err = messages.image_message(self.topics, row.ref, name, sha256, path)
                if err is not None:
                    self._trouble.note(f"image {name} of {row.ref} unreadable: {err}")
                parts.append(image)
        # the stored canonical JSON: the very bytes that were hashed and signed
        parts.append(Message(self.topics.events, row.record_json.encode()))
        return parts

    def _now_iso(self) -> str:
        return self.clock.now().isoformat(timespec="milliseconds")

    def _heartbeat(self) -> None:
        health: dict[str, Any] = {}
        if self.health is not None:
            try:
                health.update(self.health())
            except Exception as err:
                log.debug("uplink: health() failed", exc_info=True)
                health["health_error"] = str(err)
        stats = self.stats()
        beat = messages.heartbeat(
            health,
            station_id=self.station_id,
            sent_at=self._now_iso(),
            uptime_s=round(self.clock.monotonic() - self._started_mono, 1),
            queue={
                "depth": stats["queue_depth"],
                "oldest_unacked_age_s": stats["oldest_unacked_age_s"],
                "in_flight": stats["in_flight"],
                "acks_refused": stats["acks_refused"],
                "commands_refused": stats["commands_refused"],
            },
            topics=self.topics,
            chain_head=self._chain_head(),
        )
        self._publish(beat)
