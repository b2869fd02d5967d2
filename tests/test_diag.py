"""``roadside-agent diag``: one archive for the operations desk, never a secret in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.commands.diag import newest_images
from agent.config import (
    NOT_SECRET,
    SECRET_WORDS,
    config_fields,
    is_secret_key,
    looks_secret,
    redact_config,
    secret_fields,
)

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "firmware_config" / "examples" / "demo.toml"

SECRETS_TOML = """\
[uplink]
host = "mqtt.example.cn"  # the provincial broker
password = "hunter2" # from the platform
url = "mqtts://JS-ZJ-0001:s3cr3t-pw@broker.example.cn:8883"
tls = { key = "/etc/roadside-agent/credentials/mqtt-client-key", ca = "/etc/ca.pem" }
client_key_file = '/etc/roadside-agent/credentials/mqtt-client-key'
key_id = "5f3c9a"
token = \"\"\"first-line
second # inside the string
third\"\"\"
api_key = \"\"\"one-line-secret\"\"\"

[evidence]
signing_key = "/etc/roadside-agent/credentials/signing-key"

[[lanes]]
number = 1
[lanes.scale]
certificate = "JS-JL-2026-00123"
passwd = 12345
"""
SECRET_VALUES = [
    "hunter2",
    "s3cr3t-pw",
    "credentials/mqtt-client-key",
    "first-line",
    "inside the string",
    "third",
    "one-line-secret",
    "credentials/signing-key",
    "12345",
]


def test_redaction_removes_every_secret_and_keeps_the_rest() -> None:
    red = redact_config(SECRETS_TOML)
    for secret in SECRET_VALUES:
        assert secret not in red
    doc = tomllib.loads(red)  # still TOML
    assert doc["uplink"]["host"] == "mqtt.example.cn"
    assert doc["uplink"]["tls"]["ca"] == "/etc/ca.pem"
    assert doc["uplink"]["key_id"] == "5f3c9a"
    assert doc["uplink"]["url"] == "mqtts://JS-ZJ-0001:<redacted>@broker.example.cn:8883"
    assert doc["lanes"][0]["scale"]["certificate"] == "JS-JL-2026-00123"  # not a secret
    assert "# the provincial broker" in red
    # same line numbers as the original, so check-config's file:line messages still match
    assert len(red.splitlines()) == len(SECRETS_TOML.splitlines())
    assert red.splitlines()[12] == SECRETS_TOML.splitlines()[12] == "[evidence]"


_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=4, max_size=30
).filter(lambda v: v.strip() == v and "redacted" not in v)


@settings(max_examples=200, deadline=None)
@given(
    word=st.sampled_from(sorted(SECRET_WORDS)),
    prefix=st.sampled_from(["", "mqtt_", "client-", "tls."]),
    value=_value,
    inline=st.booleans(),
)
def test_any_secret_value_is_redacted_and_the_file_stays_toml(
    word: str, prefix: str, value: str, inline: bool
) -> None:
    lit = json.dumps(value)  # a TOML basic string
    line = f"t = {{ host = 'h', {prefix}{word} = {lit} }}" if inline else f"{prefix}{word} = {lit}"
    text = f"[uplink]\n{line}  # note\n"
    red = redact_config(text)
    table = tomllib.loads(red)["uplink"]
    if inline:
        table = table["t"]
    if prefix == "tls.":
        table = table["tls"]
    assert table[word if prefix == "tls." else prefix + word] == "<redacted>"


#: Fields that look secret and are redacted by their name, not yet by their mark.
NOT_MARKED_YET: set[str] = set()


def test_the_secret_fields_of_the_config_models_are_marked_and_redacted() -> None:
    assert {"password", "password_file", "key_file"} <= secret_fields()
    looking = {
        name for _, name, _ in config_fields() if looks_secret(name) and name not in NOT_SECRET
    }
    assert looking - secret_fields() == NOT_MARKED_YET, "mark them secret on their model"
    for name in secret_fields() | looking:
        assert is_secret_key(name)
    for name in ("host", "username", "ca_file", "cert_file", "certificate", "key_id"):
        assert not is_secret_key(name)
    assert not is_secret_key("platform_public_key")  # public: the desk may read it


def test_a_toml_escaped_key_does_not_slip_past_redaction() -> None:
    text = (
        "[uplink]\n"
        '"pass\\u0077ord" = "hunter2-escaped"\n'
        '"api\\u005Ftoken" = "tok-escaped"\n'
        't = { "pass\\u0077ord" = "inline-escaped" }\n'
        '[station]\nuplink."pass\\u0077ord" = "dotted-escaped"\n'
    )
    doc = tomllib.loads(text)
    assert doc["uplink"]["password"] == "hunter2-escaped"  # what TOML reads: a password
    red = redact_config(text)
    for secret in ("hunter2-escaped", "tok-escaped", "inline-escaped", "dotted-escaped"):
        assert secret not in red, red
    assert tomllib.loads(red)["uplink"]["password"] == "<redacted>"


# -- the archive ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def station_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir the demo station has written: database, images, status.json, keys."""
    d = tmp_path_factory.mktemp("data")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "agent", "run", "--config", str(DEMO)),
            *("--data-dir", str(d), "--max-vehicles", "3"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return d


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read()
        return out


def _diag(tmp_path: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["diag", "--json", "-o", str(tmp_path), *args]) == 0
    doc = json.loads(capsys.readouterr().out)
    return Path(doc["archive"])


def test_diag_collects_what_the_desk_needs(
    tmp_path: Path, station_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(station_data, data)
    (data / "diag").mkdir(exist_ok=True)
    (data / "diag" / "raw-wim-1.log").write_text("2026-11-26T10:30:15 02 2B 30 30 32 30\n")
    archive = _diag(
        tmp_path, "--config", str(DEMO), "--data-dir", str(data), "--images", "1", capsys=capsys
    )
    assert archive.name.startswith("roadside-diag-JS-ZJ-0001-")
    m = _members(archive)
    for name in (
        "MANIFEST.txt",
        "journal.txt",
        "unit.txt",
        "config/demo.toml.redacted",
        "config/sha256.txt",
        "config/check-config.txt",
        "credentials.txt",
        "status.json",
        "status-cli.json",
        "versions.txt",
        "pip-freeze.txt",
        "system.txt",
        "frames/diag/raw-wim-1.log",
    ):
        assert name in m, name
    assert b"02 2B 30 30 32 30" in m["frames/diag/raw-wim-1.log"]
    images = [n for n in m if n.startswith("images/")]
    newest = newest_images(data, 1)[0]
    assert images == [f"images/{newest.relative_to(data / 'images')}"]
    status = json.loads(m["status-cli.json"])
    # --max-vehicles 3 stops after the third; one already queued may still be stored
    assert sum(status["records"].values()) >= 3
    assert status["last_vehicles"][0]["event_id"] in images[0]  # the newest vehicle
    assert b"roadside-agent 0.1.0" in m["versions.txt"]
    assert b"OK" in m["config/check-config.txt"]
    # never the key, never the database
    assert not [n for n in m if "key" in n.split("/")[-1] or n.endswith(".db")]
    private_key = (data / "keys" / "station.key").read_bytes()
    assert not [n for n, body in m.items() if private_key in body or b"PRIVATE KEY" in body]


def test_diag_of_a_broken_station_still_gives_an_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "station.toml"
    config.write_text('[station]\nid = "JS-ZJ-0002"\n[uplink]\nhots = "x"\npassword = "hunter2"\n')
    archive = _diag(
        tmp_path, "--config", str(config), "--data-dir", str(tmp_path / "none"), capsys=capsys
    )
    m = _members(archive)
    assert b"hunter2" not in b"".join(m.values())
    check = m["config/check-config.txt"].decode()
    assert "uplink.hots" in check and "did you mean 'host'?" in check
    manifest = m["MANIFEST.txt"].decode()
    assert "problem(s), see config/check-config.txt" in manifest
    assert "no station database" in manifest


def test_diag_says_when_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["diag", "--config", str(DEMO), "-o", str(tmp_path / "no" / "such" / "x.tgz")])
    assert code == 1
    assert "cannot write" in capsys.readouterr().err


FAKE_DAEMON = """
import json, os, signal, sys, threading
data = sys.argv[2]
handles = sys.argv[3] == "handles"
dump = threading.Event()
if handles:
    signal.signal(signal.SIGUSR1, lambda *_: dump.set())
doc = {"pid": os.getpid(), "running": True}
if handles:
    doc["diag_dump_signal"] = "SIGUSR1"
with open(os.path.join(data, "status.json"), "w") as fh:
    json.dump(doc, fh)
print("ready", flush=True)
n = 0
while True:
    dump.wait()
    dump.clear()
    n += 1
    os.makedirs(os.path.join(data, "diag"), exist_ok=True)
    with open(os.path.join(data, "diag", "raw-wim-1.log"), "w") as fh:
        fh.write(f"dump {n}: 02 2B 30 30 32 30 30 30 32 31 42 03\\n")
    with open(os.path.join(data, "diag", "dump.json"), "w") as fh:
        json.dump({"dumps": n}, fh)
"""


def _fake_daemon(tmp_path: Path, handles: bool) -> subprocess.Popen[str]:
    """A process that behaves like the station for diag: status.json, and SIGUSR1 dumps."""
    script = tmp_path / "fake-roadside-agent.py"
    script.write_text(FAKE_DAEMON)
    data = tmp_path / "data"
    data.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), "run", str(data), "handles" if handles else "plain"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_diag_asks_a_running_daemon_for_current_raw_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = _fake_daemon(tmp_path, handles=True)
    try:
        archive = _diag(
            tmp_path, "--config", str(DEMO), "--data-dir", str(tmp_path / "data"), capsys=capsys
        )
    finally:
        proc.kill()
        proc.wait()
    m = _members(archive)
    assert m["frames/diag/raw-wim-1.log"].startswith(b"dump 1: 02 2B 30")
    assert "did not dump" not in m["MANIFEST.txt"].decode()


def test_diag_never_signals_a_daemon_that_did_not_ask_for_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGUSR1 kills a process without a handler: only announced daemons get it."""
    proc = _fake_daemon(tmp_path, handles=False)
    try:
        _diag(tmp_path, "--config", str(DEMO), "--data-dir", str(tmp_path / "data"), capsys=capsys)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
