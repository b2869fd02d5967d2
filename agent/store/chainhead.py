"""The signed chain head: the last record's ``seq`` and hash, sealed with the station key.

Every record commit (:meth:`agent.store.evidence.EvidenceStore.commit`) also rewrites the one
row of ``chain_head`` in the same transaction: ``(station_id, seq, hash)`` of the record just
sealed, signed. Eviction keeps tombstones, so the head stays the chain's last link. A chain cut
off at its end (the last records deleted, with or without the ``seq`` counter) no longer ends
where the signed head says: ``verify`` names it (:func:`check`), and the next commit notices it
too (a ``chain_head_mismatch`` alarm, :func:`check_before_commit`). The uplink puts
:func:`chain_head` into the heartbeat and the acks' replies, so the platform, which keeps the
newest head it has seen, detects a station whose chain went backwards even when someone with
root also rewrote the local head (docs/evidence.md, "The chain head").

The seal: ``digest = SHA-256("roadside.chain-head.v1" ‖ canonical JSON of {schema, station_id,
seq, hash, key_id})``, ``signature = Ed25519(digest bytes)`` — the record seal of
:mod:`agent.store.integrity` with the schema name in place of a previous hash, so a head
signature can never pass for a record's (a record's preimage starts with 64 hex digits).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.store import integrity

if TYPE_CHECKING:
    from agent.store.db import Database

HEAD_SCHEMA = "roadside.chain-head.v1"

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001-chain-head",
        """
        CREATE TABLE chain_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            station_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            hash TEXT NOT NULL,
            key_id TEXT NOT NULL,
            digest TEXT NOT NULL,
            signature TEXT NOT NULL
        );
        """,
    ),
]

_FIELDS = ("schema", "station_id", "seq", "hash", "key_id")


def _body(station_id: str, seq: int, hash_: str, key_id: str) -> bytes:
    return integrity.canonical_json(
        {"schema": HEAD_SCHEMA, "station_id": station_id, "seq": seq, "hash": hash_,
         "key_id": key_id}
    )  # fmt: skip


def seal(
    conn: sqlite3.Connection, signer: integrity.Signer, *, station_id: str, seq: int, hash_: str
) -> dict[str, Any]:
    """Sign ``(station_id, seq, hash)`` as the new head (caller's write transaction)."""
    s = signer.seal(HEAD_SCHEMA, _body(station_id, seq, hash_, signer.key_id))
    conn.execute(
        "INSERT INTO chain_head (id, station_id, seq, hash, key_id, digest, signature)"
        " VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " station_id = excluded.station_id, seq = excluded.seq, hash = excluded.hash,"
        " key_id = excluded.key_id, digest = excluded.digest, signature = excluded.signature",
        (station_id, seq, hash_, signer.key_id, s["hash"], s["signature"]),
    )
    return _doc(station_id, seq, hash_, signer.key_id, s["hash"], s["signature"])


def _doc(
    station_id: str, seq: int, hash_: str, key_id: str, digest: str, signature: str
) -> dict[str, Any]:
    return {
        "schema": HEAD_SCHEMA,
        "station_id": station_id,
        "seq": seq,
        "hash": hash_,
        "key_id": key_id,
        "digest": digest,
        "signature": signature,
    }


def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The stored head, or ``None`` (no record sealed yet, or a database without the table)."""
    try:
        row = conn.execute(
            "SELECT station_id, seq, hash, key_id, digest, signature FROM chain_head WHERE id = 1"
        ).fetchone()
    except sqlite3.OperationalError:  # a database from before the chain head
        return None
    if row is None:
        return None
    return _doc(str(row[0]), int(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]))


def expected(conn: sqlite3.Connection) -> bool:
    """Whether this database has had a chain head since its upgrade (the migration is
    recorded): a database the new version has not opened yet has none to check."""
    try:
        row = conn.execute(
            "SELECT 1 FROM migrations WHERE component = 'chainhead' AND name = ?",
            (MIGRATIONS[0][0],),
        ).fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None


def chain_head(db: Database) -> dict[str, Any]:
    """The signed head for the heartbeat and the acks' replies (shape: docs/evidence.md).

    ``{"schema": "roadside.chain-head.v1", "station_id", "seq", "hash", "key_id", "digest",
    "signature"}``; before the first record ``seq`` is 0, ``hash`` the genesis hash and
    ``station_id``, ``key_id``, ``digest``, ``signature`` are ``null``.
    """
    head = read(db.read())
    if head is None:
        return {
            "schema": HEAD_SCHEMA,
            "station_id": None,
            "seq": 0,
            "hash": integrity.GENESIS,
            "key_id": None,
            "digest": None,
            "signature": None,
        }
    return head


def signature_problem(head: dict[str, Any], public_keys: dict[str, Ed25519PublicKey]) -> str | None:
    """``None`` when ``head`` carries a valid station signature, else what is wrong."""
    key = public_keys.get(str(head.get("key_id")))
    if key is None:
        return f"no public key with key id {head.get('key_id')}"
    body = _body(str(head["station_id"]), int(head["seq"]), str(head["hash"]), str(head["key_id"]))
    seal_ = {
        "prev_hash": HEAD_SCHEMA,
        "hash": head.get("digest"),
        "signature": head.get("signature"),
    }
    why = integrity.verify_seal(key, HEAD_SCHEMA, body, seal_)
    return None if why is None else f"chain head seal invalid: {why}"


def check(
    head: dict[str, Any] | None,
    last_seq: int,
    last_hash: str,
    public_keys: dict[str, Ed25519PublicKey],
) -> str | None:
    """What ``verify`` says about the head against the chain it walked (``None``: it holds)."""
    if head is None:
        if last_seq:
            return "the signed chain head is missing: the end of the chain cannot be proved"
        return None
    bad_seal = signature_problem(head, public_keys)
    if bad_seal:
        return bad_seal
    seq, hash_ = int(head["seq"]), str(head["hash"])
    if seq > last_seq:
        return (
            f"the signed chain head is seq {seq} but the chain ends at seq {last_seq}: "
            "records at the end of the chain are missing"
        )
    if seq < last_seq:
        return f"the chain goes on to seq {last_seq} past its signed head (seq {seq})"
    if hash_ != last_hash:
        return f"the signed chain head's hash differs from record seq {seq}'s"
    return None


def check_before_commit(conn: sqlite3.Connection, seq_before: int, prev_hash: str) -> str | None:
    """Before a commit seals a new head: does the old one still name the chain's end?"""
    head = read(conn)
    if head is None:
        return None if seq_before == 0 else "chain head missing"
    if (int(head["seq"]), head["hash"]) != (seq_before, prev_hash):
        return (
            f"the signed chain head is seq {head['seq']}, but the chain now ends at seq "
            f"{seq_before} with another hash: records at the end of the chain were removed "
            "or replaced"
        )
    return None
