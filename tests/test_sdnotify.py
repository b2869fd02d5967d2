"""sd_notify over a real AF_UNIX datagram socket, the watchdog gate, and SIGTERM on the daemon.

The receiving end is what systemd does: bind a SOCK_DGRAM socket, read one datagram per
notification. No systemd is needed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.station.sdnotify import (
    Notifier,
    Watchdog,
    stale_stages,
    status_line,
    wait_for_first_readings,
    watchdog_interval_s,
)

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "firmware_config" / "examples" / "demo.toml"


class Receiver:
    """The systemd side: a bound datagram socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def recv(self, timeout_s: float = 5.0) -> dict[str, str]:
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def recv_until(self, key: str, timeout_s: float) -> list[dict[str, str]]:
        """Every message up to and including the first one carrying ``key``."""
        deadline = time.monotonic() + timeout_s
        seen = []
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            seen.append(msg)
            if key in msg:
                return seen

    def empty(self) -> bool:
        self.sock.settimeout(0)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        return False


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # A short directory: AF_UNIX paths are limited to 108 bytes, pytest's tmp_path is long.
    d = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield Receiver(sock, path)
    sock.close()
    os.unlink(path)
    os.rmdir(d)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"roadside-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield Receiver(sock, "@" + name)
    sock.close()


def test_ready_status_stopping_and_watchdog_reach_systemd(receiver: Receiver) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": receiver.address})
    assert n.ready("ready: all scales reading")
    assert receiver.recv() == {"READY": "1", "STATUS": "ready: all scales reading"}
    assert n.status("12 vehicles today; queue 0; broker connected")
    assert receiver.recv() == {"STATUS": "12 vehicles today; queue 0; broker connected"}
    assert n.watchdog()
    assert receiver.recv() == {"WATCHDOG": "1"}
    assert n.extend_timeout(30)
    assert receiver.recv() == {"EXTEND_TIMEOUT_USEC": "30000000"}
    assert n.stopping("stopping: flushing the evidence store")
    assert receiver.recv() == {"STOPPING": "1", "STATUS": "stopping: flushing the evidence store"}
    n.close()


def test_abstract_socket_names_start_with_at(abstract_receiver: Receiver) -> None:
    n = Notifier(abstract_receiver.address)
    assert n.ready()
    assert abstract_receiver.recv() == {"READY": "1"}


def test_without_notify_socket_everything_is_a_quiet_no_op(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n = Notifier.from_environment({})
    assert not n.enabled
    assert not n.ready("x")
    assert not n.status("x")
    assert not Watchdog(n, interval_s=30).tick(stages_fresh=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_status_is_one_line_and_repeats_are_not_resent(receiver: Receiver) -> None:
    n = Notifier(receiver.address)
    n.status("scale wim-1: no reading\nqueue 3")
    assert receiver.recv() == {"STATUS": "scale wim-1: no reading queue 3"}
    n.status("scale wim-1: no reading\nqueue 3")
    assert receiver.empty()


def test_a_vanished_socket_is_logged_once_and_never_raises(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier(receiver.address + ".gone")
    with caplog.at_level(logging.DEBUG, logger="agent.station.sdnotify"):
        assert not n.ready()
        assert not n.watchdog()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert ".gone" in errors[0].getMessage()


def test_watchdog_interval_comes_from_watchdog_usec_for_this_process_only() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    me = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({}) is None


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_watchdog_pings_at_a_third_of_the_interval_while_stages_are_fresh(
    receiver: Receiver,
) -> None:
    clock = FakeMonotonic()
    wd = Watchdog(
        Notifier(receiver.address),
        monotonic=clock,
        environ={"WATCHDOG_USEC": "30000000"},
    )
    assert wd.enabled
    assert wd.tick(stages_fresh=True)
    assert receiver.recv() == {"WATCHDOG": "1"}
    clock.t += 2
    assert not wd.tick(stages_fresh=True)
    clock.t += 8  # 10 s = 30 s / 3
    assert wd.tick(stages_fresh=True)
    assert receiver.recv() == {"WATCHDOG": "1"}
    assert receiver.empty()


def test_a_hung_stage_stops_the_pings_so_systemd_restarts_the_service(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeMonotonic()
    wd = Watchdog(Notifier(receiver.address), interval_s=30, monotonic=clock)
    assert wd.tick(stages_fresh=True)
    receiver.recv()
    beats = {"pipeline": clock.t, "scale-lane1": clock.t - 45}
    for _ in range(30):  # a minute of supervisor ticks with lane 1's scale thread stuck
        clock.t += 2
        beats["pipeline"] = clock.t
        stale = stale_stages(beats, clock.t, max_age_s=10)
        assert not wd.tick(stages_fresh=not stale, stale=stale)
    assert receiver.empty()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "scale-lane1" in errors[0]
    beats["scale-lane1"] = clock.t
    assert wd.tick(stages_fresh=not stale_stages(beats, clock.t, 10))
    assert receiver.recv() == {"WATCHDOG": "1"}


def test_ready_waits_for_the_first_scale_reading(receiver: Receiver) -> None:
    n = Notifier(receiver.address)
    answers = [["scale wim-1 (lane 1)"], ["scale wim-1 (lane 1)"], []]
    stop = threading.Event()
    assert wait_for_first_readings(n, lambda: answers.pop(0), stop, timeout_s=10, poll_s=0.01)
    msgs = receiver.recv_until("READY", timeout_s=5)
    assert "waiting for the first reading from scale wim-1 (lane 1)" in msgs[0]["STATUS"]
    assert msgs[-1] == {"READY": "1", "STATUS": "ready: all scales reading"}


def test_ready_after_the_start_up_timeout_says_which_scale_is_silent(receiver: Receiver) -> None:
    n = Notifier(receiver.address)
    stop = threading.Event()
    ok = wait_for_first_readings(
        n, lambda: ["scale wim-1 (lane 1)"], stop, timeout_s=0.05, poll_s=0.01
    )
    assert not ok
    ready = receiver.recv_until("READY", timeout_s=5)[-1]
    assert "WITHOUT a reading from scale wim-1 (lane 1)" in ready["STATUS"]


def test_stop_during_start_up_sends_no_ready(receiver: Receiver) -> None:
    n = Notifier(receiver.address)
    stop = threading.Event()
    stop.set()
    assert not wait_for_first_readings(n, lambda: ["scale wim-1"], stop, timeout_s=10)
    assert receiver.empty()


def test_status_line_puts_problems_first() -> None:
    line = status_line(57, 3, "NOT connected", problems=["scale wim-1 fault"])
    assert line == "scale wim-1 fault; 57 vehicles today; queue 3; broker NOT connected"


# -- the daemon ---------------------------------------------------------------------------------


def _start_daemon(tmp_path: Path, notify: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = str(REPO)
    if notify:
        env["NOTIFY_SOCKET"] = notify
        env["WATCHDOG_USEC"] = "30000000"
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(DEMO), "--data-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_a_stored_vehicle(proc: subprocess.Popen[str], data_dir: Path) -> None:
    """Until the daemon has committed a vehicle (it reports one in status.json)."""
    import json

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            doc = json.loads((data_dir / "status.json").read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("vehicles", {}).get("stored", 0) >= 1:
            return
        time.sleep(0.1)  # polling a file another process writes: no event to wait on
    proc.kill()
    pytest.fail(f"daemon stored no vehicle: {proc.communicate()[0]}")


def test_sigterm_stops_the_daemon_within_the_units_stop_timeout(tmp_path: Path) -> None:
    """TimeoutStopSec=20: the daemon must be gone well before, having written its state."""
    import json

    proc = _start_daemon(tmp_path, None)
    _wait_for_a_stored_vehicle(proc, tmp_path)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("daemon still running 20 s after SIGTERM (systemd would SIGKILL it)")
    assert proc.returncode == 0, out
    assert time.monotonic() - sent < 15
    assert "signal SIGTERM: stopping" in out
    doc = json.loads((tmp_path / "status.json").read_text())
    assert doc["running"] is False
    assert doc["vehicles"]["store_errors"] == 0


def test_daemon_tells_systemd_ready_watchdog_and_stopping(
    tmp_path: Path, receiver: Receiver
) -> None:
    proc = _start_daemon(tmp_path, receiver.address)
    try:
        msgs = receiver.recv_until("READY", timeout_s=60)
        assert "STATUS" in msgs[-1]
        receiver.recv_until("WATCHDOG", timeout_s=15)
        proc.send_signal(signal.SIGTERM)
        receiver.recv_until("STOPPING", timeout_s=15)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


def test_a_status_that_was_not_delivered_is_sent_again(receiver: Receiver) -> None:
    n = Notifier(receiver.address + ".later")
    assert not n.status("queue 3")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(receiver.address + ".later")  # systemd's socket is back
    try:
        assert n.status("queue 3")
        assert Receiver(sock, "").recv() == {"STATUS": "queue 3"}
    finally:
        sock.close()
        os.unlink(receiver.address + ".later")
