"""Every hot query of the evidence store reads an index, never the whole of a big table.

A store of a few thousand records (through the real schema, its triggers and ANALYZE, so the
planner chooses as on a station); each test runs the real function with SQLite's trace on and
asks EXPLAIN QUERY PLAN about every statement it ran: a ``SCAN`` of ``records``, ``images``,
``outbox`` or ``records_pruned`` (a full walk, with or without an index) fails it. One shape
is allowed: a statement without ``WHERE`` that ends ``ORDER BY … LIMIT n`` (the newest n records:
the walk stops after n rows), and a test below counts what that one reads.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.domain import VerdictStatus
from agent.store import readonly
from agent.store.db import Database
from agent.store.evidence import EvidenceConfig, EvidenceStore, requeue_kept_events
from agent.store.retention import Retention
from drivers.clock import ManualClock
from tests.crash_writer import CTX, T0, make_event, make_verdict, open_store

N = 4000
BIG = {"records", "images", "outbox", "records_pruned", "r", "i", "o"}
STATUSES = ["within_limit"] * 80 + ["overloaded"] * 10 + ["warning"] * 5
STATUSES += ["undetermined"] * 3 + ["exempt"] * 2


def _fill(db: Database, store: EvidenceStore) -> None:
    """N records after the real first one: its row shape, every status, 500 plates, four
    lanes, two photos each, delivered but for the newest 30 and every 500th."""
    first = store.commit(make_event(0), make_verdict(), CTX)
    body = json.dumps(first.record)
    with db.write() as conn:
        for seq in range(2, N + 2):
            at = (T0 + timedelta(seconds=10 * seq)).isoformat(timespec="milliseconds")
            event_id = f"{CTX.station_id}-{seq:014d}-{seq:06d}"
            status = STATUSES[seq % len(STATUSES)]
            conn.execute(
                "INSERT INTO records (seq, event_id, lane, measured_at, status, plate, gross_kg,"
                " record_json, hash) VALUES (?, ?, ?, ?, ?, ?, 30000, ?, ?)",
                (seq, event_id, seq % 4 + 1, at, status, f"苏L{seq % 500:05d}", body, "0" * 64),
            )
            conn.executemany(
                "INSERT INTO images (event_id, name, role, sha256, bytes, path)"
                " VALUES (?, ?, ?, ?, 1000, ?)",
                [(event_id, n, n[:-4], "0" * 64, f"images/x/{event_id}.{n}") for n in ("f.jpg",)],
            )
            acked = None if seq > N - 30 or seq % 500 == 0 else at
            conn.execute(
                "INSERT INTO outbox (kind, ref, priority, created_at, acked_at)"
                " VALUES ('event', ?, ?, ?, ?)",
                (event_id, 1 if status in ("overloaded", "warning") else 2, at, acked),
            )
        conn.execute("UPDATE counters SET value = ? WHERE name = 'seq'", (N + 1,))
        conn.execute("ANALYZE")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Database, EvidenceStore]]:
    data_dir = tmp_path_factory.mktemp("big")
    db, store = open_store(data_dir)
    _fill(db, store)
    yield data_dir, db, store
    db.close()


def _full_scans(conn: sqlite3.Connection, statements: list[str]) -> list[str]:
    """The statements whose plan walks a whole big table, with the plan line."""
    bad = []
    for sql in statements:
        head = sql.lstrip().split(None, 1)[0].upper()
        if head not in ("SELECT", "UPDATE", "DELETE", "INSERT", "WITH"):
            continue
        bounded = " WHERE " not in sql.upper() and re.search(r"ORDER BY [^()]* LIMIT \d+$", sql)
        for row in conn.execute("EXPLAIN QUERY PLAN " + sql):
            m = re.match(r"SCAN (\w+)", row[3])
            if m and m.group(1) in BIG and not bounded:
                bad.append(f"{row[3]}  <-  {sql}")
    return bad


def _traced(conns: list[sqlite3.Connection], fn: Callable[[], Any]) -> list[str]:
    statements: list[str] = []
    for c in conns:
        c.set_trace_callback(statements.append)
    try:
        fn()
    finally:
        for c in conns:
            c.set_trace_callback(None)
    return statements


def assert_no_full_scan(db: Database, fn: Callable[[], Any]) -> None:
    conns = [db._writer, db.read()]  # every statement of the store goes through these two
    statements = _traced(conns, fn)
    assert statements, "nothing was traced"
    assert _full_scans(db.read(), statements) == []


LAST = (T0 + timedelta(seconds=10 * N)).isoformat(timespec="milliseconds")
FILTERS = {
    "plate": readonly.EventFilter(plate="苏L00042"),
    "status overloaded": readonly.EventFilter(status="overloaded"),
    "status exempt": readonly.EventFilter(status="exempt"),
    "lane": readonly.EventFilter(lane=3),
    "since": readonly.EventFilter(since=LAST),
    "undelivered": readonly.EventFilter(undelivered=True),
    "undelivered + plate": readonly.EventFilter(undelivered=True, plate="苏L00042"),
    "status + lane + since": readonly.EventFilter(status="warning", lane=2, since=LAST),
}


@pytest.mark.parametrize("name", FILTERS)
def test_events_filters_read_an_index(big, name: str) -> None:
    _data_dir, db, _store = big
    flt = FILTERS[name]
    assert_no_full_scan(db, lambda: readonly.newest_events(db.read(), flt, 20))
    assert_no_full_scan(db, lambda: readonly.events_after(db.read(), flt, N - 50))


def test_status_reads_counts_and_the_newest_records_only(big) -> None:
    _data_dir, db, _store = big
    assert_no_full_scan(db, lambda: readonly.record_counts(db.read()))
    assert_no_full_scan(db, lambda: readonly.last_vehicles(db.read(), 10))
    assert_no_full_scan(db, lambda: readonly.vehicles_since(db.read(), LAST[:10]))


def test_resend_reads_the_time_range_only(big) -> None:
    _data_dir, db, _store = big

    def resend() -> None:
        with db.write() as conn:
            requeue_kept_events(conn, T0 + timedelta(hours=3), T0 + timedelta(hours=4))
            conn.execute("ROLLBACK")  # leave the store as it was
            conn.execute("BEGIN")

    assert_no_full_scan(db, resend)


EVICTIONS = ["_evict_passage_clips", "_evict_passage_images", "_evict_passages"]
EVICTIONS += ["_evict_old_violations"]


@pytest.mark.parametrize("evict", EVICTIONS)
def test_eviction_candidates_come_from_an_index(big, evict: str) -> None:
    _data_dir, db, store = big
    config = EvidenceConfig(eviction_batch=5, violation_retention_days=1)
    now = T0 + timedelta(days=2)
    retention = Retention(db, store, config, ManualClock(now), station_id=CTX.station_id)
    assert_no_full_scan(db, lambda: getattr(retention, evict)(now, 1))


def test_recover_reads_no_table_whole(big) -> None:
    data_dir, db, store = big
    day = data_dir / "images" / "20261126"
    day.mkdir(parents=True, exist_ok=True)
    (day / "stray.front.jpg").write_bytes(b"x")
    assert_no_full_scan(db, store.recover)


def _vm_steps(conn: sqlite3.Connection, fn: Callable[[], Any]) -> int:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 100)
    try:
        fn()
    finally:
        conn.set_progress_handler(None, 0)
    return steps * 100


def test_the_newest_records_unfiltered_read_only_the_newest(big) -> None:
    """The one walk allowed without an index: it stops after its LIMIT (SQLite's VM steps
    for 20 records are the same at a tenth of the store)."""
    _data_dir, db, _store = big
    conn = db.read()
    everything = readonly.EventFilter()
    newest = _vm_steps(conn, lambda: readonly.newest_events(conn, everything, 20))
    whole = _vm_steps(conn, lambda: readonly.events_after(conn, everything, 0))
    assert newest * 50 < whole  # 20 of 4 000 records


def test_a_full_scan_is_caught(big) -> None:
    """The check itself: a query without its index fails it."""
    _data_dir, db, _store = big
    statements = ["SELECT count(*) FROM records WHERE gross_kg > 10"]
    assert _full_scans(db.read(), statements)


def test_statuses_of_the_fixture(big) -> None:
    """The store holds every status (each filter above meets rows)."""
    _data_dir, db, _store = big
    assert set(readonly.record_counts(db.read())) == {s.value for s in VerdictStatus}


# -- what the indexes and counters must not change ----------------------------------------------


def _counted(db: Database) -> dict[str, int]:
    rows = db.read().execute("SELECT status, count(*) FROM records GROUP BY status")
    return {str(r[0]): int(r[1]) for r in rows}


def test_record_counts_stay_true_across_commit_tombstone_ack_and_resend(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    over, ok = VerdictStatus.OVERLOADED, VerdictStatus.WITHIN_LIMIT
    ids = [
        store.commit(make_event(n), make_verdict(over if n % 3 else ok), CTX).event_id
        for n in range(6)
    ]
    assert readonly.record_counts(db.read()) == _counted(db) == {"overloaded": 4, "within_limit": 2}
    with db.write() as conn:
        conn.executemany("UPDATE outbox SET acked_at = 'x' WHERE ref = ?", [(e,) for e in ids])
    config = EvidenceConfig(disk_budget_mb=0, min_free_mb=10**6, reserve_free_mb=0)
    far = ManualClock(T0 + timedelta(days=400))
    Retention(
        db, store, config, far, station_id=CTX.station_id, disk_usage=lambda p: DiskFree()
    ).check()
    assert _counted(db) == {}  # all delivered, all evicted
    assert readonly.record_counts(db.read()) == {}
    store.commit(make_event(9), make_verdict(ok), CTX)
    with db.write() as conn:
        requeue_kept_events(conn, T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert readonly.record_counts(db.read()) == _counted(db) == {"within_limit": 1}
    db.close()


class DiskFree:
    free = 0  # a full disk: retention evicts all it may


def test_an_old_store_is_upgraded_in_place(tmp_path: Path) -> None:
    """A store made by the schema before the indexes (evidence migrations 0001-0002) gets
    them, its counts, and one full photo sweep at its first start."""
    from agent.store import chainhead, evidence, outbox

    db, store = open_store(tmp_path / "new")
    rec = store.commit(make_event(1), make_verdict(), CTX)
    body = json.dumps(rec.record)
    db.close()
    old = Database(tmp_path / "old" / "station.db")
    old.migrate("evidence", evidence.MIGRATIONS[:2])
    old.migrate("outbox", outbox.MIGRATIONS)
    old.migrate("chainhead", chainhead.MIGRATIONS)
    with old.write() as conn:
        for seq, status in enumerate(["within_limit", "overloaded", "within_limit"], start=1):
            conn.execute(
                "INSERT INTO records (seq, event_id, lane, measured_at, status, plate, record_json,"
                " hash) VALUES (?, ?, 1, ?, ?, 'A', ?, '')",
                (seq, f"S-20250101000000-{seq:06d}", T0.isoformat(), status, body),
            )
    old.close()
    stray = tmp_path / "old" / "images" / "20250101" / "S-20250101000000-000002.front.jpg"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left by an eviction of the old version")
    db, store = open_store(tmp_path / "old")
    names = {r[0] for r in db.read().execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"records_plate", "records_status", "records_measured_jd", "records_passages"} <= names
    assert readonly.record_counts(db.read()) == {"within_limit": 2, "overloaded": 1}
    assert store.recover() == 1 and not stray.exists()  # the sweep of every folder, once
    db.close()


def test_recover_looks_at_the_newest_days_and_the_full_sweep_at_all(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    store.recover()  # a new store: its one sweep
    kept = store.commit(make_event(1), make_verdict(), CTX)
    day = tmp_path / "images" / T0.strftime("%Y%m%d")
    in_flight = day / f"{CTX.station_id}-{T0:%Y%m%d%H%M%S}-{kept.seq + 1:06d}.front.jpg"
    in_flight.write_bytes(b"renamed, never committed")
    (day / ".x.front.jpg.tmp").write_bytes(b"half")
    old_day = tmp_path / "images" / "20200101"
    old_day.mkdir()
    old_stray = old_day / "elsewhere.jpg"
    old_stray.write_bytes(b"a crash across a clock step")
    (tmp_path / "images" / "20200102").mkdir()
    (tmp_path / "images" / "20200103").mkdir()
    assert store.recover() == 2  # the newest day's two; 2020 is not looked at
    assert old_stray.exists() and not in_flight.exists()
    assert [p is not None and p.exists() for _, _, p in store.image_files(kept.event_id)] == [
        True,
        True,
    ]
    assert store.recover(full=True) == 1 and not old_stray.exists()
    db.close()


@pytest.mark.parametrize("step", [1, 2, 3, 256])
def test_undelivered_newest_first_whatever_the_priorities(
    tmp_path: Path, monkeypatch, step: int
) -> None:
    """The walk of the pending outbox rows merges violations and passages in record order."""
    monkeypatch.setattr(readonly, "UNDELIVERED_STEP", step)
    db, store = open_store(tmp_path)
    pattern = "VVPPPVPVVVPPPPPPVP"
    ids = []
    for n, kind in enumerate(pattern):
        status = VerdictStatus.OVERLOADED if kind == "V" else VerdictStatus.WITHIN_LIMIT
        ids.append(store.commit(make_event(n, images=0), make_verdict(status), CTX).event_id)
    with db.write() as conn:  # every third delivered
        conn.executemany("UPDATE outbox SET acked_at = 'x' WHERE ref = ?", [(e,) for e in ids[::3]])
    want = [e for n, e in enumerate(ids) if n % 3][::-1]
    for limit in (1, 4, 50):
        got = readonly.newest_events(db.read(), readonly.EventFilter(undelivered=True), limit)
        assert [r.event_id for r in got] == want[:limit]
    db.close()
