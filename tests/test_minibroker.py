"""The demo MQTT 5 broker (scripts/minibroker.py) against paho-mqtt 2.x clients."""

from __future__ import annotations

import logging
import queue
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from scripts.minibroker import Reader, encode_vbi, start_in_thread, topic_matches

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "minibroker.py"
WAIT = 5.0

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    bound, stop = start_in_thread("127.0.0.1", 0)
    yield bound
    stop()


class Client:
    """A paho MQTT 5 client on a background loop; received messages land in ``messages``."""

    def __init__(self, port: int, client_id: str, protocol: int = mqtt.MQTTv5, **will: Any) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: queue.Queue[Any] = queue.Queue()
        self.connected, self.disconnected = threading.Event(), threading.Event()
        self.disconnect_reason: Any = None
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.paho.reconnect_delay_set(10, 20)
        if will:
            self.paho.will_set(**will)
        self.paho.on_connect = lambda *a: self.connected.set()
        self.paho.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.paho.on_subscribe = lambda _c, _u, _mid, codes, _p: self.acks.put(codes)
        self.paho.on_unsubscribe = lambda _c, _u, _mid, codes, _p: self.acks.put(codes)
        self.paho.on_publish = lambda _c, _u, _mid, code, _p: self.acks.put(code)
        self.paho.on_disconnect = self._on_disconnect
        self.paho.connect("127.0.0.1", port, keepalive=30)
        self.paho.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.disconnect_reason = reason
        self.disconnected.set()

    def subscribe(self, topic: str, qos: int | SubscribeOptions = 1) -> Any:
        options = qos if isinstance(qos, SubscribeOptions) else SubscribeOptions(qos=qos)
        if self.paho.protocol == mqtt.MQTTv5:
            self.paho.subscribe(topic, options=options)
        else:
            self.paho.subscribe(topic, qos=options.QoS)
        return self.acks.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes, qos: int = 1, **kwargs: Any) -> None:
        info = self.paho.publish(topic, payload, qos=qos, **kwargs)
        info.wait_for_publish(WAIT)
        if qos:
            code = self.acks.get(timeout=WAIT)
            assert not code.is_failure, code

    def next(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=WAIT)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def test_qos1_round_trip_keeps_properties_and_gets_puback(port: int) -> None:
    sub, pub = Client(port, "rt-sub"), Client(port, "rt-pub")
    assert [c.value for c in sub.subscribe("rt/+/in", 2)] == [1]  # QoS 2 asked, QoS 1 granted
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("schema", "vehicle/1"), ("station", "S-01")]
    props.ResponseTopic = "rt/reply"
    props.CorrelationData = b"\x00\x01corr"
    props.ContentType = "application/json"
    pub.publish("rt/lane1/in", b'{"axles": 5}', qos=1, properties=props)  # asserts PUBACK success
    msg = sub.next()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("rt/lane1/in", b'{"axles": 5}', 1, 0)
    assert msg.properties.UserProperty == [("schema", "vehicle/1"), ("station", "S-01")]
    assert msg.properties.ResponseTopic == "rt/reply"
    assert msg.properties.CorrelationData == b"\x00\x01corr"
    assert msg.properties.ContentType == "application/json"
    pub.publish("rt/lane1/in", b"zero", qos=0)
    assert (sub.next().qos, pub.paho.is_connected()) == (0, True)
    big = bytes(range(256)) * 2048  # 512 KiB, beyond the stream reader's buffer limit
    pub.publish("rt/lane2/in", big)
    assert sub.next().payload == big
    sub.close()
    pub.close()


def test_wildcards_dollar_topics_unsubscribe_and_no_local(port: int) -> None:
    sub, pub = Client(port, "wc-sub"), Client(port, "wc-pub")
    sub.subscribe("wc/+/temp")
    sub.subscribe("wc/deep/#")
    sub.subscribe("+/sys")
    for topic in ("wc/a/temp", "wc/a/b/temp", "wc/deep", "wc/deep/x/y", "$SYS/sys", "wc/b/temp"):
        pub.publish(topic, b"1")
    assert [sub.next().topic for _ in range(4)] == [
        "wc/a/temp", "wc/deep", "wc/deep/x/y", "wc/b/temp",
    ]  # fmt: skip
    assert sub.acks.empty()
    sub.paho.unsubscribe("wc/+/temp")
    assert [c.value for c in sub.acks.get(timeout=WAIT)] == [0]
    sub.subscribe("wc/deep/#", SubscribeOptions(qos=1, noLocal=True))
    sub.publish("wc/deep/own", b"not echoed")  # routed before the PUBACK came back
    pub.publish("wc/a/temp", b"unsubscribed")
    pub.publish("wc/deep/other", b"x")
    assert sub.next().topic == "wc/deep/other"
    sub.close()
    pub.close()


def test_retained_delivered_later_and_cleared_by_empty_payload(port: int) -> None:
    pub = Client(port, "ret-pub")
    pub.publish("ret/lane1/state", b"ready", qos=1, retain=True)
    pub.publish("ret/lane2/state", b"old", qos=1, retain=True)
    pub.publish("ret/lane2/state", b"idle", qos=0, retain=True)  # replaces
    late = Client(port, "ret-late")
    late.subscribe("ret/#")
    got = {(m.topic, m.payload, m.retain, m.qos) for m in (late.next(), late.next())}
    assert got == {("ret/lane1/state", b"ready", 1, 1), ("ret/lane2/state", b"idle", 1, 0)}
    pub.publish("ret/lane1/state", b"", qos=1, retain=True)
    pub.publish("ret/lane2/state", b"", qos=1, retain=True)
    assert late.next().payload == b"" and late.next().payload == b""  # live, then gone
    later = Client(port, "ret-later")
    later.subscribe("ret/#")
    pub.publish("ret/marker", b"m")
    assert (later.next().topic, later.messages.empty()) == ("ret/marker", True)
    for client in (pub, late, later):
        client.close()


def _connected_raw(client: mqtt.Client, port: int) -> None:
    """Connect ``client`` without a network thread so its socket can be closed abruptly."""
    client.connect("127.0.0.1", port, keepalive=30)
    for _ in range(50):
        client.loop(0.1)
        if client.is_connected():
            return
    raise AssertionError("no CONNACK")


def test_last_will_on_abrupt_close_not_on_normal_disconnect(port: int) -> None:
    watcher = Client(port, "will-watch")
    watcher.subscribe("will/#")
    polite = Client(port, "will-polite", topic="will/polite", payload=b"gone", qos=1)
    polite.close()
    assert polite.disconnected.wait(WAIT)

    rude = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="will-rude", protocol=mqtt.MQTTv5)
    will_props = Properties(PacketTypes.WILLMESSAGE)
    will_props.UserProperty = [("why", "crash")]
    rude.will_set("will/rude", b"offline", qos=1, retain=True, properties=will_props)
    _connected_raw(rude, port)
    sock = rude.socket()
    assert isinstance(sock, socket.socket)
    sock.close()
    msg = watcher.next()
    assert (msg.topic, msg.payload, msg.qos) == ("will/rude", b"offline", 1)
    assert msg.properties.UserProperty == [("why", "crash")]

    asking = Client(port, "will-asking", topic="will/asked", payload=b"bye", qos=0)
    asking.paho.disconnect(
        reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
    )
    asking.paho.loop_stop()
    assert watcher.next().topic == "will/asked"
    watcher.publish("will/marker", b"m")
    assert watcher.next().topic == "will/marker"  # and no "will/polite" before it

    late = Client(port, "will-late")
    late.subscribe("will/rude")
    msg = late.next()
    assert (msg.payload, msg.retain) == (b"offline", 1)  # the will's retain flag was honoured
    late.publish("will/rude", b"", retain=True)
    watcher.close()
    late.close()


def test_keepalive_timeout_sends_will(port: int) -> None:
    watcher = Client(port, "ka-watch")
    watcher.subscribe("ka/#")
    silent = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ka-silent", protocol=mqtt.MQTTv5)
    silent.will_set("ka/silent", b"timeout")
    silent.connect("127.0.0.1", port, keepalive=1)
    for _ in range(50):
        silent.loop(0.1)
        if silent.is_connected():
            break
    msg = watcher.messages.get(timeout=4)  # 1.5 x keepalive, no PINGREQ sent meanwhile
    assert (msg.topic, msg.payload) == ("ka/silent", b"timeout")
    watcher.close()


def test_takeover_by_client_id_closes_older_connection(port: int) -> None:
    first = Client(port, "same-id")
    second = Client(port, "same-id")
    assert first.disconnected.wait(WAIT)
    assert str(first.disconnect_reason) == "Session taken over"
    first.paho.loop_stop()
    second.subscribe("to/x")
    second.publish("to/x", b"still here")
    assert second.next().payload == b"still here"
    second.close()


def test_mqtt311_client_interoperates(port: int) -> None:
    v5, v311 = Client(port, "v5-sub"), Client(port, "v311", protocol=mqtt.MQTTv311)
    v5.subscribe("mix/#")
    v311.subscribe("mix/#")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v")]
    v5.publish("mix/a", b"from5", properties=props)
    v311.publish("mix/b", b"from311")
    assert [v311.next().payload, v311.next().payload] == [b"from5", b"from311"]
    assert [v5.next().payload, v5.next().payload] == [b"from5", b"from311"]
    v5.close()
    v311.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 64,  # AUTH before CONNECT, reserved flags
        b"\x10\xff\xff\xff\xff\xff",  # remaining length of 5 bytes
        b"\x10\xff\xff\xff\x7f",  # 256 MB CONNECT
        b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x05\x7f\x00\x00\x00\x00",  # unknown property
        b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02\xff\xfe",  # bad UTF-8 client id
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_garbage_closes_only_that_connection(port: int, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(garbage)
        assert sock.recv(100) == b""  # closed by the broker
    client = Client(port, "after-garbage")
    client.subscribe("g/x")
    client.publish("g/x", b"ok")
    assert client.next().payload == b"ok"
    client.close()


def test_random_bytes_after_connect_never_crash_a_handler(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(1883)
    connect = b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00"
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(connect + rng.randbytes(rng.randrange(1, 200)))
    client = Client(port, "after-random")
    client.subscribe("r/x")
    client.publish("r/x", b"ok")
    assert client.next().payload == b"ok"
    client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_malformed_publish_after_connect_closes_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00")
        assert sock.recv(100)[:1] == b"\x20"
        sock.sendall(b"\x34\x05\x00\x01a\x00\x01")  # QoS 2 publish
        data = sock.recv(100)
        assert data[:3] == b"\xe0\x02\x9b"  # DISCONNECT: QoS not supported
        assert sock.recv(100) == b""


def test_codec_helpers() -> None:
    for value in (0, 127, 128, 16383, 16384, 268435455):
        assert Reader(encode_vbi(value)).vbi() == value
    props = Reader(b"\x0a\x26\x00\x01k\x00\x01v\x01\x01\x23\x00")
    with pytest.raises(Exception, match="too short"):
        props.properties()
    assert topic_matches("a/#", "a") and topic_matches("+/+", "a/b")
    assert not topic_matches("#", "$SYS/x") and topic_matches("$SYS/#", "$SYS/x")
    assert not topic_matches("a/+", "a/b/c")


def test_subprocess_prints_listening_line_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=10), "no listening line"
        line = proc.stdout.readline().strip()
        assert line.startswith("minibroker listening on 127.0.0.1:")
        client = Client(int(line.rsplit(":", 1)[1]), "sub-proc")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
        assert client.disconnected.wait(WAIT)
        client.paho.loop_stop()
    finally:
        proc.kill()
        proc.wait()
