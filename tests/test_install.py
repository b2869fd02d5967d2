"""scripts/install and scripts/uninstall, run into a throwaway root (never the real system).

With ``--root`` the scripts create no users and call no ``systemctl``; the tree they leave is
what a station's root file system gets. The virtualenv build (pip, minutes, network) is one
slow test (skip it with ``ROADSIDE_SKIP_REAL_INSTALL=1``); the others use ``--no-venv``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.store import integrity

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install"
UNINSTALL = REPO / "scripts" / "uninstall"
DEMO = REPO / "firmware_config" / "examples" / "demo.toml"
ETC = "etc/roadside-agent"
STATE = "var/lib/roadside-agent"


def _run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base["ROADSIDE_DEVICE_TREE_MODEL"] = "/nonexistent"  # never the build machine's own
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**base, **(env or {})},
    )


def _install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = _run(INSTALL, "--root", root, "--no-venv", "--python", sys.executable, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_install_stages_a_bootable_tree(tmp_path: Path) -> None:
    real_etc_existed = Path("/etc/roadside-agent").exists()
    out = _install(tmp_path).stdout
    unit = tmp_path / "etc/systemd/system/roadside-agent.service"
    assert unit.read_text() == (REPO / "systemd" / "roadside-agent.service").read_text()
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants/roadside-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/roadside-agent.service"
    sysusers = (tmp_path / "etc/sysusers.d/roadside-agent.conf").read_text()
    assert "u roadside-agent" in sysusers
    assert "m roadside-agent dialout" in sysusers and "m roadside-agent video" in sysusers
    assert (tmp_path / "etc/udev/rules.d/99-roadside-serial.rules.example").is_file()
    assert (tmp_path / "etc/tmpfiles.d/roadside-agent.conf").is_file()
    assert (tmp_path / "opt/roadside-agent/firmware_config/examples/demo.toml").is_file()
    command = tmp_path / "usr/local/bin/roadside-agent"
    assert os.readlink(command) == "/opt/roadside-agent/venv/bin/roadside-agent"
    assert (tmp_path / STATE).stat().st_mode & 0o777 == 0o750
    assert (tmp_path / ETC / "credentials").stat().st_mode & 0o777 == 0o700
    # nothing happened to this machine
    assert "skipped (--root): service user" in out
    assert Path("/etc/roadside-agent").exists() == real_etc_existed


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles")
@pytest.mark.skipif(os.geteuid() != 0, reason="setting file ownership needs root")
def test_first_boot_gives_the_service_user_its_config(tmp_path: Path) -> None:
    """In a staged tree the user does not exist at install time: tmpfiles.d fixes it at boot."""
    _install(tmp_path)
    # what systemd-sysusers adds at first boot
    (tmp_path / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nroadside-agent:x:990:990::/var/lib/roadside-agent:/bin/false\n"
    )
    (tmp_path / "etc/group").write_text("root:x:0:\nroadside-agent:x:990:\n")
    result = _run("systemd-tmpfiles", f"--root={tmp_path}", "--create", "roadside-agent.conf")
    assert result.returncode == 0, result.stderr
    # the folder is the service's to write (set-config replaces station.toml, keeps backups/)
    for path, mode in (("", 0o770), ("station.toml", 0o640)):
        st = (tmp_path / ETC / path).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 990, mode), path
    backups = (tmp_path / ETC / "backups").stat()
    assert (backups.st_uid, backups.st_gid, backups.st_mode & 0o777) == (990, 990, 0o700)
    creds = (tmp_path / ETC / "credentials").stat()
    assert (creds.st_uid, creds.st_gid, creds.st_mode & 0o777) == (0, 0, 0o700)


def assert_only_the_certificates_are_missing(result: subprocess.CompletedProcess[str]) -> None:
    """The installed example names the TLS certificates the platform issues to the station;
    until the technician puts them there, check-config says so (and nothing else)."""
    problems = [line for line in result.stderr.splitlines() if " → " in line]
    assert result.returncode in (0, 78), result.stdout + result.stderr
    assert bool(problems) == (result.returncode == 78), result.stderr
    for line in problems:
        assert "uplink.tls." in line and "file not found" in line, line


def test_installed_config_passes_check_config(tmp_path: Path) -> None:
    _install(tmp_path)
    config = tmp_path / ETC / "station.toml"
    assert (config.stat().st_mode & 0o777) == 0o640
    result = _run(
        sys.executable, "-m", "agent", "check-config", config, env={"PYTHONPATH": str(REPO)}
    )
    assert_only_the_certificates_are_missing(result)
    # status, diag and export find the unit's data dir from the config alone
    from agent.commands._common import locate

    assert locate(config, None).data_dir == Path("/var/lib/roadside-agent")


def test_install_creates_a_signing_key_the_agent_can_load(tmp_path: Path) -> None:
    _install(tmp_path)
    key = tmp_path / ETC / "credentials" / "signing-key"
    assert key.stat().st_mode & 0o777 == 0o600
    integrity.load_key(key)


def test_reinstall_keeps_config_and_key(tmp_path: Path) -> None:
    _install(tmp_path)
    config = tmp_path / ETC / "station.toml"
    key = tmp_path / ETC / "credentials" / "signing-key"
    edited = config.read_text().replace('name = "Demo station (simulated)"', 'name = "G15 K123"')
    config.write_text(edited)
    key_bytes = key.read_bytes()
    tree = _tree(tmp_path)
    out = _install(tmp_path).stdout
    assert config.read_text() == edited
    assert key.read_bytes() == key_bytes
    assert _tree(tmp_path) == tree
    assert "kept /etc/roadside-agent/station.toml" in out


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real evidence: the demo station run until it stored two vehicles (no broker: unacked)."""
    state = tmp_path_factory.mktemp("state")
    result = _run(
        sys.executable,
        "-m",
        "agent",
        "run",
        "--config",
        DEMO,
        "--data-dir",
        state,
        "--max-vehicles",
        "2",
        env={"PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert (state / "station.db").is_file()
    return state


def _a_station_that_has_run(root: Path, evidence: Path) -> Path:
    state = root / STATE
    shutil.copytree(evidence, state, dirs_exist_ok=True)
    return state


def test_uninstall_keeps_evidence_config_and_keys(tmp_path: Path, evidence: Path) -> None:
    _install(tmp_path)
    state = _a_station_that_has_run(tmp_path, evidence)
    result = _run(UNINSTALL, "--root", tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "opt/roadside-agent").exists()
    assert not (tmp_path / "usr/local/bin/roadside-agent").is_symlink()
    assert not (tmp_path / "etc/systemd/system/roadside-agent.service").exists()
    assert not (
        tmp_path / "etc/systemd/system/multi-user.target.wants/roadside-agent.service"
    ).exists()
    assert (state / "station.db").is_file()
    assert (tmp_path / ETC / "station.toml").is_file()
    assert (tmp_path / ETC / "credentials" / "signing-key").is_file()
    assert "kept the evidence" in result.stdout


def test_purge_refuses_while_records_wait_for_the_platform(tmp_path: Path, evidence: Path) -> None:
    _install(tmp_path)
    state = _a_station_that_has_run(tmp_path, evidence)
    result = _run(UNINSTALL, "--root", tmp_path, "--purge", "--python", sys.executable)
    assert result.returncode == 1
    assert "not acknowledged" in result.stderr
    assert (state / "station.db").is_file()
    assert (tmp_path / "opt/roadside-agent").exists()  # nothing removed on refusal


def test_purge_with_force_removes_everything_it_installed(tmp_path: Path, evidence: Path) -> None:
    _install(tmp_path)
    _a_station_that_has_run(tmp_path, evidence)
    result = _run(UNINSTALL, "--root", tmp_path, "--purge", "--force", "--python", sys.executable)
    assert result.returncode == 0, result.stderr
    leftover = {p for p in _tree(tmp_path) if not (tmp_path / p).is_dir()}
    assert leftover == set()


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("ROADSIDE_SKIP_REAL_INSTALL") == "1",
    reason="builds a real virtualenv with pip from PyPI (ROADSIDE_SKIP_REAL_INSTALL=1 set)",
)
def test_real_virtualenv_install_runs_from_its_final_path(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\0")
    root = tmp_path / "root"
    result = _run(
        INSTALL,
        "--root",
        root,
        "--extras",
        "",
        env={"ROADSIDE_DEVICE_TREE_MODEL": str(model)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    venv = root / "opt/roadside-agent/venv"
    # a Pi gets the OS's picamera2 through the system site-packages
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    script = (venv / "bin" / "roadside-agent").read_text()
    assert script.startswith("#!/opt/roadside-agent/venv/bin/python")
    for f in (venv / "bin").iterdir():
        if f.is_file() and not f.is_symlink():
            assert str(root) not in f.read_text(errors="replace"), f
    ran = _run(venv / "bin" / "python", "-m", "agent", "check-config", root / ETC / "station.toml")
    assert_only_the_certificates_are_missing(ran)
