"""Real link faults: the broker in its own network namespace behind veth pairs.

The station reaches the broker over one veth pair (the "4G link" the test cuts and throttles),
the platform simulator over another (the platform's own network, never cut). Needs root (or
CAP_NET_ADMIN) and iproute2; skipped otherwise. Only addresses on the veth pairs the test
creates are used, and the namespace with its interfaces is deleted afterwards.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from platform_sim import PlatformSim

from agent.domain import VerdictStatus
from agent.uplink.delivery import Uplink
from tests.conftest import (
    Mosquitto,
    StationData,
    assert_delivered_exactly_once,
    complete_count,
    outbox_unacked,
    uplink_config,
    wait_until,
)

pytestmark = pytest.mark.root
MakeUplink = Callable[..., Uplink]
MakeSim = Callable[..., PlatformSim]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Link:
    ns: str
    station_if: str  # host side of the station's link
    broker_if: str  # namespace side of the station's link
    broker_addr: str  # the broker as the station sees it
    platform_addr: str  # the broker as the platform sees it

    def cut(self) -> None:
        """The far end vanishes: no FIN, no RST; TCP on the station side stays 'established'."""
        _ip("netns", "exec", self.ns, "ip", "link", "set", self.broker_if, "down")

    def restore(self) -> None:
        _ip("netns", "exec", self.ns, "ip", "link", "set", self.broker_if, "up")

    def throttle(self, rate: str) -> None:
        """A slow uplink: a token bucket on the station's egress (station → broker)."""
        subprocess.run(
            ["tc", "qdisc", "replace", "dev", self.station_if, "root", "tbf", "rate", rate,
             "burst", "16kb", "latency", "500ms"],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces, veth and tc (run the suite as root)")
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("needs iproute2 (ip, tc)")
    tag = f"{os.getpid() % 100000}{random.randrange(100)}"
    ns = f"rsa-{tag}"
    net = random.randrange(0, 250)
    link = Link(ns, f"rst{tag}", f"rsb{tag}", f"10.231.{net}.2", f"10.231.{net}.6")
    try:
        _ip("netns", "add", ns)
    except subprocess.CalledProcessError as err:
        pytest.skip(f"cannot create a network namespace: {err.stderr.decode().strip()}")
    try:
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        for host_if, ns_if, host_addr, ns_addr in (
            (link.station_if, link.broker_if, f"10.231.{net}.1/30", f"10.231.{net}.2/30"),
            (f"rpt{tag}", f"rpb{tag}", f"10.231.{net}.5/30", f"10.231.{net}.6/30"),
        ):
            _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            _ip("link", "set", ns_if, "netns", ns)
            _ip("addr", "add", host_addr, "dev", host_if)
            _ip("link", "set", host_if, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", ns_addr, "dev", ns_if)
            _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        yield link
    finally:
        # deleting the namespace deletes the veth ends in it, and with them their peers
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=10)
        for name in (link.station_if, f"rpt{tag}"):
            subprocess.run(
                ["ip", "link", "del", name], check=False, capture_output=True, timeout=10
            )


@pytest.fixture
def ns_broker(link: Link, mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return mosquitto_factory(host="0.0.0.0", netns=link.ns)


def test_half_open_link_cut_while_images_are_in_flight(
    link: Link,
    ns_broker: Mosquitto,
    station: StationData,
    make_uplink: MakeUplink,
    make_sim: MakeSim,
) -> None:
    platform = uplink_config(ns_broker, host=link.platform_addr)
    sim = make_sim(platform)
    config = uplink_config(ns_broker, host=link.broker_addr, keepalive_s=2, max_unacked=20)
    for i in range(60):
        station.commit(
            VerdictStatus.OVERLOADED if i % 5 == 0 else VerdictStatus.WITHIN_LIMIT,
            images=2,
            image_bytes=30_000,
        )
    link.throttle("8mbit")  # slow enough that the cut lands mid-stream
    up = make_uplink(station, config)
    assert sim.wait_for(lambda s: complete_count(s) >= 5, 30)
    link.cut()
    for _ in range(10):
        station.commit(VerdictStatus.OVERLOADED)
    up.wake()
    # no FIN or RST arrives: only the keep-alive can tell the station its link is dead
    wait_until(lambda: not up.connected, 15, "the keep-alive to notice the dead link")
    down_at = complete_count(sim)
    assert down_at < 70
    link.restore()
    assert sim.wait_for(lambda s: complete_count(s) == 70, 60)
    wait_until(lambda: outbox_unacked(station) == 0, 20, "all acks after the link came back")
    assert_delivered_exactly_once(station, sim, config.max_unacked)


def test_slow_1mbit_uplink_delivers_everything_without_spurious_resends(
    link: Link,
    ns_broker: Mosquitto,
    station: StationData,
    make_uplink: MakeUplink,
    make_sim: MakeSim,
) -> None:
    sim = make_sim(uplink_config(ns_broker, host=link.platform_addr))
    # a 1 Mbit/s uplink moves ~120 KB/s: 12 records with two 20 KB photos take ~4 s, far longer
    # than the 1 s ack timeout, which must therefore count from the PUBACK, not from sending
    config = uplink_config(ns_broker, host=link.broker_addr, keepalive_s=5, ack_timeout_s=1.0)
    link.throttle("1mbit")
    for _ in range(12):
        station.commit(VerdictStatus.OVERLOADED, images=2, image_bytes=20_000)
    t0 = time.monotonic()
    up = make_uplink(station, config)
    wait_until(lambda: outbox_unacked(station) == 0, 60, "delivery over 1 Mbit/s")
    elapsed = time.monotonic() - t0
    assert_delivered_exactly_once(station, sim, config.max_unacked)
    total_bytes = sum(
        sum(img["bytes"] for img in r.record["images"]) + 2000 for r in station.committed
    )
    assert elapsed > total_bytes * 8 / 1_000_000 * 0.8, "the link was not throttled"
    assert up.stats()["resent"] == 0
    assert up.stats()["connects"] == 1  # the keep-alive survived a saturated link
