"""The evidence store's promises: durable, recoverable, never a half-written record."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.store.evidence import EvidenceError, EvidenceStore
from tests.crash_writer import CTX, make_event, make_verdict, open_store


def test_record_has_the_design_fields(tmp_path: Path) -> None:
    _db, store = open_store(tmp_path)
    record = store.commit(make_event(1), make_verdict(), CTX).record
    for key in ("schema", "event_id", "station_id", "lane", "seq", "measured_at", "clock",
                "vehicle", "plates", "verdict", "images", "device", "software", "integrity",
                "audit_counter"):  # fmt: skip
        assert key in record
    assert record["event_id"] == "JS-ZJ-0001-20261126103016-000001"
    assert store.get(record["event_id"]) == record


def test_recover_removes_temp_and_orphan_files_only(tmp_path: Path) -> None:
    _db, store = open_store(tmp_path)
    stored = store.commit(make_event(1), make_verdict(), CTX)
    day = tmp_path / "images" / "20261126"
    (day / ".JS-ZJ-0001-x.front.jpg.tmp").write_bytes(b"partial")
    (day / "JS-ZJ-0001-20261126103017-000002.front.jpg").write_bytes(b"never committed")
    assert store.recover() == 2
    kept = [p for _, _, p in store.image_files(stored.event_id)]
    assert all(p is not None and p.exists() for p in kept)
    assert sorted(p.name for p in day.iterdir()) == sorted(p.name for p in kept if p)


def test_failed_commit_leaves_no_files_and_no_seq_gap(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    store.commit(make_event(1), make_verdict(), CTX)
    with db.write() as conn:  # make the next INSERT fail inside the transaction
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
    with pytest.raises(EvidenceError, match="boom"):
        store.commit(make_event(2), make_verdict(), CTX)
    files = sorted(p.name for p in (tmp_path / "images").rglob("*") if p.is_file())
    assert all("000001" in f for f in files)
    with db.write() as conn:
        conn.execute("DROP TRIGGER boom")
    assert store.commit(make_event(3), make_verdict(), CTX).seq == 2


def test_store_reopens_and_continues_the_chain(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    first = store.commit(make_event(1), make_verdict(), CTX).record
    db.close()
    db2, store2 = open_store(tmp_path)
    assert isinstance(store2, EvidenceStore)
    second = store2.commit(make_event(2), make_verdict(), CTX).record
    assert second["seq"] == 2
    assert second["integrity"]["prev_hash"] == first["integrity"]["hash"]
    assert db2.read().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db2._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_unsynchronised_clock_is_in_the_record(tmp_path: Path) -> None:
    _db, store = open_store(tmp_path)
    ctx = CTX.__class__(**{**CTX.__dict__, "clock_synchronized": False})
    assert store.commit(make_event(1), make_verdict(), ctx).record["clock"] == {
        "synchronized": False
    }


def test_readonly_verify_connection_cannot_write(tmp_path: Path) -> None:
    from agent.store.readonly import open_readonly

    open_store(tmp_path)
    conn = open_readonly(tmp_path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM records")
