"""The station for real: scripts/install, the unit as shipped, systemd 252 as PID 1.

``../shared/tools/sysbox`` (beside the checkout) boots a Debian 12 root file system with its own
systemd as PID 1 in namespaces on this machine; its network is loopback only and its pip
installs from a wheel cache filled on the host (``sysbox wheels``). One box serves the whole
module: the wheels of requirements.lock's base section are fetched for it (hash-checked; without
the plate-model extras: the demo config uses the simulated plate reader; the offline bundle with
them is tests/test_sysbox_offline.py), the checkout is copied in, and each test checks
one thing a station depends on, in the order a technician meets them: install (twice), start,
journal, signing key, watchdog, stop, bad config, set-config, uninstall. Each test puts the
service in the state it needs, so a single test also runs alone (``-k watchdog``).

Needs root (sysbox mounts, nspawn); skipped with the reason otherwise. The box is stopped in
the fixture's finaliser (``ROADSIDE_SYSBOX_KEEP=1`` keeps it for a post-mortem), and everything
started inside it (the service, the scale simulator, a second broker) ends with it. Times on a
2-core VM: wheels ~16 s (pip download on the host), boot ~1 s, install ~15 s each, the watchdog
~40 s (WatchdogSec=30 as shipped), the bad config ~25 s (systemd's five tries), about 2.6 min
for the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSBOX = REPO.parent / "shared" / "tools" / "sysbox"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sysbox"
#: What scripts/install reads from a checkout (and the scripts themselves).
SOURCE = ("pyproject.toml", "README.md", "LICENSE", "requirements.lock", "agent", "drivers",
          "firmware_config", "scripts", "systemd", "docs")  # fmt: skip
UNIT = "roadside-agent.service"
ETC = "/etc/roadside-agent"
CONFIG = f"{ETC}/station.toml"
STATE = "/var/lib/roadside-agent"
AGENT = "/opt/roadside-agent/venv/bin/roadside-agent"
VENV_PY = "/opt/roadside-agent/venv/bin/python"
STATION_ROOT = "roadside/v1/JS-ZJ-0001"
#: The unit's values (systemd/roadside-agent.service), which the checks hold it to.
WATCHDOG_S = 30
TIMEOUT_STOP_S = 20
RESTART_S = 5
#: A second lane whose axle scale is the parked-truck simulator (tests/fixtures/sysbox).
SCALE_PORT = 5020
AXLE_LANE = f"""
[[lanes]]
number = 2
vehicle_class = "unknown"

[lanes.scale]
type = "modbus_tcp"
host = "127.0.0.1"
port = {SCALE_PORT}
id = "axle-2"
accuracy_class = "10"
certificate = "JS-JL-2026-00124"
certificate_valid_until = 2027-05-31

[lanes.weighing]
mode = "axle"

[[lanes.cameras]]
type = "replay"
id = "cam-front-2"
role = "front"
mode = "road"
"""

pytestmark = [pytest.mark.root, pytest.mark.slow]


def box_name(role: str) -> str:
    """A box name of this run's own: two runs on one machine (two checkouts, a developer beside
    CI) must not boot into, stop or wipe each other's box."""
    return f"roadside-{role}-{hashlib.sha256(str(REPO).encode()).hexdigest()[:6]}-{os.getpid()}"


def lock_section(sections: str) -> str:
    """The requirements of those sections of requirements.lock, as scripts/install reads them."""
    script = f". {REPO}/scripts/_lock.sh; lock_select {REPO}/requirements.lock '{sections}'"
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout


def _why_not() -> str | None:
    if not SYSBOX.is_file():
        return f"no sysbox at {SYSBOX} (../shared/tools/sysbox beside the checkout)"
    if os.geteuid() != 0:
        return "sysbox needs root (mounts, systemd-nspawn)"
    if shutil.which("python3") is None:
        return "no python3 on the host for `sysbox wheels`"
    return None


@dataclass
class Box:
    """The booted box: ``sh`` runs a bash script inside it, as root, with a clean env."""

    env: dict[str, str]

    def sysbox(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SYSBOX), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def sh(self, script: str, timeout_s: float = 60, check: bool = True) -> str:
        r = self.sysbox("run", "bash", "-c", f"set -eu\n{script}", timeout_s=timeout_s)
        if check and r.returncode != 0:
            raise AssertionError(
                f"in the box, exit {r.returncode}:\n{script}\n--- stdout\n{r.stdout}"
                f"\n--- stderr\n{r.stderr}"
            )
        return r.stdout

    def rc(self, script: str, timeout_s: float = 60) -> int:
        return self.sysbox("run", "bash", "-c", script, timeout_s=timeout_s).returncode

    def show(self, *props: str, unit: str = UNIT) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def write(self, path: str, text: str) -> None:
        """Write ``text`` to ``path`` in the box (replacing the file's content in place)."""
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "content"
            src.write_text(text, encoding="utf-8")
            r = self.sysbox("push", str(src), "/root/.push")
            assert r.returncode == 0, r.stderr
        self.sh(f"cat /root/.push/content > {shlex.quote(path)}; rm -rf /root/.push")

    def wait(self, what: str, check: str, timeout_s: float, poll_s: float = 0.5) -> float:
        """Poll the shell condition ``check`` until it holds; seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.rc(check) == 0:
                return time.monotonic() - t0
            time.sleep(poll_s)
        raise AssertionError(f"{what}: not within {timeout_s:g} s ({check})")

    def cursor(self) -> str:
        """The journal's current end, for "what was logged since"."""
        out = self.sh("journalctl -n 0 --show-cursor --no-pager -q || true")
        m = re.search(r"-- cursor: (\S+)", out)
        assert m, out
        return m.group(1)

    def journal(self, since: str | None = None, unit: str = UNIT, fmt: str = "short") -> str:
        after = f"--after-cursor={shlex.quote(since)}" if since else ""
        return self.sh(f"journalctl -u {unit} {after} -o {fmt} --no-pager -q || true")

    def agent_running(self, config: str | None = None) -> None:
        """The service active on ``config`` (the installed demo config by default)."""
        if config is not None:
            self.write(CONFIG, config)
        # Each test starts from a clean slate: earlier failures must not count towards
        # StartLimitBurst=, and a changed config needs a restart.
        self.sh(f"systemctl reset-failed {UNIT} || true")
        if config is not None or self.show("ActiveState")["ActiveState"] != "active":
            self.sh(f"systemctl restart {UNIT}", timeout_s=150)


@dataclass
class Installed:
    first: str
    second: str
    key_id: str
    demo_config: str


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    why = _why_not()
    if why:
        pytest.skip(why)
    env = {**os.environ, "SYSBOX_NAME": box_name("test")}
    env.pop("PYTHONPATH", None)
    b = Box(env)
    try:
        for step, args, timeout_s in (
            # the cached rootfs tarball (~0.1 s); a first run on a machine builds it (~1 min)
            ("build", ("build",), 300),
        ):
            r = b.sysbox(*args, timeout_s=timeout_s)
            assert r.returncode == 0, f"sysbox {step}: {r.stderr}"
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "roadside-agent"
            src.mkdir()
            for name in SOURCE:
                if (REPO / name).is_dir():
                    shutil.copytree(
                        REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__")
                    )
                elif (REPO / name).exists():
                    shutil.copy2(REPO / name, src / name)
            # the project's locked dependencies (no plate extras: the lock's base section, as
            # scripts/install selects it) and its build backend, for the box
            base = Path(tmp) / "base.txt"
            base.write_text(lock_section("base"))
            for args in (("--require-hashes", "--no-deps", "-r", str(base)), ("setuptools>=68",)):
                r = b.sysbox("wheels", *args, timeout_s=300)
                assert r.returncode == 0, f"sysbox wheels: {r.stderr}"
            r = b.sysbox("boot", timeout_s=150)
            assert r.returncode == 0, f"sysbox boot: {r.stderr}"
            for path in (src, FIXTURES):
                r = b.sysbox("push", str(path), "/root")
                assert r.returncode == 0, f"sysbox push {path}: {r.stderr}"
        yield b
    finally:
        if os.environ.get("ROADSIDE_SYSBOX_KEEP") == "1":  # post-mortem: sysbox shell
            print(f"box kept running: SYSBOX_NAME={env['SYSBOX_NAME']} {SYSBOX} shell")
        else:
            r = b.sysbox("stop", "--clean", timeout_s=90)
            assert r.returncode == 0, f"sysbox stop: {r.stderr}"


@pytest.fixture(scope="module")
def installed(box: Box) -> Installed:
    """scripts/install run twice, as a technician does it, with the demo config."""
    install = "cd /root/roadside-agent && ./scripts/install --extras '' --example demo.toml"
    first = box.sh(f"{install} 2>&1", timeout_s=300)
    second = box.sh(f"{install} 2>&1", timeout_s=300)
    m = re.search(r"key id:\s+(\S+)", first)
    assert m, first
    # The platform-issued MQTT client key (mutual TLS); the demo's broker needs none, but
    # LoadCredential= needs the file (status 243/CREDENTIALS without it).
    box.sh(f"install -m 0600 /dev/null {ETC}/credentials/mqtt-client-key")
    return Installed(first, second, m.group(1), box.sh(f"cat {CONFIG}"))


def _owner_mode(box: Box, path: str) -> str:
    return box.sh(f"stat -c '%U:%G %a' {path}").strip()


def _events(box: Box, args: str) -> list[dict[str, Any]]:
    """``roadside-agent events --json`` (one record a line), newest first."""
    out = box.sh(f"{AGENT} events --json {args}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_install_twice_leaves_a_station_the_service_can_write(
    box: Box, installed: Installed
) -> None:
    assert "kept /etc/roadside-agent/station.toml" in installed.second
    assert "kept the signing key" in installed.second
    assert box.sh(f"systemctl is-enabled {UNIT}").strip() == "enabled"
    assert _owner_mode(box, ETC) == "root:roadside-agent 770"
    assert _owner_mode(box, CONFIG) == "root:roadside-agent 640"
    assert _owner_mode(box, f"{ETC}/backups") == "roadside-agent:roadside-agent 700"
    assert _owner_mode(box, f"{ETC}/credentials") == "root:root 700"
    assert _owner_mode(box, f"{ETC}/credentials/signing-key") == "root:root 600"
    # keygen ran as root; the public key folder in the state directory is the service's
    assert _owner_mode(box, STATE).startswith("roadside-agent:roadside-agent")
    assert box.sh(f"find {STATE} ! -user roadside-agent").strip() == ""
    assert box.sh(f"{AGENT} check-config {CONFIG}").startswith(CONFIG)


def test_start_reaches_ready_with_a_status_line(box: Box, installed: Installed) -> None:
    box.sh(f"systemctl stop {UNIT}; systemctl reset-failed {UNIT} || true")
    t0 = time.monotonic()
    box.sh(f"systemctl start {UNIT}", timeout_s=150)  # Type=notify: returns at READY=1
    took = time.monotonic() - t0
    s = box.show("ActiveState", "SubState", "StatusText", "NRestarts", "MainPID")
    assert (s["ActiveState"], s["SubState"], s["NRestarts"]) == ("active", "running", "0"), s
    assert s["StatusText"].startswith("ready"), s
    assert f'Status: "{s["StatusText"]}"' in box.sh(f"systemctl status {UNIT} --no-pager || true")
    assert took < 30, f"start took {took:.1f} s"
    # the main process runs as the service user, with its supplementary groups
    ids = box.sh(f"ps -o user:32=,group:32=,supgrp:80= -p {s['MainPID']}").split()
    assert ids[:2] == ["roadside-agent", "roadside-agent"] and "dialout" in ids[2], ids


def _agent_entries(box: Box, since: str | None = None) -> list[dict[str, Any]]:
    """The agent's own journal entries (not systemd's about it), as journalctl's JSON."""
    out = box.journal(since, fmt="json")
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "roadside-agent"]


def _priorities(entries: list[dict[str, Any]], part: str) -> set[str]:
    return {e["PRIORITY"] for e in entries if part in str(e.get("MESSAGE"))}


def test_journal_lines_carry_the_agent_s_levels(box: Box, installed: Installed) -> None:
    """The ``<N>`` prefixes reach journald as priorities: a broker outage is an ERROR once,
    the reconnection a WARNING, the start-up lines INFO."""
    box.agent_running()
    since = box.cursor()
    after = f"journalctl -u {UNIT} -q --after-cursor={shlex.quote(since)} | grep -q"
    box.sh("systemctl stop mosquitto")
    try:
        box.wait("the outage logged", f"{after} 'records stay in the outbox'", 20)
    finally:
        box.sh("systemctl start mosquitto")
    box.wait("the reconnection logged", f"{after} 'connected to .* again'", 30)
    everything = _agent_entries(box)
    assert everything, "no lines of the agent in the journal"
    assert not [e["MESSAGE"] for e in everything if re.match(r"<\d>", str(e.get("MESSAGE")))]
    assert {e["PRIORITY"] for e in everything} <= {"2", "3", "4", "6", "7"}
    assert _priorities(everything, "started:") == {"6"}
    outage = _agent_entries(box, since)
    assert _priorities(outage, "records stay in the outbox") == {"3"}
    assert _priorities(outage, "connected to 127.0.0.1:1883 again") == {"4"}


def test_signing_key_arrives_by_load_credential(box: Box, installed: Installed) -> None:
    box.agent_running()
    pid = box.show("MainPID")["MainPID"]
    env = box.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    m = re.search(r"^CREDENTIALS_DIRECTORY=(.+)$", env, re.M)
    assert m, env
    creds = m.group(1)
    assert box.rc(f"cmp {creds}/signing-key {ETC}/credentials/signing-key") == 0
    assert _owner_mode(box, creds).split()[0].startswith("roadside-agent")  # the service's copy
    # the key never lands in the state directory, and the agent made none of its own
    assert box.sh(f"find {STATE} -name '*.key'").strip() == ""
    log = box.journal()
    assert "no signing key; created" not in log
    assert "cannot write the public key" not in log
    assert box.rc(f"cmp {STATE}/keys/station.pub {ETC}/credentials/signing-key.pub") == 0
    # the records it seals carry that key
    box.wait("a sealed record", f"{AGENT} events --json --full --limit 1 | grep -q key_id", 30)
    [record] = _events(box, "--full --limit 1")
    assert record["integrity"]["key_id"] == installed.key_id
    assert json.loads(box.sh(f"{AGENT} verify --json"))["ok"] is True


def test_watchdog_kills_and_restarts_a_hung_daemon(box: Box, installed: Installed) -> None:
    box.agent_running()
    before = box.show("MainPID", "NRestarts")
    since = box.cursor()
    box.sh(f"kill -STOP {before['MainPID']}")
    took = box.wait(
        "restarted by the watchdog",
        f'[ "$(systemctl show -P MainPID {UNIT})" != {before["MainPID"]} ]'
        f' && [ "$(systemctl show -P MainPID {UNIT})" != 0 ]'
        f" && systemctl is-active -q {UNIT}",
        timeout_s=WATCHDOG_S + TIMEOUT_STOP_S + RESTART_S + 30,
    )
    after = box.show("NRestarts", "ActiveState")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    log = box.journal(since)
    assert "Watchdog timeout" in log, log
    assert "Failed with result 'watchdog'" in log, log
    assert took >= WATCHDOG_S - 2, f"restarted after {took:.1f} s, before the watchdog"


def test_stop_stores_the_vehicle_on_the_scale_as_incomplete(box: Box, installed: Installed) -> None:
    box.sh(
        f"systemctl stop parked-truck.service 2>/dev/null || true; "
        f"systemctl reset-failed parked-truck.service 2>/dev/null || true; "
        f"systemd-run -q --unit=parked-truck --property=Environment=PYTHONUNBUFFERED=1 "
        f"{VENV_PY} /root/sysbox/parked_truck.py {SCALE_PORT}"
    )
    try:
        box.wait(
            "scale simulator listening",
            "journalctl -u parked-truck -o cat -q | grep -q '^listening'",
            15,
        )
        box.agent_running(installed.demo_config + AXLE_LANE)
        box.wait(
            "the truck parked on lane 2's scale",
            "journalctl -u parked-truck -o cat -q | grep -qx parked",
            30,
        )
        time.sleep(1.0)
        since = box.cursor()
        t0 = time.monotonic()
        box.sh(f"systemctl stop {UNIT}", timeout_s=TIMEOUT_STOP_S + 15)
        took = time.monotonic() - t0
    finally:
        box.sh("systemctl stop parked-truck.service || true")
    s = box.show("ActiveState", "Result", "ExecMainStatus")
    assert s["Result"] == "success", s  # not 'timeout': no SIGKILL after TimeoutStopSec
    assert took < TIMEOUT_STOP_S, f"stop took {took:.1f} s"
    log = box.journal(since)
    assert "lane 2: vehicle on the scale at shutdown stored as incomplete" in log, log
    events = _events(box, "--lane 2 --full --limit 5")
    assert events, "no record of lane 2"
    text = json.dumps(events, ensure_ascii=False)
    assert "incomplete" in text, text[:2000]
    assert '"undetermined"' in text, text[:2000]
    print(f"systemctl stop with a truck on the scale: {took:.2f} s")


def test_bad_config_stops_at_exec_start_pre_with_78(box: Box, installed: Installed) -> None:
    box.sh(f"systemctl stop {UNIT}; systemctl reset-failed {UNIT} || true")
    box.write(CONFIG, installed.demo_config.replace("\nport = 1883", "\nprot = 1883"))
    since = box.cursor()
    try:
        assert box.rc(f"systemctl start {UNIT}", timeout_s=60) != 0
        # systemd tries five times (RestartPreventExitStatus= does not cover ExecStartPre=),
        # then gives up and the unit stays failed: no restart loop
        box.wait(
            "the unit given up on",
            f'[ "$(systemctl show -P ActiveState {UNIT})" = failed ]',
            timeout_s=5 * (RESTART_S + 5),
        )
        time.sleep(RESTART_S + 1)
        s = box.show("ActiveState", "Result", "NRestarts")
        assert (s["ActiveState"], s["Result"]) == ("failed", "exit-code"), s
        status = box.sh(f"systemctl status {UNIT} --no-pager || true")
        assert re.search(r"ExecStartPre=.*check-config.*\(code=exited, status=78\)", status), status
        log = box.journal(since)
        assert "uplink.prot  1883 → unknown key (did you mean 'port'?)" in log, log
        assert "Start request repeated too quickly" in log, log
        assert "started:" not in log, "the daemon ran on a bad config"
    finally:
        box.write(CONFIG, installed.demo_config)
        box.sh(f"systemctl reset-failed {UNIT} || true")


def _set_config(box: Box, config: str, timeout_s: float = 40) -> dict[str, object]:
    box.write("/root/set-config.json", json.dumps({"config": config}))
    out = box.sh(
        f"{VENV_PY} /root/sysbox/mqtt_command.py {STATION_ROOT} set-config"
        f" /root/set-config.json {timeout_s}",
        timeout_s=timeout_s + 10,
    )
    reply: dict[str, object] = json.loads(out)
    return reply


def test_set_config_over_mqtt_applies_and_refuses_an_unreachable_broker(
    box: Box, installed: Installed
) -> None:
    box.agent_running(installed.demo_config)
    renamed = installed.demo_config.replace("Demo station (simulated)", "Demo station, pushed")
    before = box.show("MainPID", "NRestarts")
    reply = _set_config(box, renamed)
    assert reply["ok"] is True, reply
    result = reply["result"]
    assert isinstance(result, dict) and result["applied"] is True, reply
    backup = f"{ETC}/backups/{result['backup']}"
    assert box.sh(f"cat {backup}") == installed.demo_config
    assert box.sh(f"cat {CONFIG}") == renamed
    # the agent restarts itself on the new file (exit 75, Restart=on-failure)
    box.wait(
        "restarted on the pushed config",
        f'[ "$(systemctl show -P MainPID {UNIT})" != {before["MainPID"]} ]'
        f" && systemctl is-active -q {UNIT}",
        timeout_s=float(result.get("restart_in_s", 2)) + RESTART_S + 30,
    )
    assert box.sh(f"{AGENT} check-config {CONFIG}").startswith(CONFIG)

    # A broker that refuses the station: the new config is probed first and refused; the file
    # is never written and the station stays up.
    box.write("/root/deny.conf", "listener 1884 127.0.0.1\nallow_anonymous false\n")
    box.sh(
        "systemctl stop deny-broker 2>/dev/null || true;"
        " systemctl reset-failed deny-broker 2>/dev/null || true;"
        " systemd-run -q --unit=deny-broker /usr/sbin/mosquitto -c /root/deny.conf"
    )
    try:
        box.wait("the refusing broker", "ss -ltn | grep -q 127.0.0.1:1884", 10)
        running = box.show("MainPID")["MainPID"]
        reply = _set_config(box, renamed.replace("\nport = 1883", "\nport = 1884"))
    finally:
        box.sh("systemctl stop deny-broker || true")
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert isinstance(error, dict) and error["code"] == "unreachable", reply
    assert box.sh(f"cat {CONFIG}") == renamed
    time.sleep(1.0)
    s = box.show("MainPID", "ActiveState")
    assert (s["MainPID"], s["ActiveState"]) == (running, "active"), s
    assert "broker unreachable with the new config; nothing changed" in box.journal()


FULLDISK = f"{VENV_PY} /root/roadside-agent/scripts/fulldisk_check.py"
#: The demo, faster, with a small database reserve and retention checking every 0.5 s (the
#: in-process twin of this test: tests/test_fulldisk.py).
FULLDISK_EVIDENCE = """
[evidence]
db_reserve_mb = 2
reserve_free_mb = 1
min_free_mb = 1
retention_interval_s = 0.5
"""


def _disk_report(box: Box) -> dict[str, Any]:
    """``fulldisk_check.py report``: what the station kept (it exits 1 when verify fails)."""
    r = box.sysbox("run", "bash", "-c", f"{FULLDISK} report {STATE}", timeout_s=60)
    assert r.returncode in (0, 1) and r.stdout.strip(), r.stderr
    doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return doc


def _records_reach(box: Box, what: str, count: int, timeout_s: float) -> dict[str, Any]:
    t0 = time.monotonic()
    while True:
        doc = _disk_report(box)
        if doc["records"] >= count:
            return doc
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what}: {doc['records']} records, not {count} in {timeout_s} s")
        time.sleep(1.0)


def test_a_full_disk_under_the_real_unit(box: Box, installed: Installed) -> None:
    """Issue 17: the data directory on a small tmpfs, filled to the last byte under the running
    unit. Records go on being committed (without photos), the watchdog does not restart the
    daemon, verify holds, and a restart on the still-full disk reaches READY and records."""
    config = re.sub(r"(?m)^vehicles_per_min = .*$", "vehicles_per_min = 120",
                    installed.demo_config) + FULLDISK_EVIDENCE  # fmt: skip
    box.sh(f"systemctl stop {UNIT}; systemctl reset-failed {UNIT} || true")
    # the installed station's evidence stays below the mount, untouched
    box.sh(f"mount -t tmpfs -o size=24m,mode=0755 roadside-fulldisk {STATE}")
    try:
        box.agent_running(config)
        _records_reach(box, "records before the disk fills", 3, 60)
        box.wait("the database reserve made", f"test -s {STATE}/db-reserve.bin", 30)
        restarts = box.show("NRestarts")["NRestarts"]
        box.sh(f"{FULLDISK} fill {STATE}")
        assert int(box.sh(f"stat -f -c %a {STATE}").strip()) == 0  # not one block free
        at_full = _disk_report(box)["records"]
        full = _records_reach(box, "records on the full disk", at_full + 20, 90)
        s = box.show("ActiveState", "NRestarts")
        assert s == {"ActiveState": "active", "NRestarts": restarts}, s  # no watchdog kill
        assert full["records_without_images_disk_full"] >= 1, full
        assert full["verify_ok"], full["verify_problems"]
        # a restart on the full disk (before: "database or disk is full", restart failed)
        box.sh(f"{FULLDISK} fill {STATE}")
        box.sh(f"systemctl restart {UNIT}", timeout_s=150)
        again = _records_reach(box, "records after a restart on the full disk",
                               _disk_report(box)["records"] + 3, 90)  # fmt: skip
        assert again["verify_ok"], again["verify_problems"]
        print(f"full disk under the unit: {full['records'] - at_full} records while full, "
              f"{full['records_without_images_disk_full']} without photos; alarms "
              f"{sorted(set(full['alarms']))}")  # fmt: skip
    finally:
        box.sh(f"systemctl stop {UNIT} || true; {FULLDISK} release {STATE} || true")
        box.sh(f"umount {STATE}; systemctl reset-failed {UNIT} || true")
        box.write(CONFIG, installed.demo_config)


def test_uninstall_keeps_the_evidence(box: Box, installed: Installed) -> None:
    box.agent_running()
    box.wait("a stored record", f"{AGENT} events --json --limit 1 | grep -q event_id", 30)
    out = box.sh("cd /root/roadside-agent && ./scripts/uninstall 2>&1", timeout_s=60)
    assert "kept the evidence" in out, out
    assert box.rc(f"systemctl is-active -q {UNIT}") != 0
    assert box.rc(f"test -e /etc/systemd/system/{UNIT} || test -e /opt/roadside-agent") != 0
    records = box.sh(f"sqlite3 'file:{STATE}/station.db?mode=ro' 'select count(*) from records'")
    assert int(records) > 0
    for kept in (CONFIG, f"{ETC}/credentials/signing-key", f"{STATE}/keys/station.pub"):
        assert box.rc(f"test -s {kept}") == 0, f"uninstall removed {kept}"
