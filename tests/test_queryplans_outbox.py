"""The outbox's hot queries stay flat with a large backlog (issue 18): due() by ranges of the
pending index, the live violations by a bounded walk, acks, re-sends and re-arming by id or
by a partial index, the pending count from a counter. Each plan is checked on a store with
thousands of pending rows and ANALYZE statistics (the case where SQLite's choice used to flip
to walking every pending row), and an old-schema store is shown to upgrade in place."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from agent.store import evidence, outbox
from agent.store.db import Database
from agent.store.outbox import Priority
from tests.test_uplink_outbox import NOW

PENDING = 6000
ACKED = 4000


def _record(
    conn: sqlite3.Connection, event_id: str, body: str = "{}", at: str = NOW.isoformat()
) -> None:
    """A kept record row (what an event's outbox row names)."""
    conn.execute(
        "INSERT INTO records (event_id, lane, measured_at, status, record_json, hash)"
        " VALUES (?, 1, ?, 'within_limit', ?, '')",
        (event_id, at, body),
    )


def _store(path: Path, *, analyze: bool = True) -> Database:
    """A station with ACKED delivered and PENDING queued events (a tenth violations, some of
    them live), two photos each, plus a few alarms; statistics gathered when ``analyze``."""
    db = Database(path)
    db.migrate("evidence", evidence.MIGRATIONS)
    db.migrate("outbox", outbox.MIGRATIONS)
    total = ACKED + PENDING
    with db.write() as conn:
        for i in range(total):
            ref = f"E-{i:06d}"
            at = (NOW - timedelta(seconds=(total - i) * 0.2)).isoformat()  # 150 live violations
            _record(conn, ref, '{"x": 1}', at)
            conn.executemany(
                "INSERT INTO images (event_id, name, role, sha256, bytes, path)"
                " VALUES (?, ?, ?, '', 200000, 'p')",
                [(ref, "front.jpg", "front"), (ref, "rear.jpg", "rear")],
            )
            outbox.enqueue(
                conn,
                kind="event",
                ref=ref,
                priority=Priority.VIOLATION if i % 10 == 0 else Priority.PASSAGE,
                created_at=at,
                size_bytes=400_008,
            )
        for i in range(5):
            outbox.enqueue(
                conn, kind="alarm", ref=f"A-{i}", priority=Priority.ALARM,
                created_at=NOW.isoformat(), payload="{}",
            )  # fmt: skip
        outbox.mark_acked(conn, "event", [f"E-{i:06d}" for i in range(ACKED)], "t")
        # a sender's window: the oldest 300 pending rows sent and waiting for their ack
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM outbox WHERE acked_at IS NULL ORDER BY id LIMIT 300"
            )
        ]
        outbox.mark_attempts(conn, [(i, "t", 1000.0) for i in ids])
        if analyze:
            conn.execute("ANALYZE")
    return db


@pytest.fixture(scope="module", params=["no-statistics", "analyzed"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Database:
    """Stations never run ANALYZE (SQLite then guesses ~10 rows per ``acked_at IS NULL``,
    which is what made the plans flip); the analyzed store shows the plans hold with real
    statistics too."""
    return _store(tmp_path_factory.mktemp("plans") / "s.db", analyze=request.param == "analyzed")


def _statements(db: Database, run: Callable[[sqlite3.Connection], object]) -> list[str]:
    """The SQL ``run`` executes (parameters expanded), in a transaction rolled back after."""
    conn = sqlite3.connect(db.path, isolation_level=None)
    seen: list[str] = []
    try:
        conn.execute("BEGIN")
        conn.set_trace_callback(seen.append)
        run(conn)
        conn.set_trace_callback(None)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    # a trigger's run is traced again under its statement's text: each statement once
    return [s for s in dict.fromkeys(seen) if s.split()[0].upper() in ("SELECT", "UPDATE", "WITH")]


def _plans(db: Database, statements: list[str]) -> list[list[str]]:
    conn = sqlite3.connect(db.path)
    try:
        return [
            [str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")] for sql in statements
        ]
    finally:
        conn.close()


def _no_outbox_scan(plan: list[str]) -> None:
    scans = [
        line
        for line in plan
        if line.startswith("SCAN") and line.split()[1] in ("o", "outbox", "r", "records")
    ]
    assert not scans, "full scan of a hot table:\n" + "\n".join(plan)
    # the pending index bound by acked_at alone walks every unacknowledged row: the plan
    # SQLite flipped to from ~30 ids on (110 k pending: 13 ms; 1 M: 109 ms, every round)
    walks = [line for line in plan if "outbox_pending " in line and "priority=" not in line]
    assert not walks, "the pending index walked whole:\n" + "\n".join(plan)


def _pending_ids(db: Database, n: int) -> list[int]:
    rows = db.read().execute(
        "SELECT id FROM outbox WHERE acked_at IS NULL AND kind = 'event' ORDER BY id LIMIT ?", (n,)
    )
    return [r[0] for r in rows]


def test_due_is_one_query_of_index_ranges(store: Database) -> None:
    sql = _statements(
        store,
        lambda c: outbox.due(
            c, now_mono=0.0, live_since=NOW - timedelta(minutes=5), limit=256,
            max_bytes=8 * 1024 * 1024,
        ),
    )  # fmt: skip
    assert len(sql) == 2, sql  # ids and sizes; then the admitted records
    plans = _plans(store, sql)
    for plan in plans:
        _no_outbox_scan(plan)
    # alarms, live violations, old violations, passages: each a range of the pending index,
    # read in turn up to the limit (no sort that would read every class in full first)
    assert sum("outbox_pending (acked_at=? AND priority=?" in line for line in plans[0]) >= 4
    assert not any("TEMP B-TREE" in line for line in plans[0]), plans[0]


@pytest.mark.parametrize("n", [1, 40, 500])
def test_acks_and_deadlines_look_rows_up_by_id(store: Database, n: int) -> None:
    """The plan that used to flip from ~30 ids on (SQLite walked every pending row)."""
    ids = _pending_ids(store, n)
    marks = ",".join("?" * n)
    conn = store.read()
    refs = [r[0] for r in conn.execute(f"SELECT ref FROM outbox WHERE id IN ({marks})", ids)]

    def run(conn: sqlite3.Connection) -> None:
        outbox.mark_attempts(conn, [(i, "t", 5.0) for i in ids])
        outbox.mark_published(conn, ids, "t")
        outbox.retry_soon(conn, ids, 1.0)
        outbox.mark_acked(conn, "event", refs, "t")

    sql = _statements(store, run)
    assert len(sql) == 4, sql  # one statement each, however many rows
    for plan in _plans(store, sql):
        _no_outbox_scan(plan)


def test_rearming_deadlines_visits_only_the_armed_rows(store: Database) -> None:
    sql = _statements(store, outbox.reset_deadlines)
    assert len(sql) == 1
    plan = _plans(store, sql)[0]
    _no_outbox_scan(plan)
    assert any("outbox_armed" in line for line in plan), plan


def test_pending_count_reads_the_counter_not_the_rows(store: Database) -> None:
    sql = _statements(store, outbox.pending_summary)
    for plan in _plans(store, sql):
        _no_outbox_scan(plan)
    conn = store.read()
    count, oldest = outbox.pending_summary(conn)
    assert count == outbox.pending_count(conn) == PENDING + 5
    assert (
        oldest
        == conn.execute(
            "SELECT created_at FROM outbox WHERE acked_at IS NULL"
            " ORDER BY julianday(created_at) LIMIT 1"
        ).fetchone()[0]
    )


def test_due_admits_by_the_byte_window_and_reads_only_those(store: Database) -> None:
    conn = store.read()
    reads: list[str] = []
    conn.set_trace_callback(reads.append)
    try:
        rows = outbox.due(
            conn, now_mono=0.0, live_since=NOW - timedelta(minutes=5), limit=256,
            max_bytes=8 * 1024 * 1024,
        )  # fmt: skip
    finally:
        conn.set_trace_callback(None)
    # five alarms (2 bytes each), then 400 008-byte events until 8 MiB is reached: the event
    # that crosses it still goes, as the sender sends it
    events = [r for r in rows if r.kind == "event"]
    assert [r.kind for r in rows[:5]] == ["alarm"] * 5
    assert len(events) == 21  # 20 × 400 008 < 8 388 598 ≤ 21 × 400 008
    assert all(r.record_json == '{"x": 1}' and r.image_count == 2 for r in events)
    # the head query, then one look-up of the admitted records' JSON (not 256 rows' worth)
    assert len(reads) == 2
    assert reads[1].count("E-") == len(events)


def test_counter_follows_inserts_acks_requeues_and_deletes(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    db.migrate("evidence", evidence.MIGRATIONS)
    db.migrate("outbox", outbox.MIGRATIONS)

    def check(conn: sqlite3.Connection) -> None:
        real = conn.execute("SELECT count(*) FROM outbox WHERE acked_at IS NULL").fetchone()[0]
        assert outbox.pending_count(conn) == real

    with db.write() as conn:
        for i in range(10):
            _record(conn, f"e{i}")
            outbox.enqueue(
                conn, kind="event", ref=f"e{i}", priority=Priority(i % 3),
                created_at=NOW.isoformat(),
            )  # fmt: skip
        outbox.enqueue(conn, kind="event", ref="e0", priority=Priority.ALARM, created_at="x")
        check(conn)
        outbox.mark_acked(conn, "event", ["e1", "e2", "e3"], "t")
        outbox.mark_acked(conn, "event", ["e1"], "t")  # twice: counted once
        check(conn)
        outbox.requeue_events(conn, NOW - timedelta(days=1), NOW + timedelta(days=1))
        check(conn)
        conn.execute("UPDATE outbox SET priority = 0 WHERE ref = 'e4'")
        conn.execute("DELETE FROM outbox WHERE ref IN ('e5', 'e6')")
        check(conn)
    db.close()


def test_an_old_store_upgrades_in_place(tmp_path: Path) -> None:
    """A station whose outbox predates 0002 (no sizes, no counter) keeps its queue: the
    counter starts at the real count, old rows get a size from their image rows."""
    path = tmp_path / "old.db"
    old = Database(path)
    old.migrate("evidence", evidence.MIGRATIONS)
    old.migrate("outbox", outbox.MIGRATIONS[:1])  # the schema as stations have it
    with old.write() as raw:
        for i in range(4):
            _record(raw, f"old{i}")
            raw.execute(
                "INSERT INTO images (event_id, name, role, sha256, bytes, path)"
                " VALUES (?, 'front.jpg', 'front', '', 1000, 'p')",
                (f"old{i}",),
            )
            raw.execute(
                "INSERT INTO outbox (kind, ref, priority, created_at, acked_at)"
                " VALUES ('event', ?, 2, ?, ?)",
                (f"old{i}", NOW.isoformat(), "t" if i == 0 else None),
            )
    old.close()
    db = Database(path)
    assert db.migrate("evidence", evidence.MIGRATIONS) == []
    assert db.migrate("outbox", outbox.MIGRATIONS) == ["0002-outbox-drain"]
    conn = db.read()
    assert outbox.pending_count(conn) == 3
    rows = outbox.due(conn, now_mono=0.0, live_since=NOW, limit=10)
    assert [r.ref for r in rows] == ["old1", "old2", "old3"]
    assert {r.size_bytes for r in rows} == {1000 + outbox.RECORD_BYTES_GUESS}
    with db.write() as w:
        outbox.enqueue(w, kind="alarm", ref="a", priority=Priority.ALARM, created_at="x",
                       payload="{}")  # fmt: skip
    assert outbox.pending_count(db.read()) == 4
    db.close()
