"""Incremental ``verify``: a signed checkpoint of the verified chain, only what is new by default,
``--full`` for everything, a tampered checkpoint found, flat memory in the number of records."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from agent.commands.verify import verify_data_dir
from agent.store import checkpoint
from agent.store import verify as store_verify
from agent.store.db import Database
from agent.store.evidence import EvidenceConfig, EvidenceStore
from agent.store.keys import verification_keys
from agent.store.readonly import open_readonly
from agent.store.retention import Retention
from drivers.clock import ManualClock
from tests.crash_writer import CTX, T0, make_event, make_verdict, open_store
from tests.crash_writer import cli as main

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def station(tmp_path: Path) -> tuple[Path, Database, EvidenceStore, list[str]]:
    db, store = open_store(tmp_path)
    ids = [store.commit(make_event(n), make_verdict(), CTX).event_id for n in range(5)]
    return tmp_path, db, store, ids


def run_verify(data_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["verify", "--data-dir", str(data_dir), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def raw(data_dir: Path) -> sqlite3.Connection:
    """What someone with shell access could do to the database file."""
    return sqlite3.connect(data_dir / "station.db", isolation_level=None)


def add(store: EvidenceStore, first: int, n: int) -> list[str]:
    return [
        store.commit(make_event(k, at=T0 + timedelta(minutes=k)), make_verdict(), CTX).event_id
        for k in range(first, first + n)
    ]


def test_a_clean_verify_seals_a_checkpoint_and_the_next_checks_only_new_records(
    station, capsys
) -> None:
    data_dir, _db, store, ids = station
    code, out = run_verify(data_dir, capsys)
    assert code == 0, out["problems"]
    assert (out["mode"], out["records"], out["images"], out["checkpoint"]) == ("full", 5, 10, None)
    cp = out["checkpoint_written"]
    last = store.get(ids[-1])
    assert last is not None
    assert (cp["schema"], cp["seq"], cp["hash"]) == (
        "roadside.verify-checkpoint.v1",
        5,
        last["integrity"]["hash"],
    )
    assert (cp["records"], cp["images"], cp["station_id"], cp["key_id"]) == (
        5,
        10,
        CTX.station_id,
        store.signer.key_id,
    )
    assert cp["software_version"] and cp["verified_at"] == cp["full_verified_at"]
    assert out["records_per_s"] > 0

    code, out = run_verify(data_dir, capsys)  # nothing new
    assert code == 0 and (out["mode"], out["records"], out["checked_from_seq"]) == (
        "incremental",
        0,
        5,
    )
    add(store, 10, 3)
    code, out = run_verify(data_dir, capsys)
    assert code == 0, out["problems"]
    assert (out["mode"], out["records"], out["images"], out["last_seq"]) == (
        "incremental",
        3,
        6,
        8,
    )
    cp = out["checkpoint_written"]
    assert (cp["seq"], cp["records"], cp["images"], cp["full_seq"]) == (8, 8, 16, 5)
    code, out = run_verify(data_dir, capsys, "--full")
    assert code == 0 and (out["mode"], out["records"]) == ("full", 8)
    assert out["checkpoint_written"]["full_seq"] == 8


def test_an_empty_store_verifies_again_from_its_checkpoint(tmp_path: Path, capsys) -> None:
    db, store = open_store(tmp_path)
    assert run_verify(tmp_path, capsys)[1]["checkpoint_written"]["seq"] == 0
    code, out = run_verify(tmp_path, capsys)
    assert code == 0 and out["mode"] == "incremental", out["problems"]
    add(store, 1, 1)
    code, out = run_verify(tmp_path, capsys)
    assert code == 0 and out["records"] == 1, out["problems"]
    db.close()


def test_a_database_from_before_the_checkpoint_gets_its_table_at_the_first_verify(
    station, capsys
) -> None:
    """The stores of every station today: no verify_checkpoint table, no migration row."""
    data_dir, *_ = station
    conn = raw(data_dir)
    assert (
        conn.execute("SELECT name FROM sqlite_master WHERE name = 'verify_checkpoint'").fetchall()
        == []
    )
    code, out = run_verify(data_dir, capsys)
    assert code == 0 and out["checkpoint_written"]["seq"] == 5
    rows = conn.execute("SELECT name FROM migrations WHERE component = 'checkpoint'").fetchall()
    assert rows == [("0001-verify-checkpoint",)]


def test_a_new_record_altered_after_the_checkpoint_is_found_by_the_incremental_check(
    station, capsys
) -> None:
    data_dir, _db, store, _ids = station
    assert run_verify(data_dir, capsys)[0] == 0
    new = add(store, 10, 2)
    conn = raw(data_dir)
    (text,) = conn.execute(
        "SELECT record_json FROM records WHERE event_id = ?", (new[1],)
    ).fetchone()
    conn.execute(
        "UPDATE records SET record_json = ? WHERE event_id = ?",
        (text.replace('"gross_kg":60100', '"gross_kg":50100', 1), new[1]),
    )
    code, out = run_verify(data_dir, capsys)
    assert code == 1 and out["mode"] == "incremental"
    assert out["first_broken"] == new[1]
    assert out["checkpoint_written"] is None and "found problems" in out["checkpoint_note"]


def test_the_link_from_the_checkpoint_into_the_new_records_is_checked(station, capsys) -> None:
    """The first record after the checkpoint deleted: the next one no longer links to it."""
    data_dir, _db, store, _ids = station
    assert run_verify(data_dir, capsys)[0] == 0
    new = add(store, 10, 2)
    conn = raw(data_dir)
    conn.execute("DELETE FROM images WHERE event_id = ?", (new[0],))
    conn.execute("DELETE FROM records WHERE event_id = ?", (new[0],))
    code, out = run_verify(data_dir, capsys)
    assert code == 1 and out["mode"] == "incremental"
    assert out["first_broken"] == new[1]
    assert any("chain broken" in p["problem"] for p in out["problems"])
    assert any("seq 6..6 missing" in p["problem"] for p in out["problems"])


def test_an_old_record_altered_before_the_checkpoint_is_found_only_by_full(station, capsys) -> None:
    """The documented limit of the incremental check (docs/evidence.md, verify --help)."""
    data_dir, _db, store, ids = station
    assert run_verify(data_dir, capsys)[0] == 0
    _name, _sha, path = store.image_files(ids[1])[0]
    assert path is not None
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = run_verify(data_dir, capsys)
    assert code == 0 and out["mode"] == "incremental"
    code, out = run_verify(data_dir, capsys, "--full")
    assert code == 1 and out["first_broken"] == ids[1]
    assert out["checkpoint_written"] is None


def _checkpoint_row(data_dir: Path) -> dict:  # type: ignore[type-arg]
    conn = open_readonly(data_dir)
    try:
        row = checkpoint.read(conn)
    finally:
        conn.close()
    assert row is not None
    return row


def _tamper_seq_column(conn: sqlite3.Connection, data_dir: Path) -> None:
    conn.execute("UPDATE verify_checkpoint SET seq = 3")


def _tamper_body(conn: sqlite3.Connection, data_dir: Path) -> None:
    body = json.loads(_checkpoint_row(data_dir)["body"])
    body["records"] = 999
    conn.execute("UPDATE verify_checkpoint SET body = ?", (json.dumps(body),))


def _tamper_signature(conn: sqlite3.Connection, data_dir: Path) -> None:
    sig = _checkpoint_row(data_dir)["signature"]
    conn.execute(
        "UPDATE verify_checkpoint SET signature = ?", (("A" if sig[0] != "A" else "B") + sig[1:],)
    )


def _replace_the_checkpoint_record(conn: sqlite3.Connection, data_dir: Path) -> None:
    """The record at the checkpoint's seq replaced by another one (hash column and all)."""
    (text, hash_) = conn.execute("SELECT record_json, hash FROM records WHERE seq = 4").fetchone()
    conn.execute("UPDATE records SET hash = ?, record_json = ? WHERE seq = 5", (hash_, text))


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (_tamper_seq_column, "differ from its signed body"),
        (_tamper_body, "checkpoint seal invalid"),
        (_tamper_signature, "checkpoint seal invalid"),
        (_replace_the_checkpoint_record, "not the hash of seq 5"),
    ],
)
def test_a_tampered_checkpoint_is_named_and_the_whole_chain_checked(
    station, capsys, tamper, says
) -> None:
    data_dir, *_ = station
    assert run_verify(data_dir, capsys)[0] == 0
    conn = raw(data_dir)
    tamper(conn, data_dir)
    code, out = run_verify(data_dir, capsys)
    assert code == 1 and out["mode"] == "full"
    found = [p["problem"] for p in out["problems"] if p["where"] == "checkpoint"]
    assert found and says in found[0], out["problems"]
    assert out["checkpoint_written"] is None
    assert out["checkpoint"]["holds"] is False


def test_a_broken_checkpoint_stays_reported_until_a_full_check_replaces_it(station, capsys) -> None:
    data_dir, *_ = station
    assert run_verify(data_dir, capsys)[0] == 0
    _tamper_body(raw(data_dir), data_dir)
    for _ in range(2):  # not silently healed by the next default run
        code, out = run_verify(data_dir, capsys)
        assert code == 1 and "run verify --full" in out["checkpoint_note"]
    code, out = run_verify(data_dir, capsys, "--full")
    assert code == 1  # reported once more, with the whole chain checked ...
    assert out["checkpoint_written"]["seq"] == 5  # ... and replaced: the chain held
    code, out = run_verify(data_dir, capsys)
    assert code == 0 and out["mode"] == "incremental"


def test_a_checkpoint_forged_with_a_wrong_hash_is_named(station, capsys) -> None:
    """Even sealed with the station key, a checkpoint must name the record's real hash."""
    data_dir, db, store, _ids = station
    assert run_verify(data_dir, capsys)[0] == 0
    cp = checkpoint.check(_checkpoint_row(data_dir), verification_keys(data_dir))[0]
    assert cp is not None
    with db.write() as conn:
        checkpoint.seal(
            conn, store.signer, checkpoint.Checkpoint(**{**cp.__dict__, "hash": "1" * 64})
        )
    code, out = run_verify(data_dir, capsys)
    assert code == 1 and out["mode"] == "full"
    assert any("not the hash of seq 5" in p["problem"] for p in out["problems"])


def test_the_checkpoint_still_holds_when_its_record_is_pruned_to_a_tombstone(
    tmp_path: Path, capsys
) -> None:
    """Retention turns delivered passages into tombstones; the checkpoint's link stays."""
    from agent.domain import VerdictStatus
    from tests.test_retention import FakeDisk, ack

    db, store = open_store(tmp_path)
    try:
        passage = make_verdict(VerdictStatus.WITHIN_LIMIT)
        ids = [store.commit(make_event(n), passage, CTX).event_id for n in range(3)]
        assert run_verify(tmp_path, capsys)[0] == 0
        store.commit(make_event(9), passage, CTX)
        ack(db, *ids)
        config = EvidenceConfig(disk_budget_mb=0, min_free_mb=10**6, reserve_free_mb=0)
        Retention(
            db, store, config, ManualClock(T0), station_id=CTX.station_id,
            disk_usage=FakeDisk(10**9),
        ).check()  # fmt: skip
        pruned = raw(tmp_path).execute("SELECT seq FROM records_pruned").fetchall()
        assert (3,) in pruned, pruned
        code, out = run_verify(tmp_path, capsys)
        assert code == 0, out["problems"]
        assert (out["mode"], out["checked_from_seq"], out["records"]) == ("incremental", 3, 1)
    finally:
        db.close()


def test_a_copied_store_without_the_private_key_verifies_and_says_why_no_checkpoint(
    station, capsys, tmp_path_factory
) -> None:
    data_dir, db, *_ = station
    db.close()
    copy = tmp_path_factory.mktemp("copy")
    shutil.copy(data_dir / "station.db", copy / "station.db")
    shutil.copytree(data_dir / "images", copy / "images")
    (copy / "keys").mkdir()
    shutil.copy(data_dir / "keys" / "station.pub", copy / "keys" / "station.pub")
    code, out = run_verify(copy, capsys)
    assert code == 0, out["problems"]
    assert out["checkpoint_written"] is None
    assert "cannot sign it" in out["checkpoint_note"]
    assert checkpoint.read(sqlite3.connect(copy / "station.db")) is None
    main(["verify", "--data-dir", str(data_dir), "--no-checkpoint"])
    assert "--no-checkpoint" in capsys.readouterr().out
    assert checkpoint.read(sqlite3.connect(data_dir / "station.db")) is None


def test_no_checkpoint_after_a_check_without_photos(station, capsys) -> None:
    data_dir, *_ = station
    code, out = run_verify(data_dir, capsys, "--no-images")
    assert (
        code == 0 and out["checkpoint_written"] is None and "--no-images" in out["checkpoint_note"]
    )


def test_a_full_check_older_than_a_week_is_recommended(station, capsys) -> None:
    data_dir, *_ = station
    now = datetime.now().astimezone()
    assert verify_data_dir(data_dir, now=lambda: now)["full_check_due"] is False
    later = now + timedelta(days=8)
    out = verify_data_dir(data_dir, full=False, now=lambda: later)
    assert out["mode"] == "incremental" and out["full_check_due"] is True
    assert out["checkpoint_written"]["full_verified_at"] == out["checkpoint"]["full_verified_at"]
    assert main(["verify", "--data-dir", str(data_dir)]) == 0
    text = capsys.readouterr().out
    assert "checked the links after seq 5" in text and "records/s" in text
    assert verify_data_dir(data_dir, full=True, now=lambda: later)["full_check_due"] is False


def test_verify_help_says_old_records_need_full(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--full" in text and "only by --full" in text and "weekly" in text


def test_the_walk_reads_the_chain_by_seq_range_without_a_scan(station) -> None:
    _data_dir, db, *_ = station
    conn = db.read()
    sql = f"EXPLAIN QUERY PLAN {store_verify._CHAIN_SQL} LIMIT :n"
    plan = [r[3] for r in conn.execute(sql, {"lo": 1, "hi": 5, "n": 10})]
    assert not [p for p in plan if p.startswith("SCAN") or "TEMP B-TREE" in p], plan
    images = [
        r[3]
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM images WHERE event_id IN (?, ?)", ("a", "b")
        )
    ]
    assert not [p for p in images if p.startswith("SCAN")], images
    orphans = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {store_verify.ORPHAN_IMAGES_SQL}")]
    assert not [p for p in orphans if "TEMP B-TREE" in p], orphans


def test_batches_keep_a_seq_stored_twice(station, monkeypatch, capsys) -> None:
    """A tombstone forged beside a kept record of the same seq, right at a batch boundary."""
    data_dir, *_ = station
    conn = raw(data_dir)
    conn.execute(
        "INSERT INTO records_pruned (seq, event_id, measured_at, status, prev_hash, hash,"
        " signature, key_id, pruned_at, reason) VALUES (3, 'x', 't', 'within_limit', '', '',"
        " '', '', 't', 'forged')"
    )
    monkeypatch.setattr(store_verify, "BATCH_RECORDS", 3)
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert any("seq 3 used twice" in p["problem"] for p in out["problems"]), out["problems"]


def _peak_bytes(data_dir: Path) -> int:
    conn = open_readonly(data_dir)
    keys = verification_keys(data_dir)
    try:
        store_verify.verify_store(conn, data_dir, keys, check_images=False)  # warm up imports
        tracemalloc.start()
        report = store_verify.verify_store(conn, data_dir, keys, check_images=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        conn.close()
    assert report.problems == []
    return peak


def test_memory_is_flat_in_the_number_of_records(tmp_path: Path, monkeypatch) -> None:
    """Peak Python memory of a full walk at 100 and at 400 records (small batches, so both
    stores are many batches long; photos not hashed, so the 1 MiB read buffer of the file
    hash does not hide the rest): within a quarter, where the dict of every image row it
    replaced grew with the store (121 kB -> 383 kB here)."""
    monkeypatch.setattr(store_verify, "BATCH_RECORDS", 16, raising=False)
    db, store = open_store(tmp_path)
    try:
        for n in range(100):
            store.commit(make_event(n, images=1), make_verdict(), CTX)
        small = _peak_bytes(tmp_path)
        for n in range(100, 400):
            store.commit(make_event(n, images=1), make_verdict(), CTX)
        big = _peak_bytes(tmp_path)
    finally:
        db.close()
    assert big < small * 1.25, (small, big)
