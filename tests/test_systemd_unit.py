"""The systemd unit: clean under ``systemd-analyze verify``, exposure ≤ 2.0, devices limited.

``systemd-analyze verify`` insists that ``ExecStart=`` binaries exist, and on a build machine
``/opt/roadside-agent/venv`` does not; so the unit is verified as a copy whose
``/opt/roadside-agent`` prefix points at a temporary tree with an executable stand-in.
Nothing else is changed.
``verify`` exits 0 even for lines it ignores ("Invalid syntax, ignoring"), so "clean" means
exit 0 *and* no output at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "roadside-agent.service"
PREFIX = "/opt/roadside-agent"
MAX_EXPOSURE = 2.0

# Serial scales / RS-485 adapters and cameras (V4L2, libcamera's media and DMA-heap nodes,
# the Pi 4's vchiq). Adding a device class here is a deliberate act.
EXPECTED_DEVICES = {
    "char-ttyUSB rw",
    "char-ttyS rw",
    "char-ttyACM rw",
    "char-ttyAMA rw",
    "char-video4linux rw",
    "char-media rw",
    "char-dma_heap rw",
    "char-vchiq rw",
}


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not installed (Debian package 'systemd')")
    return path


def _settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (keys repeat: all values kept, in order)."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _verifiable_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with its /opt prefix pointed at an executable stand-in under ``tmp_path``."""
    root = tmp_path / "opt-roadside-agent"
    exe = root / "venv" / "bin" / "roadside-agent"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit_text = (text if text is not None else UNIT.read_text()).replace(PREFIX, str(root))
    copy = tmp_path / UNIT.name
    copy.write_text(unit_text)
    return copy


def _verify(analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    analyze = _analyze()
    result = _verify(analyze, _verifiable_copy(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


def test_verify_check_notices_a_mistyped_setting(tmp_path: Path) -> None:
    """The clean check above could fail: a typo in the unit is reported."""
    analyze = _analyze()
    broken = UNIT.read_text().replace("WatchdogSec=30", "WatchdogSecs=30")
    result = _verify(analyze, _verifiable_copy(tmp_path, broken))
    assert "WatchdogSecs" in result.stderr + result.stdout


def test_security_exposure_is_ok(tmp_path: Path) -> None:
    analyze = _analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = result.stdout + result.stderr
    if "--offline" in out and "unrecognized" in out:
        pytest.skip("this systemd-analyze has no --offline (needs systemd ≥ 250)")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\S+)", out)
    assert m, out
    assert float(m.group(1)) <= MAX_EXPOSURE, out
    assert m.group(2) == "OK", out


def test_unit_is_a_notify_service_with_watchdog_and_no_config_restart_loop() -> None:
    s = _settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert s["StartLimitBurst"] and s["StartLimitIntervalSec"]
    assert any(" check-config " in v for v in s["ExecStartPre"])
    run = s["ExecStart"][0]
    assert " run --config /etc/roadside-agent/station.toml" in run
    assert "--data-dir /var/lib/roadside-agent" in run
    assert s["StateDirectory"] == ["roadside-agent"]
    assert s["ConfigurationDirectory"] == ["roadside-agent"]
    creds = {v.split(":", 1)[0] for v in s["LoadCredential"]}
    assert creds == {"signing-key", "mqtt-client-key"}


def test_unit_runs_unprivileged_with_only_serial_and_camera_devices() -> None:
    s = _settings(UNIT.read_text())
    assert s["User"] == ["roadside-agent"]
    assert set(s["SupplementaryGroups"][0].split()) == {"dialout", "video"}
    assert s["DevicePolicy"] == ["closed"]
    assert set(s["DeviceAllow"]) == EXPECTED_DEVICES
    assert s["CapabilityBoundingSet"] == [""]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]


def test_clock_sync_status_stays_readable_under_the_syscall_filter() -> None:
    """adjtimex (modes=0) is how the agent reads STA_UNSYNC; @system-service lacks it."""
    s = _settings(UNIT.read_text())
    allowed = " ".join(v for v in s["SystemCallFilter"] if not v.startswith("~")).split()
    assert "@system-service" in allowed
    assert {"adjtimex", "clock_adjtime"} <= set(allowed)
    assert "ProtectClock" not in s  # it would add a second filter denying all of @clock


def test_drop_in_examples_are_clean_on_top_of_the_unit(tmp_path: Path) -> None:
    analyze = _analyze()
    unit = _verifiable_copy(tmp_path)
    dropins = tmp_path / f"{UNIT.name}.d"
    dropins.mkdir()
    # NN-name.conf are unit drop-ins (sysusers-*.conf is not)
    examples = sorted((REPO / "systemd" / "examples").glob("[0-9][0-9]-*.conf"))
    assert examples
    for example in examples:
        text = example.read_text().replace(PREFIX, str(tmp_path / "opt-roadside-agent"))
        (dropins / example.name).write_text(text)
    result = _verify(analyze, unit)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
