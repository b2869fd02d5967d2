"""A small MQTT 5 broker for the demo and the tests: pure Python, stdlib asyncio only.

This is a demo/test broker, NOT for production: stations use Mosquitto or EMQX. It exists so the
demo runs on a fresh Debian machine without Mosquitto (the PyPI brokers speak only MQTT 3.1.1).

Supported: MQTT 5.0 (and 3.1.1) CONNECT/CONNACK, PUBLISH QoS 0 and 1 both ways with the publish
properties forwarded unchanged (user properties, response topic, correlation data, content type,
...), PUBACK, retained messages, SUBSCRIBE with ``+``/``#`` and the options byte (No Local, Retain
As Published, Retain Handling), UNSUBSCRIBE, PINGREQ, DISCONNECT (0x04 sends the will), will
messages with properties, session takeover by client id, keepalive enforcement (1.5x), a bounded
outgoing queue per connection (publishes beyond it are dropped).

Not supported: QoS 2 (Maximum QoS=1 is advertised; a QoS 2 PUBLISH gets DISCONNECT 0x9B), session
persistence (every session is new), shared subscriptions, topic aliases, subscription
identifiers, message expiry, will delay, enhanced authentication, auth (user names and passwords
are ignored), TLS, redelivery of unacknowledged QoS 1 messages.

CLI: ``python scripts/minibroker.py --host 127.0.0.1 --port 1883`` (``--port 0``: a free port);
prints ``minibroker listening on HOST:PORT`` once it accepts connections, stops on SIGTERM/SIGINT.
In process: ``port, stop = start_in_thread("127.0.0.1", 0)``; ``stop()`` shuts it down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("minibroker")

PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT = 3, 4, 8, 10, 12, 14
# Property id -> kind: b byte, 2/4 integer, v variable byte integer, s string, d binary, p pair.
PROPERTY_KINDS = {
    0x01: "b", 0x02: "4", 0x03: "s", 0x08: "s", 0x09: "d", 0x0B: "v", 0x11: "4", 0x12: "s",
    0x13: "2", 0x15: "s", 0x16: "d", 0x17: "b", 0x18: "4", 0x19: "b", 0x1A: "s", 0x1C: "s",
    0x1F: "s", 0x21: "2", 0x22: "2", 0x23: "2", 0x24: "b", 0x25: "b", 0x26: "p", 0x27: "4",
    0x28: "b", 0x29: "b", 0x2A: "b",
}  # fmt: skip
SUBSCRIPTION_ID, TOPIC_ALIAS, RECEIVE_MAXIMUM, MAXIMUM_PACKET_SIZE, AUTH_METHOD = (
    0x0B, 0x23, 0x21, 0x27, 0x15,
)  # fmt: skip
PropValue = int | str | bytes | tuple[str, str]


class ProtocolError(Exception):
    """The peer broke the protocol: close its connection (with DISCONNECT ``code`` on MQTT 5)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_vbi(value: int) -> bytes:
    """Variable byte integer (MQTT 5 §1.5.5)."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_str(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


class Reader:
    """Reads the fields of one packet body; any overrun or bad encoding is a malformed packet."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.remaining():
            raise ProtocolError(0x81, "packet too short")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vbi(self) -> int:
        value = 0
        for i in range(4):
            byte = self.u8()
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return value
        raise ProtocolError(0x81, "variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(0x81, "invalid UTF-8 string") from exc
        if "\x00" in text:
            raise ProtocolError(0x81, "U+0000 in a string")
        return text

    def properties(self) -> list[tuple[int, PropValue, bytes]]:
        """Property list as (id, value, raw bytes of the whole property)."""
        section = Reader(self.take(self.vbi()))
        props: list[tuple[int, PropValue, bytes]] = []
        readers: dict[str, Callable[[], PropValue]] = {
            "b": section.u8,
            "2": section.u16,
            "4": lambda: int.from_bytes(section.take(4), "big"),
            "v": section.vbi,
            "s": section.string,
            "d": section.binary,
            "p": lambda: (section.string(), section.string()),
        }
        while section.remaining():
            start = section.pos
            pid = section.vbi()
            kind = PROPERTY_KINDS.get(pid)
            if kind is None:
                raise ProtocolError(0x81, f"unknown property 0x{pid:02x}")
            value = readers[kind]()
            props.append((pid, value, section.data[start : section.pos]))
        return props


def prop_int(props: list[tuple[int, PropValue, bytes]], pid: int, default: int) -> int:
    for p, value, _ in props:
        if p == pid and isinstance(value, int):
            return value
    return default


def valid_topic_filter(filt: str) -> bool:
    levels = filt.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            return False
    return filt != ""


def topic_matches(filt: str, topic: str) -> bool:
    """MQTT matching; wildcards at the first level do not match topics starting with '$'."""
    if topic.startswith("$") and filt[:1] in ("+", "#"):
        return False
    f_levels, t_levels = filt.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or level not in ("+", t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: bytes = b""  # raw MQTT 5 properties, forwarded unchanged


@dataclass
class Subscription:
    qos: int
    no_local: bool = False
    retain_as_published: bool = False


@dataclass(eq=False)
class Connection:
    """One client network connection: a reader loop (this task) and a writer task."""

    broker: MiniBroker
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    v5: bool = True
    registered: bool = False
    client_id: str = ""
    keepalive: int = 0
    will: Message | None = None
    subs: dict[str, Subscription] = field(default_factory=dict)
    inflight: set[int] = field(default_factory=set)
    receive_max: int = 65535
    max_packet: int = 268435460
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    _ids: itertools.cycle[int] = field(default_factory=lambda: itertools.cycle(range(1, 65536)))

    def send(self, packet: bytes, droppable: bool = False) -> bool:
        if self.queue.qsize() >= self.broker.max_queue:
            if droppable:
                return False
            log.warning("client %r does not read its responses: closing", self.client_id)
            self.writer.transport.abort()
            return False
        self.queue.put_nowait(packet)
        return True

    def kick(self, code: int) -> None:
        """Close from the broker side (takeover, shutdown) without a will."""
        self.will = None
        if self.v5 and self.registered:
            self.queue.put_nowait(bytes((0xE0, 2, code, 0)))
        self.queue.put_nowait(None)

    def deliver(self, msg: Message, qos: int, retain: bool) -> None:
        pid = b""
        if qos:
            if len(self.inflight) >= self.receive_max:
                log.warning("client %r: receive maximum reached, message dropped", self.client_id)
                return
            packet_id = next(self._ids)
            while packet_id in self.inflight:
                packet_id = next(self._ids)
            pid = packet_id.to_bytes(2, "big")
        props = encode_vbi(len(msg.props)) + msg.props if self.v5 else b""
        body = encode_str(msg.topic) + pid + props + msg.payload
        packet = bytes((0x30 | qos << 1 | retain,)) + encode_vbi(len(body)) + body
        if len(packet) > self.max_packet:
            return
        if self.send(packet, droppable=True):
            if qos:
                self.inflight.add(int.from_bytes(pid, "big"))
        else:
            log.warning("client %r: outgoing queue full, message dropped", self.client_id)

    async def run(self) -> None:
        writer_task = asyncio.create_task(self._write_loop())
        try:
            timeout: float | None = self.broker.connect_timeout
            _, body = await asyncio.wait_for(self._read_packet(), timeout)
            if not self._on_connect(Reader(body)):
                return
            timeout = self.keepalive * 1.5 if self.keepalive else None
            while True:
                first, body = await asyncio.wait_for(self._read_packet(), timeout)
                if not self._dispatch(first, Reader(body)):
                    return
        except ProtocolError as exc:
            log.info("client %r: %s: closing", self.client_id, exc)
            if self.registered and self.v5:
                self.send(bytes((0xE0, 2, exc.code, 0)))
        except TimeoutError:
            log.info("client %r: keepalive/connect timeout", self.client_id)
            if self.registered and self.v5:
                self.send(bytes((0xE0, 2, 0x8D, 0)))
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.queue.put_nowait(None)  # the writer flushes what is queued, then closes
            try:
                await asyncio.wait_for(writer_task, 2)
            except Exception:
                writer_task.cancel()
                self.writer.transport.abort()
            if self.registered:
                self.broker.unregister(self)

    async def _read_packet(self) -> tuple[int, bytes]:
        first = (await self.reader.readexactly(1))[0]
        if first != 0x10 and not self.registered:  # the first packet must be CONNECT
            raise ProtocolError(0x82, f"first packet has type {first >> 4}, not CONNECT")
        length = 0
        for i in range(4):
            byte = (await self.reader.readexactly(1))[0]
            length |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                break
        else:
            raise ProtocolError(0x81, "remaining length longer than 4 bytes")
        if length > self.broker.max_packet_size:
            raise ProtocolError(0x95, f"packet of {length} bytes is too large")
        return first, await self.reader.readexactly(length)

    async def _write_loop(self) -> None:
        try:
            while (packet := await self.queue.get()) is not None:
                self.writer.write(packet)
                await self.writer.drain()
        except OSError:
            self.writer.transport.abort()
        finally:
            self.writer.close()

    def _on_connect(self, r: Reader) -> bool:
        name, level = r.string(), r.u8()
        if name != "MQTT":
            raise ProtocolError(0x82, f"protocol name {name!r}")
        if level not in (4, 5):  # unsupported protocol version, in the client's own format
            self.send(bytes((0x20, 2, 0, 0x84 if level > 5 else 1)))
            return False
        self.v5 = level == 5
        flags, self.keepalive = r.u8(), r.u16()
        will_qos = flags >> 3 & 3
        if flags & 1 or will_qos == 3 or (not flags & 4 and flags & 0x38):
            raise ProtocolError(0x81, "bad CONNECT flags")
        props = r.properties() if self.v5 else []
        self.receive_max = prop_int(props, RECEIVE_MAXIMUM, 65535)
        self.max_packet = prop_int(props, MAXIMUM_PACKET_SIZE, 268435460)
        self.client_id = r.string()
        if flags & 4:
            will_props = b"".join(raw for pid, _, raw in r.properties()) if self.v5 else b""
            topic, payload = r.string(), r.binary()
            if not topic or "+" in topic or "#" in topic:
                raise ProtocolError(0x90, "invalid will topic")
            self.will = Message(topic, payload, min(will_qos, 1), bool(flags & 0x20), will_props)
        if flags & 0x80:
            r.string()  # user name: ignored
        if flags & 0x40:
            r.binary()  # password: ignored
        code = 0
        if self.v5 and will_qos == 2:
            code = 0x9B  # QoS not supported
        elif self.receive_max == 0:
            code = 0x82  # protocol error
        elif any(pid == AUTH_METHOD for pid, _, _ in props):
            code = 0x8C  # bad authentication method: no enhanced authentication
        if code:
            self.send(bytes((0x20, 3, 0, code, 0)))
            return False
        out_props = b"\x24\x01\x25\x01\x28\x01\x29\x00\x2a\x00"  # max QoS 1, retain, wildcards
        out_props += b"\x27" + self.broker.max_packet_size.to_bytes(4, "big")
        if not self.client_id:
            self.client_id = f"minibroker-{id(self):x}"
            out_props += b"\x12" + encode_str(self.client_id)
        self.broker.register(self)
        self.registered = True
        if self.v5:
            body = b"\x00\x00" + encode_vbi(len(out_props)) + out_props
            self.send(b"\x20" + encode_vbi(len(body)) + body)
        else:
            self.send(b"\x20\x02\x00\x00")
        return True

    def _dispatch(self, first: int, r: Reader) -> bool:
        kind, flags = first >> 4, first & 0x0F
        if kind != PUBLISH and flags != (2 if kind in (SUBSCRIBE, UNSUBSCRIBE) else 0):
            raise ProtocolError(0x81, f"bad fixed header flags for packet type {kind}")
        if kind == PUBLISH:
            self._on_publish(flags, r)
        elif kind == PUBACK:
            self.inflight.discard(r.u16())
        elif kind == SUBSCRIBE:
            self._on_subscribe(r)
        elif kind == UNSUBSCRIBE:
            pid = r.take(2)
            if self.v5:
                r.properties()
            codes = bytearray()
            while r.remaining() or not codes:
                codes.append(0 if self.subs.pop(r.string(), None) else 0x11)
            body = pid + (b"\x00" + codes if self.v5 else b"")
            self.send(bytes((0xB0,)) + encode_vbi(len(body)) + body)
        elif kind == PINGREQ:
            self.send(b"\xd0\x00")
        elif kind == DISCONNECT:
            if not (r.remaining() and r.u8() == 0x04):  # 0x04: disconnect with will message
                self.will = None
            return False
        else:
            raise ProtocolError(0x82, f"unexpected packet type {kind}")
        return True

    def _on_publish(self, flags: int, r: Reader) -> None:
        qos, retain = flags >> 1 & 3, bool(flags & 1)
        if qos == 3 or (qos == 0 and flags & 8):
            raise ProtocolError(0x81, "bad PUBLISH flags")
        if qos == 2:
            raise ProtocolError(0x9B, "QoS 2 is not supported")
        topic = r.string()
        pid = r.take(2) if qos else b""
        props = r.properties() if self.v5 else []
        if any(p == TOPIC_ALIAS for p, _, _ in props):
            raise ProtocolError(0x94, "topic aliases are not supported")
        if not topic or "+" in topic or "#" in topic:
            raise ProtocolError(0x90, f"invalid topic name {topic!r}")
        if qos and pid == b"\x00\x00":
            raise ProtocolError(0x81, "packet identifier 0")
        raw = b"".join(raw for p, _, raw in props if p != SUBSCRIPTION_ID)
        self.broker.publish(Message(topic, r.take(r.remaining()), qos, retain, raw), self)
        if qos:
            self.send(b"\x40\x02" + pid)

    def _on_subscribe(self, r: Reader) -> None:
        pid = r.take(2)
        if self.v5:
            r.properties()  # a subscription identifier is ignored
        codes, new = bytearray(), []
        while r.remaining() or not codes:
            filt, options = r.string(), r.u8()
            if options & (0xC0 if self.v5 else 0xFC) or options & 3 == 3 or options >> 4 & 3 == 3:
                raise ProtocolError(0x81, "bad subscription options")
            if filt.startswith("$share/"):
                codes.append(0x9E if self.v5 else 0x80)
            elif not valid_topic_filter(filt):
                codes.append(0x8F if self.v5 else 0x80)
            else:
                sub = Subscription(min(options & 3, 1), bool(options & 4), bool(options & 8))
                handling, existed = options >> 4 & 3, filt in self.subs
                self.subs[filt] = sub
                codes.append(sub.qos)
                if handling == 0 or (handling == 1 and not existed):
                    new.append((filt, sub))
        body = pid + (b"\x00" if self.v5 else b"") + codes
        self.send(bytes((0x90,)) + encode_vbi(len(body)) + body)
        for filt, sub in new:
            for msg in list(self.broker.retained.values()):
                if topic_matches(filt, msg.topic):
                    self.deliver(msg, min(sub.qos, msg.qos), retain=True)


class MiniBroker:
    """The broker: ``await start()`` returns the bound port, ``await stop()`` closes everything."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        max_queue: int = 1000,
        max_packet_size: int = 8 * 1024 * 1024,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.max_queue, self.max_packet_size = max_queue, max_packet_size
        self.connect_timeout = connect_timeout
        self.clients: dict[str, Connection] = {}
        self.retained: dict[str, Message] = {}
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], Connection] = {}

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            conn.kick(0x8B)  # server shutting down
        if self._conns:
            await asyncio.wait(self._conns, timeout=3)
        for task in list(self._conns):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = conn = Connection(self, reader, writer)
        try:
            await conn.run()
        except Exception:  # a broken connection must never take the broker down
            log.exception("connection handler failed")
            writer.transport.abort()
        finally:
            del self._conns[task]

    def register(self, conn: Connection) -> None:
        old = self.clients.get(conn.client_id)
        if old is not None:
            if old.will is not None:
                self.publish(old.will, old)
            old.kick(0x8E)  # session taken over
        self.clients[conn.client_id] = conn

    def unregister(self, conn: Connection) -> None:
        if self.clients.get(conn.client_id) is conn:
            del self.clients[conn.client_id]
        if conn.will is not None:
            will, conn.will = conn.will, None
            self.publish(will, conn)

    def publish(self, msg: Message, sender: Connection) -> None:
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
        for conn in list(self.clients.values()):
            matching = [
                sub
                for filt, sub in conn.subs.items()
                if topic_matches(filt, msg.topic) and not (sub.no_local and conn is sender)
            ]
            if matching:
                qos = min(msg.qos, max(sub.qos for sub in matching))
                retain = msg.retain and any(sub.retain_as_published for sub in matching)
                conn.deliver(msg, qos, retain)


def start_in_thread(host: str = "127.0.0.1", port: int = 0) -> tuple[int, Callable[[], None]]:
    """Run a broker in a daemon thread; returns (bound port, stop function)."""
    loop = asyncio.new_event_loop()
    broker = MiniBroker(host, port)
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(broker.start())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(broker.stop())
        loop.close()

    thread = threading.Thread(target=run, name="minibroker", daemon=True)
    thread.start()
    ready.wait(10)
    if failure:
        raise failure[0]

    def stop() -> None:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return broker.port, stop


async def _serve(host: str, port: int) -> None:
    broker = MiniBroker(host, port)
    bound = await broker.start()
    print(f"minibroker listening on {host}:{bound}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Small MQTT 5 broker for demos and tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883, help="0 picks a free port")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="minibroker %(levelname)s %(message)s",
    )
    asyncio.run(_serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
