"""The outbox decides what goes next: drain order, deadlines, acks, resend ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store import evidence, outbox
from agent.store.db import Database
from agent.store.outbox import Priority

CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=CST)


def _db(path: Path) -> Database:
    db = Database(path)
    db.migrate("evidence", evidence.MIGRATIONS)  # due() joins the stored records
    db.migrate("outbox", outbox.MIGRATIONS)
    return db


def _add(db: Database, ref: str, priority: Priority, at: datetime, kind: str = "alarm") -> None:
    with db.write() as conn:
        if kind == "event":  # an event row names a kept record (resend re-queues only those)
            conn.execute(
                "INSERT INTO records (event_id, lane, measured_at, status, record_json, hash)"
                " VALUES (?, 1, ?, 'within_limit', '{}', '')",
                (ref, at.isoformat()),
            )
        outbox.enqueue(
            conn, kind=kind, ref=ref, priority=priority, created_at=at.isoformat(), payload="{}"
        )


def _due(db: Database, now_mono: float = 0.0, limit: int = 100) -> list[str]:
    rows = outbox.due(
        db.read(), now_mono=now_mono, live_since=NOW - timedelta(minutes=5), limit=limit
    )
    return [r.ref for r in rows]


def test_drain_order_alarms_live_violations_backlog_passages(tmp_path: Path) -> None:
    db = _db(tmp_path / "s.db")
    _add(db, "p-old", Priority.PASSAGE, NOW - timedelta(days=1))
    _add(db, "v-old", Priority.VIOLATION, NOW - timedelta(hours=3))
    _add(db, "p-new", Priority.PASSAGE, NOW)
    # live, written in UTC: the offset must not fool the comparison
    _add(db, "v-live-utc", Priority.VIOLATION, (NOW - timedelta(minutes=1)).astimezone(UTC))
    _add(db, "v-live", Priority.VIOLATION, NOW)
    _add(db, "a", Priority.ALARM, NOW - timedelta(days=2))
    assert _due(db) == ["a", "v-live-utc", "v-live", "v-old", "p-old", "p-new"]
    assert _due(db, limit=2) == ["a", "v-live-utc"]


def test_deadlines_acks_and_resend_ranges(tmp_path: Path) -> None:
    db = _db(tmp_path / "s.db")
    for i in range(3):
        _add(db, f"e{i}", Priority.PASSAGE, NOW + timedelta(minutes=i), kind="event")
    rows = outbox.due(db.read(), now_mono=100.0, live_since=NOW, limit=10)
    with db.write() as conn:
        outbox.mark_attempts(conn, [(r.id, NOW.isoformat(), 130.0) for r in rows])
    assert _due(db, now_mono=129.0) == []  # sent, waiting for the ack
    assert _due(db, now_mono=130.0) == ["e0", "e1", "e2"]  # ack timeout passed
    with db.write() as conn:
        assert outbox.mark_acked(conn, "event", ["e0", "e1", "nope"], "t") == 2
        assert outbox.mark_acked(conn, "event", ["e0"], "t") == 0
    assert _due(db, now_mono=130.0) == ["e2"]
    with db.write() as conn:
        outbox.reset_deadlines(conn)
        # the platform asks again for what was measured in the first minute (said in UTC)
        n = outbox.requeue_events(
            conn, NOW.astimezone(UTC), (NOW + timedelta(seconds=60)).astimezone(UTC)
        )
    assert n == 2
    assert _due(db) == ["e0", "e1", "e2"]
    assert outbox.pending_count(db.read()) == 3
    db.close()


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(list(Priority)), st.integers(min_value=0, max_value=600)),
        min_size=1,
        max_size=30,
    )
)
def test_due_order_is_class_then_age(rows: list[tuple[Priority, int]]) -> None:
    import tempfile

    # rows are queued as vehicles are stored: creation times never go backwards
    rows = sorted(rows, key=lambda r: -r[1])
    with tempfile.TemporaryDirectory() as tmp:
        db = _db(Path(tmp) / "s.db")
        for i, (priority, minutes_ago) in enumerate(rows):
            _add(db, f"r{i}", priority, NOW - timedelta(minutes=minutes_ago))

        def rank(i: int) -> tuple[int, int]:
            priority, minutes_ago = rows[i]
            live = priority == Priority.VIOLATION and minutes_ago <= 5
            cls = 0 if priority == Priority.ALARM else 1 if live else priority + 1
            return (cls, i)

        expected = [f"r{i}" for i in sorted(range(len(rows)), key=rank)]
        assert _due(db) == expected
        for limit in (1, 2, len(rows) // 2):  # a round that takes part of it takes the head
            assert _due(db, limit=limit) == expected[:limit]
        db.close()
