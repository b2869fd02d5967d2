"""Retention: budget and watermark, eviction order by class, never the unsynced violations,
a full disk that refuses images before records, and recovery when space returns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from agent.commands.verify import verify_data_dir
from agent.domain import VerdictStatus
from agent.store.db import Database
from agent.store.evidence import (
    IMAGES_REFUSED,
    EvidenceConfig,
    EvidenceStore,
    requeue_kept_events,
)
from agent.store.retention import MB, DiskUsage, Retention
from drivers.clock import ManualClock
from tests.conftest import mount_tmpfs
from tests.crash_writer import CTX, T0, make_event, make_verdict, open_store

IMG = 300_000
OVER = VerdictStatus.OVERLOADED
OK = VerdictStatus.WITHIN_LIMIT
STATION = CTX.station_id


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class FakeDisk:
    """A disk of ``capacity`` bytes holding only the data directory."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    def __call__(self, path: Path) -> DiskUsage:
        used = du(path)
        return DiskUsage(self.capacity, used, max(0, self.capacity - used))


def ack(db: Database, *event_ids: str) -> None:
    """What the uplink does when the platform acknowledges records."""
    with db.write() as conn:
        conn.executemany(
            "UPDATE outbox SET acked_at = '2026-11-26T10:00:00.000+08:00'"
            " WHERE kind = 'event' AND ref = ?",
            [(e,) for e in event_ids],
        )


def commit(store: EvidenceStore, n: int, status: VerdictStatus, days_ago: float = 0) -> str:
    at = T0 - timedelta(days=days_ago) + timedelta(seconds=n)
    return store.commit(make_event(n, at=at, image_bytes=IMG), make_verdict(status), CTX).event_id


def alarms(db: Database) -> list[str]:
    rows = db.read().execute("SELECT payload FROM outbox WHERE kind = 'alarm' ORDER BY id")
    return [json.loads(r[0])["kind"] for r in rows]


@pytest.fixture
def station(tmp_path: Path) -> Iterator[tuple[Path, Database, EvidenceStore]]:
    db, store = open_store(tmp_path)
    yield tmp_path, db, store
    db.close()


def test_evicts_by_class_and_never_unsynced_violations(station) -> None:
    data_dir, db, store = station
    p1, p2 = commit(store, 1, OK, 30), commit(store, 2, OK, 20)
    p_unsynced = commit(store, 3, OK, 10)
    v_recent = commit(store, 4, OVER, 5)
    v_old = commit(store, 5, OVER, 400)
    v_unsynced_old = commit(store, 6, OVER, 500)
    ack(db, p1, p2, v_recent, v_old)
    config = EvidenceConfig(disk_budget_mb=1, min_free_mb=0, reserve_free_mb=0)
    retention = Retention(
        db, store, config, ManualClock(T0), station_id=STATION, disk_usage=FakeDisk(10**12)
    )

    report = retention.check()

    assert report.by_class == {"passage_images": 4, "passages": 2, "violations_past_retention": 3}
    kept = {r[0] for r in db.read().execute("SELECT event_id FROM records")}
    assert kept == {p_unsynced, v_recent, v_unsynced_old}
    assert all(p for _, _, p in store.image_files(v_unsynced_old))
    assert store.get(p1) is None
    stats = retention.stats()
    assert {k: stats[k] for k in ("evicted_images", "evicted_records", "evicted_bytes")} == {
        "evicted_images": 6,
        "evicted_records": 3,
        "evicted_bytes": report.evicted_bytes,
    }
    assert stats["freed_file_bytes"] == report.files_freed_bytes == 6 * IMG
    assert alarms(db) == ["disk_watermark", "disk_eviction"]
    result = verify_data_dir(data_dir)
    assert result["ok"], result["problems"]
    assert (result["records"], result["pruned"]) == (3, 3)


def test_evicts_only_as_much_as_needed_oldest_first(station) -> None:
    data_dir, db, store = station
    ids = [commit(store, n, OK) for n in range(4)]
    ack(db, *ids)
    db.checkpoint()  # the WAL of the commits is given back first: not what is short
    disk = FakeDisk(du(data_dir) + 2 * MB - 300_000)  # 300 KB short of the 2 MB watermark
    config = EvidenceConfig(min_free_mb=2, reserve_free_mb=0)
    report = Retention(
        db, store, config, ManualClock(T0), station_id=STATION, disk_usage=disk
    ).check()
    assert report.by_class == {"passage_images": 2}  # the oldest record's two photos suffice
    assert [p is None for _, _, p in store.image_files(ids[0])] == [True, True]
    assert [p is None for _, _, p in store.image_files(ids[1])] == [False, False]
    assert verify_data_dir(data_dir)["ok"]


def test_seq_and_chain_continue_after_the_last_record_is_pruned(station) -> None:
    data_dir, db, store = station
    last = commit(store, 1, OK)
    ack(db, last)
    config = EvidenceConfig(disk_budget_mb=0, min_free_mb=10**6, reserve_free_mb=0)
    Retention(
        db, store, config, ManualClock(T0), station_id=STATION, disk_usage=FakeDisk(10**9)
    ).check()
    assert db.read().execute("SELECT count(*) FROM records").fetchone()[0] == 0
    nxt = store.commit(make_event(2), make_verdict(), CTX)
    assert nxt.seq == 2
    tomb = db.read().execute("SELECT hash FROM records_pruned").fetchone()[0]
    assert nxt.record["integrity"]["prev_hash"] == tomb
    assert verify_data_dir(data_dir)["ok"]


def test_crash_between_eviction_commit_and_unlink_is_cleaned_at_start(station, monkeypatch) -> None:
    data_dir, db, store = station
    ids = [commit(store, n, OK) for n in range(2)]
    ack(db, *ids)
    monkeypatch.setattr(Retention, "_unlink", lambda self, paths: None)  # "crash" before unlink
    config = EvidenceConfig(disk_budget_mb=1, min_free_mb=0, reserve_free_mb=0)
    Retention(
        db, store, config, ManualClock(T0), station_id=STATION, disk_usage=FakeDisk(10**12)
    ).check()
    assert verify_data_dir(data_dir)["ok"]
    assert store.recover() == 2  # the evicted photos nobody deleted
    assert verify_data_dir(data_dir)["ok"]


def test_tampered_tombstone_is_named(station) -> None:
    data_dir, db, store = station
    ids = [commit(store, n, OK) for n in range(3)]
    ack(db, ids[0])
    config = EvidenceConfig(disk_budget_mb=1, min_free_mb=0, reserve_free_mb=0)
    Retention(
        db, store, config, ManualClock(T0), station_id=STATION, disk_usage=FakeDisk(10**12)
    ).check()
    with db.write() as conn:
        conn.execute("UPDATE records_pruned SET hash = ? WHERE event_id = ?", ("1" * 64, ids[0]))
    result = verify_data_dir(data_dir)
    assert result["first_broken"] == ids[0]


def test_full_disk_refuses_images_not_records_and_recovers(station) -> None:
    data_dir, db, store = station
    disk = FakeDisk(du(data_dir) + 100 * 1024)  # 100 KB left
    config = EvidenceConfig(min_free_mb=1, reserve_free_mb=1)
    clock = ManualClock(T0)
    retention = Retention(db, store, config, clock, station_id=STATION, disk_usage=disk)
    assert retention.check().images_allowed is False
    refused = store.commit(make_event(1, image_bytes=IMG), make_verdict(), CTX).record
    assert refused["images"] == [] and refused["storage_flags"] == [IMAGES_REFUSED]
    assert alarms(db) == ["disk_watermark", "disk_full"]
    disk.capacity += 10 * MB  # space returns
    assert retention.check().images_allowed is True
    again = store.commit(make_event(2, image_bytes=IMG), make_verdict(), CTX).record
    assert len(again["images"]) == 2 and "storage_flags" not in again
    assert verify_data_dir(data_dir)["ok"]


def test_enospc_while_writing_images_still_stores_the_record(station, monkeypatch) -> None:
    data_dir, _db, store = station
    from agent.store import files as store_files

    def full(files: list) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_files, "write_files_atomically", full)
    stored = store.commit(make_event(1, image_bytes=IMG), make_verdict(), CTX)
    assert stored.record["storage_flags"] == [IMAGES_REFUSED]
    assert verify_data_dir(data_dir)["ok"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path, "6m")


@pytest.mark.root
def test_station_keeps_running_on_a_small_real_filesystem(tmpfs: Path) -> None:
    """6 MB disk, 300 KB images, unsynced violations pile up: records never fail."""
    db, store = open_store(tmpfs)
    config = EvidenceConfig(min_free_mb=2, reserve_free_mb=1)
    clock = ManualClock(T0)
    retention = Retention(db, store, config, clock, station_id=STATION)
    violations = []
    for n in range(40):
        status = OVER if n % 2 else OK
        event_id = commit(store, n, status)
        if status is OK:
            ack(db, event_id)  # passages get delivered, violations stay unsynced
        else:
            violations.append(event_id)
        retention.check()
    refused = (
        db.read()
        .execute("SELECT count(*) FROM records WHERE record_json LIKE '%images_refused%'")
        .fetchone()[0]
    )
    assert refused > 0  # the disk ran below its reserve: records kept, their images refused
    live = db.read().execute("SELECT event_id FROM records").fetchall()
    assert set(violations) <= {r[0] for r in live}  # no violation was evicted
    # the platform catches up and a year passes: violations become evictable, images return
    ack(db, *violations)
    clock.advance(400 * 86400)
    report = retention.check()
    assert report.images_allowed is True
    assert len(commit(store, 99, OVER)) > 0
    assert store.get(commit(store, 100, OVER))["images"]  # type: ignore[index]
    result = verify_data_dir(tmpfs)
    assert result["ok"], result["problems"]
    db.close()


def test_resend_over_evicted_records_leaves_nothing_waiting_forever(station) -> None:
    """Issue 17 point 7: a resend range over evicted records re-queues only what is kept."""
    from agent.store import outbox

    _data_dir, db, store = station
    ids = [commit(store, n, OK) for n in range(4)]
    ack(db, *ids)
    config = EvidenceConfig(disk_budget_mb=0, min_free_mb=10**6, reserve_free_mb=0)
    Retention(
        db, store, config, ManualClock(T0), station_id=STATION, disk_usage=FakeDisk(10**9)
    ).check()  # everything delivered is evicted: four tombstones
    kept = commit(store, 9, OK)
    ack(db, kept)
    since, until = T0 - timedelta(hours=1), T0 + timedelta(hours=1)
    with db.write() as conn:
        requeued = requeue_kept_events(conn, since, until)  # what the resend command runs
        pruned = outbox.pruned_in_range(conn, since, until)
    assert (requeued, pruned) == (1, 4)
    waiting = (
        db.read()
        .execute("SELECT ref FROM outbox WHERE kind = 'event' AND acked_at IS NULL")
        .fetchall()
    )
    assert [r[0] for r in waiting] == [kept]  # the kept record, not the four tombstones


def _passages_without_images(store: EvidenceStore, db: Database, n: int) -> list[str]:
    ids = [
        store.commit(
            make_event(i, images=0, axle_loads_kg=(7000,) * 6), make_verdict(OK), CTX
        ).event_id
        for i in range(n)
    ]
    ack(db, *ids)
    return ids


def test_eviction_gives_database_pages_back_and_counts_them(station) -> None:
    """Issue 17 point 3: pruning records shrinks the database file, and the report says by
    how much (before: 0.0 MB freed while the file kept its size)."""
    data_dir, db, store = station
    assert db.auto_vacuum() == 2  # a new database is incremental from its first table
    _passages_without_images(store, db, 600)
    db.checkpoint()
    before = db.file_bytes()
    config = EvidenceConfig(min_free_mb=10**6, reserve_free_mb=0, eviction_batch=200)
    retention = Retention(
        db, store, config, ManualClock(T0), station_id=STATION, disk_usage=FakeDisk(10**9)
    )
    report = retention.check()
    after = db.file_bytes()
    assert report.evicted_records == 600
    assert report.db_shrunk_bytes > 0
    assert after < before / 2, (before, after)
    assert before - after >= report.db_shrunk_bytes * 0.9
    assert retention.stats()["freed_db_bytes"] == report.db_shrunk_bytes
    assert verify_data_dir(data_dir)["ok"]


def test_an_existing_database_is_converted_to_incremental_vacuum_once(tmp_path: Path) -> None:
    """A station's database from before auto_vacuum: one VACUUM at start, records intact."""
    import sqlite3

    path = tmp_path / "station.db"
    old = sqlite3.connect(path)
    old.execute("PRAGMA auto_vacuum=0")
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE early (x)")  # created before this version: auto_vacuum stays 0
    old.close()
    db, store = open_store(tmp_path)
    assert db.auto_vacuum() == 0
    _passages_without_images(store, db, 50)
    assert db.enable_incremental_vacuum(free_bytes=0) is False  # no room: left as it was
    assert db.auto_vacuum() == 0
    assert db.enable_incremental_vacuum(free_bytes=10**12) is True
    assert db.auto_vacuum() == 2
    done = db.read().execute(
        "SELECT count(*) FROM migrations WHERE component = 'db'"
        " AND name = '0001-auto-vacuum-incremental'"
    )
    assert done.fetchone()[0] == 1
    assert db.enable_incremental_vacuum(free_bytes=0) is True  # already: nothing to do
    result = verify_data_dir(tmp_path)
    assert result["ok"] and result["records"] == 50, result["problems"]
    db.close()
