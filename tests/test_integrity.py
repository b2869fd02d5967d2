"""Sealing: canonical JSON, the chain, Ed25519 signatures, keys and keygen."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.store import integrity
from agent.store.evidence import EvidenceConfig
from agent.store.keys import load_signer, signing_key_path
from tests.crash_writer import CTX, make_event, make_verdict, open_store
from tests.crash_writer import cli as main

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_canonical_json_is_stable_and_compact(value: object) -> None:
    data = integrity.canonical_json(value)
    assert integrity.canonical_json(json.loads(data)) == data
    assert b", " not in data or ", " in json.dumps(value)  # only inside strings


def test_canonical_json_sorts_keys_and_keeps_utf8() -> None:
    assert integrity.canonical_json({"b": 1, "a": "苏L"}) == '{"a":"苏L","b":1}'.encode()


def test_seal_verifies_and_detects_each_change(tmp_path: Path) -> None:
    signer = integrity.Signer(integrity.generate_key(tmp_path / "k"))
    body = integrity.canonical_json({"gross_kg": 60100})
    seal = signer.seal(integrity.GENESIS, body)
    assert integrity.verify_seal(signer.public_key, integrity.GENESIS, body, seal) is None
    other = integrity.canonical_json({"gross_kg": 60101})
    assert "altered" in (
        integrity.verify_seal(signer.public_key, integrity.GENESIS, other, seal) or ""
    )
    assert "chain" in (integrity.verify_seal(signer.public_key, "1" * 64, body, seal) or "")
    forged = {**seal, "signature": signer.seal("2" * 64, body)["signature"]}
    assert "signature" in (
        integrity.verify_seal(signer.public_key, integrity.GENESIS, body, forged) or ""
    )


def test_records_chain_to_each_other(tmp_path: Path) -> None:
    _db, store = open_store(tmp_path)
    a = store.commit(make_event(1), make_verdict(), CTX).record
    b = store.commit(make_event(2), make_verdict(), CTX).record
    assert a["integrity"]["prev_hash"] == integrity.GENESIS
    assert b["integrity"]["prev_hash"] == a["integrity"]["hash"]
    assert b["integrity"]["key_id"] == store.signer.key_id
    assert b["seq"] == a["seq"] + 1
    assert {i["sha256"] for i in b["images"]} and all(len(i["sha256"]) == 64 for i in b["images"])


def test_keygen_writes_0600_key_and_prints_public_key(tmp_path: Path, capsys) -> None:
    assert main(["keygen", "--data-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    key = tmp_path / "keys" / "station.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.stat().st_uid == tmp_path.stat().st_uid
    assert out["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    signer = load_signer(EvidenceConfig(), tmp_path)
    assert signer.key_id == out["key_id"]
    assert (tmp_path / "keys" / "station.pub").read_text() == out["public_key_pem"]


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path, capsys) -> None:
    assert main(["keygen", "--data-dir", str(tmp_path)]) == 0
    before = (tmp_path / "keys" / "station.key").read_bytes()
    assert main(["keygen", "--data-dir", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "keys" / "station.key").read_bytes() == before
    assert main(["keygen", "--data-dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "keys" / "station.key").read_bytes() != before
    assert len(list((tmp_path / "keys").glob("*.pub"))) == 2  # the old one is kept


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_keygen_owner_is_the_service_user(tmp_path: Path, capsys) -> None:
    assert main(["keygen", "--data-dir", str(tmp_path), "--owner", "nobody"]) == 0
    import pwd

    assert (tmp_path / "keys" / "station.key").stat().st_uid == pwd.getpwnam("nobody").pw_uid


def test_key_path_prefers_config_then_systemd_credential(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert signing_key_path(EvidenceConfig(), tmp_path) == tmp_path / "keys" / "station.key"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "signing-key").write_bytes(b"x")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert signing_key_path(EvidenceConfig(), tmp_path) == creds / "signing-key"
    cfg = EvidenceConfig(signing_key=str(tmp_path / "k.pem"))
    assert signing_key_path(cfg, tmp_path) == tmp_path / "k.pem"


def test_load_signer_without_key_fails_unless_asked_to_create(tmp_path: Path) -> None:
    with pytest.raises(integrity.SigningKeyError):
        load_signer(EvidenceConfig(), tmp_path)
    signer = load_signer(EvidenceConfig(), tmp_path, create_if_missing=True)
    assert stat.S_IMODE((tmp_path / "keys" / "station.key").stat().st_mode) == 0o600
    assert integrity.load_public_keys(tmp_path / "keys").keys() == {signer.key_id}


def test_a_configured_key_that_is_missing_is_never_made_in_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a typo in [evidence] signing_key made a new key there (a WARNING), and the
    station signed with an identity the platform does not know."""
    missing = tmp_path / "credentials" / "signing-kye"
    cfg = EvidenceConfig(signing_key=str(missing))
    with pytest.raises(integrity.SigningKeyError, match=r"signing_key .* does not exist"):
        load_signer(cfg, tmp_path / "data", create_if_missing=True)
    assert not missing.exists()
    from agent.commands.run import start_failure_exit

    assert start_failure_exit(integrity.SigningKeyError("x")) == 78  # systemd does not loop
    demo = Path(__file__).resolve().parents[1] / "firmware_config" / "examples" / "demo.toml"
    config = tmp_path / "station.toml"
    config.write_text(
        demo.read_text(encoding="utf-8") + f'\n[evidence]\nsigning_key = "{missing}"\n',
        encoding="utf-8",
    )
    assert main(["check-config", str(config)]) == 78
    err = capsys.readouterr().err
    assert "evidence.signing_key" in err and "file not found" in err, err
    assert str(missing) not in err  # a secret key's value stays out of the message


def test_not_an_ed25519_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("hello")
    with pytest.raises(integrity.SigningKeyError, match="not a PEM private key"):
        integrity.load_key(tmp_path / "bad.pem")
