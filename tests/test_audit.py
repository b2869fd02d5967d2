"""The audit log of legally relevant parameters: append-only, counted, chained, signed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from agent.store.audit import AuditLog, flatten
from tests.crash_writer import CTX, T0, make_event, make_verdict, open_store

PARAMS = {
    "limits": {"table": "order62-2016", "6_axle_kg": 49000},
    "tolerance": {"policy": "percent", "pct": 5.0},
    "scale": {"wim-1": {"accuracy_class": "5", "zero_tracking": True}},
    "calibration": {"wim-1": {"certificate": "JJG907-2026-0042", "valid_until": "2027-05-31"}},
    "software": {"version": "0.1.0", "legal_id": "ab" * 32},
}


def test_first_start_records_the_baseline(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    log = AuditLog(db, store.signer)
    changes = log.reconcile(PARAMS, T0)
    assert [c.counter for c in changes] == list(range(1, len(flatten(PARAMS)) + 1))
    assert all(c.old is None for c in changes)
    assert log.counter() == len(changes)
    assert log.verify() == []


def test_unchanged_restart_appends_nothing(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    log = AuditLog(db, store.signer)
    log.reconcile(PARAMS, T0)
    before = log.counter()
    assert log.reconcile(PARAMS, T0 + timedelta(hours=1)) == []
    assert log.counter() == before


def test_changed_tolerance_lands_with_old_and_new_value(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    log = AuditLog(db, store.signer)
    log.reconcile(PARAMS, T0)
    edited = {**PARAMS, "tolerance": {"policy": "percent", "pct": 10.0}}
    changes = log.reconcile(edited, T0 + timedelta(days=1), actor="config-file")
    assert len(changes) == 1
    c = changes[0]
    assert (c.kind, c.key, c.old, c.new) == ("tolerance", "tolerance.pct", 5.0, 10.0)
    entry = log.entries()[-1]
    assert entry["actor"] == "config-file"
    assert entry["integrity"]["key_id"] == store.signer.key_id
    assert log.verify() == []


def test_removed_parameter_is_logged_once(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    log = AuditLog(db, store.signer)
    log.reconcile(PARAMS, T0)
    fewer = {k: v for k, v in PARAMS.items() if k != "calibration"}
    removed = log.reconcile(fewer, T0 + timedelta(days=1))
    assert {c.key for c in removed} == {
        "calibration.wim-1.certificate",
        "calibration.wim-1.valid_until",
    }
    assert all(c.new is None for c in removed)
    assert log.reconcile(fewer, T0 + timedelta(days=2)) == []


def test_record_change_returns_the_counter_records_carry(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    log = AuditLog(db, store.signer)
    n = log.record_change("calibration", "wim-1.span", 1.0, 1.0021, T0, "technician:wang")
    assert n == 1 == log.counter()
    ctx = CTX.__class__(**{**CTX.__dict__, "audit_counter": log.counter()})
    record = store.commit(make_event(1), make_verdict(), ctx).record
    assert record["audit_counter"] == 1


def test_log_survives_reopen(tmp_path: Path) -> None:
    db, store = open_store(tmp_path)
    AuditLog(db, store.signer).reconcile(PARAMS, T0)
    db.close()
    db2, store2 = open_store(tmp_path)
    log = AuditLog(db2, store2.signer)
    assert log.reconcile(PARAMS, T0) == []
    assert log.state()["limits.6_axle_kg"] == 49000


def test_a_logged_event_of_another_kind_is_not_reported_as_a_removed_parameter(
    tmp_path: Path,
) -> None:
    """A set-config is logged as a ``remote-config`` entry; the next start-up's reconcile must
    not take it for a legally relevant parameter that disappeared (a false parameter alarm)."""
    db, store = open_store(tmp_path)
    log = AuditLog(db, store.signer)
    params = {"tolerance": {"policy": "percent", "pct": 5.0}}
    log.reconcile(params, T0)
    log.record_change("remote-config", "remote-config", {"a": 1}, {"a": 2}, T0, "platform")
    assert log.reconcile(params, T0) == []
