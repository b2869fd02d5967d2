"""The audit log of legally relevant parameters (WELMEC 7.2 / OIML D 31 style "event logger").

Every change to a parameter that decides a verdict or the measurement behind it (calibration,
limits, tolerance, scale settings, software version and legal software id) appends one entry.
Entries are never updated or deleted. Each entry has a ``counter`` (1, 2, 3, …, no gaps); the
current counter is stamped on every vehicle record as ``audit_counter``, so a judge can see which
parameter state a record was taken under.

Entries are sealed like records (:mod:`agent.store.integrity`) on a chain of their own: ``hash =
SHA-256(prev_hash ‖ canonical JSON of the entry body)``, signed with the station key.

The station calls :meth:`AuditLog.reconcile` at start-up with the legally relevant part of its
configuration; whatever differs from the state the log last recorded is appended, so a limit
edited in the config file while the station was stopped still lands in the log.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.store import integrity
from agent.store.db import Database

SCHEMA = "roadside.audit-entry.v1"

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001-audit-log",
        """
        CREATE TABLE audit_log (
            counter INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            entry_json TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        """,
    ),
]


#: Kinds of entries that record an event (who changed the config remotely), not the state of
#: a legally relevant parameter: :meth:`AuditLog.reconcile` never reports them as removed.
REMOTE_CONFIG = "remote-config"
EVENT_KINDS = frozenset({REMOTE_CONFIG})


@dataclass(frozen=True)
class Change:
    """One appended entry."""

    counter: int
    kind: str
    key: str
    old: Any
    new: Any


@dataclass(frozen=True)
class AuditProblem:
    counter: int | None
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {"where": "audit", "counter": self.counter, "problem": self.problem}


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"legal": {"tolerance_pct": 5}}`` → ``{"legal.tolerance_pct": 5}``; lists are leaves."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _same(a: Any, b: Any) -> bool:
    return integrity.canonical_json(a) == integrity.canonical_json(b)


class AuditLog:
    """The append-only, signed audit log in the station database."""

    def __init__(self, db: Database, signer: integrity.Signer) -> None:
        self.db = db
        self.signer = signer
        db.migrate("audit", MIGRATIONS)

    def counter(self) -> int:
        """The counter of the last entry (0 when the log is empty)."""
        row = self.db.read().execute("SELECT max(counter) FROM audit_log").fetchone()
        return int(row[0] or 0)

    def _append(
        self,
        conn: sqlite3.Connection,
        *,
        kind: str,
        key: str,
        old: Any,
        new: Any,
        at: datetime,
        actor: str,
    ) -> int:
        last = conn.execute(
            "SELECT counter, hash FROM audit_log ORDER BY counter DESC LIMIT 1"
        ).fetchone()
        counter = (int(last[0]) if last else 0) + 1
        prev_hash = str(last[1]) if last else integrity.GENESIS
        body = {
            "schema": SCHEMA,
            "counter": counter,
            "at": at.isoformat(timespec="milliseconds"),
            "kind": kind,
            "key": key,
            "old": old,
            "new": new,
            "actor": actor,
        }
        entry = dict(body)
        entry["integrity"] = self.signer.seal(prev_hash, integrity.canonical_json(body))
        conn.execute(
            "INSERT INTO audit_log (counter, at, kind, key, entry_json, hash)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                counter,
                body["at"],
                kind,
                key,
                integrity.canonical_json(entry).decode(),
                entry["integrity"]["hash"],
            ),
        )
        return counter

    def record_change(
        self, kind: str, key: str, old: Any, new: Any, at: datetime, actor: str
    ) -> int:
        """Append one change (values must be JSON-serialisable); returns its counter."""
        with self.db.write() as conn:
            return self._append(conn, kind=kind, key=key, old=old, new=new, at=at, actor=actor)

    def entries(self) -> list[dict[str, Any]]:
        rows = self.db.read().execute("SELECT entry_json FROM audit_log ORDER BY counter")
        return [json.loads(r[0]) for r in rows]

    def state(self) -> dict[str, Any]:
        """Each key's value as the log last recorded it (replayed from the entries)."""
        return state_of(self.db.read())

    def reconcile(
        self, params: Mapping[str, Any], at: datetime, actor: str = "startup"
    ) -> list[Change]:
        """Append an entry for each legally relevant parameter that differs from the log.

        ``params`` is nested: the first level is the kind (``calibration``, ``limits``,
        ``tolerance``, ``scale``, ``software``), deeper levels are flattened into dotted keys
        (``scale.lane1.accuracy_class``). A key that disappeared is logged with ``new=None``;
        entries of the :data:`EVENT_KINDS` are events, not parameters, and are left alone.
        All changes commit in one transaction. Returns them (empty when nothing changed).
        """
        current = flatten(params)
        changes: list[Change] = []
        with self.db.write() as conn:
            # events in the log (a remote config change) are not parameters that could have
            # been removed
            known = {
                k: v for k, v in state_of(conn).items() if k.split(".", 1)[0] not in EVENT_KINDS
            }
            for key in sorted(set(current) | set(known)):
                old, new = known.get(key), current.get(key)
                if key in known and key in current and _same(old, new):
                    continue
                if key not in current and old is None:
                    continue  # already logged as removed
                kind = key.split(".", 1)[0]
                counter = self._append(
                    conn, kind=kind, key=key, old=old, new=new, at=at, actor=actor
                )
                changes.append(Change(counter, kind, key, old, new))
        return changes

    def verify(self, public_keys: dict[str, Ed25519PublicKey] | None = None) -> list[AuditProblem]:
        """Chain, signatures and counters of the whole log; empty when everything holds."""
        keys = (
            public_keys if public_keys is not None else {self.signer.key_id: self.signer.public_key}
        )
        return verify_log(self.db.read(), keys)


def state_of(conn: sqlite3.Connection) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for (entry_json,) in conn.execute("SELECT entry_json FROM audit_log ORDER BY counter"):
        try:
            entry = json.loads(entry_json)
            state[str(entry["key"])] = entry["new"]
        except (ValueError, KeyError, TypeError):
            continue  # verify names it
    return state


def verify_log(
    conn: sqlite3.Connection, public_keys: dict[str, Ed25519PublicKey]
) -> list[AuditProblem]:
    """Check the audit log in ``conn`` (may be read-only). Missing table: no problems."""
    try:
        rows = conn.execute("SELECT counter, entry_json, hash FROM audit_log ORDER BY counter")
        rows_list = rows.fetchall()
    except sqlite3.OperationalError:
        return []
    problems: list[AuditProblem] = []
    prev_hash = integrity.GENESIS
    expected = 1
    for counter, entry_json, row_hash in rows_list:
        if counter != expected:
            problems.append(AuditProblem(counter, f"counter {counter} follows {expected - 1}"))
        expected = counter + 1
        try:
            entry = json.loads(entry_json)
            seal = dict(entry.pop("integrity"))
            body = integrity.canonical_json(entry)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            problems.append(AuditProblem(counter, f"entry unreadable: {err}"))
            prev_hash = str(row_hash)
            continue
        if entry.get("counter") != counter:
            problems.append(AuditProblem(counter, "counter column differs from the entry"))
        key = public_keys.get(str(seal.get("key_id")))
        if key is None:
            problems.append(AuditProblem(counter, f"no public key with id {seal.get('key_id')}"))
        else:
            why = integrity.verify_seal(key, prev_hash, body, seal)
            if why:
                problems.append(AuditProblem(counter, why))
        if row_hash != seal.get("hash"):
            problems.append(AuditProblem(counter, "hash column differs from the entry"))
        prev_hash = str(row_hash)
    return problems


def last_counter(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT max(counter) FROM audit_log").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)
