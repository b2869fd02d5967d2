"""``roadside-agent verify``: holds on good evidence, names the first broken record otherwise."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from agent.domain import VerdictStatus
from agent.store.audit import AuditLog
from agent.store.db import Database
from agent.store.evidence import EvidenceStore
from tests.crash_writer import CTX, T0, make_event, make_verdict, open_store
from tests.crash_writer import cli as main


@pytest.fixture
def station(tmp_path: Path) -> tuple[Path, Database, EvidenceStore, list[str]]:
    db, store = open_store(tmp_path)
    audit = AuditLog(db, store.signer)
    audit.reconcile({"limits": {"6_axle_kg": 49000}, "tolerance": {"pct": 5.0}}, T0)
    ids = []
    for n in range(5):
        ctx = CTX.__class__(**{**CTX.__dict__, "audit_counter": audit.counter()})
        status = VerdictStatus.OVERLOADED if n % 2 else VerdictStatus.WITHIN_LIMIT
        ids.append(store.commit(make_event(n), make_verdict(status), ctx).event_id)
    return tmp_path, db, store, ids


def run_verify(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["verify", "--data-dir", str(data_dir), "--json"])
    return code, json.loads(capsys.readouterr().out)


def raw(data_dir: Path) -> sqlite3.Connection:
    """What someone with shell access could do to the database file."""
    conn = sqlite3.connect(data_dir / "station.db", isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    return conn


def flip_byte(text: str, index: int) -> str:
    ch = text[index]
    return text[:index] + ("1" if ch != "1" else "2") + text[index + 1 :]


def test_verify_passes_on_good_evidence(station, capsys) -> None:
    data_dir, _db, _store, _ids = station
    code, out = run_verify(data_dir, capsys)
    assert code == 0, out
    assert out["records"] == 5
    assert out["first_broken"] is None
    assert out["problems"] == []
    assert out["images"] == 10
    assert out["audit_entries"] == 2


def test_text_output_says_ok(station, capsys) -> None:
    data_dir, *_ = station
    assert main(["verify", "--data-dir", str(data_dir)]) == 0
    assert "OK" in capsys.readouterr().out


def test_one_byte_in_a_record_is_named(station, capsys) -> None:
    data_dir, _db, _store, ids = station
    conn = raw(data_dir)
    (record_json,) = conn.execute(
        "SELECT record_json FROM records WHERE event_id = ?", (ids[2],)
    ).fetchone()
    i = record_json.index('"gross_kg":') + len('"gross_kg":')
    conn.execute(
        "UPDATE records SET record_json = ? WHERE event_id = ?", (flip_byte(record_json, i), ids[2])
    )
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert out["first_broken"] == ids[2]
    assert any(
        p["event_id"] == ids[2] and "content altered" in p["problem"] for p in out["problems"]
    )


def test_one_byte_in_an_image_is_named(station, capsys) -> None:
    data_dir, _db, store, ids = station
    _name, _sha, path = store.image_files(ids[3])[0]
    assert path is not None
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert out["first_broken"] == ids[3]
    assert any("altered" in p["problem"] for p in out["problems"])


def test_missing_and_truncated_images_are_named(station, capsys) -> None:
    data_dir, _db, store, ids = station
    store.image_files(ids[1])[0][2].unlink()  # type: ignore[union-attr]
    path = store.image_files(ids[4])[1][2]
    assert path is not None
    path.write_bytes(path.read_bytes()[:100])
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert out["first_broken"] == ids[1]
    problems = {p["event_id"]: p["problem"] for p in out["problems"]}
    assert "missing" in problems[ids[1]]
    assert "100 bytes" in problems[ids[4]]


def test_one_byte_in_the_audit_log_is_named(station, capsys) -> None:
    data_dir, *_ = station
    conn = raw(data_dir)
    (entry,) = conn.execute("SELECT entry_json FROM audit_log WHERE counter = 1").fetchone()
    conn.execute(
        "UPDATE audit_log SET entry_json = ? WHERE counter = 1",
        (entry.replace("49000", "59000"),),
    )
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert [p["counter"] for p in out["problems"] if p["where"] == "audit"] == [1]


def test_audit_log_refuses_updates_and_deletes(station) -> None:
    _data_dir, db, *_ = station
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), db.write() as conn:
        conn.execute("DELETE FROM audit_log")


def test_deleted_record_in_the_middle_breaks_the_chain(station, capsys) -> None:
    data_dir, _db, _store, ids = station
    conn = raw(data_dir)
    conn.execute("DELETE FROM images WHERE event_id = ?", (ids[1],))
    conn.execute("DELETE FROM records WHERE event_id = ?", (ids[1],))
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert out["first_broken"] == ids[2]
    assert "chain broken" in out["problems"][0]["problem"]


def test_deleted_last_record_is_detected_by_the_seq_counter(station, capsys) -> None:
    data_dir, _db, _store, ids = station
    conn = raw(data_dir)
    conn.execute("DELETE FROM images WHERE event_id = ?", (ids[4],))
    conn.execute("DELETE FROM records WHERE event_id = ?", (ids[4],))
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert any("missing" in p["problem"] for p in out["problems"] if p["where"] == "counter")


def test_changed_index_column_is_named(station, capsys) -> None:
    """The status column decides eviction; it must agree with the signed record."""
    data_dir, _db, _store, ids = station
    raw(data_dir).execute(
        "UPDATE records SET status = 'within_limit' WHERE event_id = ?", (ids[1],)
    )
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert out["first_broken"] == ids[1]
    assert "column status" in out["problems"][0]["problem"]


def test_record_signed_by_another_key_is_named(station, capsys, tmp_path_factory) -> None:
    data_dir, _db, _store, ids = station
    other_dir = tmp_path_factory.mktemp("other")
    _odb, other = open_store(other_dir)
    forged = other.commit(make_event(99, images=0), make_verdict(), CTX).record
    conn = raw(data_dir)
    conn.execute(
        "UPDATE records SET record_json = ? WHERE event_id = ?",
        (
            json.dumps(
                {
                    **json.loads(
                        conn.execute(
                            "SELECT record_json FROM records WHERE event_id = ?", (ids[0],)
                        ).fetchone()[0]
                    ),
                    "integrity": forged["integrity"],
                }
            ),
            ids[0],
        ),
    )
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert out["first_broken"] == ids[0]
    assert "no public key" in out["problems"][0]["problem"]


def test_records_survive_a_key_change(station, capsys) -> None:
    """keygen --force keeps the old public key; old and new records both verify."""
    data_dir, db, _store, _ids = station
    assert main(["keygen", "--data-dir", str(data_dir), "--force"]) == 0
    capsys.readouterr()
    db.close()
    _db2, store2 = open_store(data_dir)
    store2.commit(make_event(50, at=T0 + timedelta(hours=1)), make_verdict(), CTX)
    code, out = run_verify(data_dir, capsys)
    assert code == 0, out
    assert len(out["keys"]) == 2


def test_no_database_exits_66(tmp_path: Path, capsys) -> None:
    assert main(["verify", "--data-dir", str(tmp_path / "none")]) == 66
    assert "no station database" in capsys.readouterr().err


def test_data_dir_from_the_station_config(station, capsys, tmp_path_factory) -> None:
    """The demo config, validated by the station's own loader, names the data directory."""
    data_dir, *_ = station
    demo = Path(__file__).resolve().parent.parent / "firmware_config" / "examples" / "demo.toml"
    text = demo.read_text(encoding="utf-8").replace('"../../demo-data"', f'"{data_dir}"')
    cfg = tmp_path_factory.mktemp("cfg") / "station.toml"
    cfg.write_text(text.replace('"../../../shared/fixtures/plates/full"', f'"{demo.parent}"'))
    assert main(["verify", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 5


def test_data_dir_from_a_config_that_does_not_validate(station, capsys, tmp_path_factory) -> None:
    data_dir, *_ = station
    cfg = tmp_path_factory.mktemp("cfg") / "station.toml"
    cfg.write_text(f'[station]\nid = "JS-ZJ-0001"\ndata_dir = "{data_dir}"\n')
    assert main(["verify", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 5


def test_records_cut_off_the_end_with_the_counter_rewound_are_named(station, capsys) -> None:
    """Issue 17 point 9: the last two records deleted and the seq counter set back to match
    passed verify before the signed chain head."""
    data_dir, _db, _store, ids = station
    conn = raw(data_dir)
    for event_id in ids[3:]:
        conn.execute("DELETE FROM images WHERE event_id = ?", (event_id,))
        conn.execute("DELETE FROM records WHERE event_id = ?", (event_id,))
    conn.execute("UPDATE counters SET value = 3 WHERE name = 'seq'")
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    heads = [p["problem"] for p in out["problems"] if p["where"] == "head"]
    assert heads and "seq 5 but the chain ends at seq 3" in heads[0], out["problems"]


def test_the_signed_chain_head_names_the_last_record_and_resists_edits(station) -> None:
    from agent.store import chainhead

    _data_dir, db, store, ids = station
    head = chainhead.chain_head(db)
    last = store.get(ids[-1])
    assert last is not None
    assert (head["schema"], head["station_id"], head["seq"], head["hash"]) == (
        "roadside.chain-head.v1",
        CTX.station_id,
        5,
        last["integrity"]["hash"],
    )
    keys = {store.signer.key_id: store.signer.public_key}
    assert chainhead.signature_problem(head, keys) is None
    assert chainhead.signature_problem({**head, "seq": 3}, keys)  # a rewound head is caught
    assert chainhead.signature_problem({**head, "hash": ids[0]}, keys)


def test_head_rewritten_to_an_earlier_record_is_named(station, capsys) -> None:
    """Someone deletes the last records and copies an unsigned head over: the seal breaks."""
    data_dir, _db, store, ids = station
    conn = raw(data_dir)
    third = store.get(ids[2])
    assert third is not None
    for event_id in ids[3:]:
        conn.execute("DELETE FROM images WHERE event_id = ?", (event_id,))
        conn.execute("DELETE FROM records WHERE event_id = ?", (event_id,))
    conn.execute("UPDATE counters SET value = 3 WHERE name = 'seq'")
    conn.execute("UPDATE chain_head SET seq = 3, hash = ?", (third["integrity"]["hash"],))
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert any("chain head seal invalid" in p["problem"] for p in out["problems"])


def test_a_commit_after_a_cut_off_end_raises_an_alarm(station) -> None:
    data_dir, db, store, ids = station
    conn = raw(data_dir)
    conn.execute("DELETE FROM images WHERE event_id = ?", (ids[4],))
    conn.execute("DELETE FROM records WHERE event_id = ?", (ids[4],))
    conn.execute("UPDATE counters SET value = 4 WHERE name = 'seq'")
    store.commit(make_event(9), make_verdict(), CTX)
    kinds = [
        json.loads(r[0])["kind"]
        for r in db.read().execute("SELECT payload FROM outbox WHERE kind = 'alarm'")
    ]
    assert kinds == ["chain_head_mismatch"]


def test_an_old_database_gets_its_head_sealed_once_at_upgrade(tmp_path: Path, capsys) -> None:
    db, store = open_store(tmp_path)
    for n in range(3):
        store.commit(make_event(n), make_verdict(), CTX)
    with db.write() as conn:  # as a station before the chain head left it
        conn.execute("DROP TABLE chain_head")
        conn.execute("DELETE FROM migrations WHERE component = 'chainhead'")
    db.close()
    db, store = open_store(tmp_path)
    db.close()
    code, out = run_verify(tmp_path, capsys)
    assert code == 0, out["problems"]


def test_a_database_not_yet_upgraded_verifies_and_a_dropped_head_does_not(
    tmp_path: Path, capsys
) -> None:
    db, store = open_store(tmp_path)
    for n in range(2):
        store.commit(make_event(n), make_verdict(), CTX)
    db.close()
    conn = raw(tmp_path)
    conn.execute("DROP TABLE chain_head")  # someone hides the head, the migration row stays
    code, out = run_verify(tmp_path, capsys)
    assert code == 1 and any(p["where"] == "head" for p in out["problems"])
    conn.execute("DELETE FROM migrations WHERE component = 'chainhead'")  # as before upgrade
    code, out = run_verify(tmp_path, capsys)
    assert code == 0, out["problems"]
