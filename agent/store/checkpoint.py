"""The signed verify checkpoint: how far ``verify`` found the chain whole, sealed by the station.

After a ``verify`` that found nothing wrong, ``roadside-agent verify`` stores one row in
``verify_checkpoint``: the ``seq`` and hash of the last link it checked, how many records,
tombstones and image/clip hashes it had checked up to there, the highest audit counter the
records carried, when (``verified_at``), when the last *full* check was (``full_verified_at``,
``full_seq``) and the software version. The next ``verify`` starts from there: it re-checks the
checkpoint (its seal, and that the record or tombstone at its ``seq`` still has its hash and a
valid seal of its own), then only the records after it (:mod:`agent.store.verify`).

The checkpoint is evidence: a tampered one (its ``seq``/hash columns edited, its seal wrong, its
hash no longer that of the record at its ``seq``, the checkpoint's record replaced) is a
``checkpoint`` problem, and ``verify`` then checks the whole chain. Deleting it only costs time.
A record changed *before* the checkpoint is found only by ``verify --full`` (docs/evidence.md).

The seal: ``digest = SHA-256("roadside.verify-checkpoint.v1" ‖ canonical JSON of the body)``,
``signature = Ed25519(digest bytes)`` — the record seal with the schema name in place of a
previous hash (as the chain head, :mod:`agent.store.chainhead`), so a checkpoint's signature
never passes for a record's or a head's.

Writing needs the signing key and a writable database: on a copied store (a laptop with only
``keys/*.pub``, a read-only directory) :func:`write` says why it cannot, and ``verify`` still
reports its result.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.store import integrity

CHECKPOINT_SCHEMA = "roadside.verify-checkpoint.v1"
COMPONENT = "checkpoint"

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001-verify-checkpoint",
        """
        CREATE TABLE verify_checkpoint (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            hash TEXT NOT NULL,
            key_id TEXT NOT NULL,
            body TEXT NOT NULL,
            digest TEXT NOT NULL,
            signature TEXT NOT NULL
        );
        """,
    ),
]


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint says (its signed body, plus the seal's key id)."""

    station_id: str | None
    seq: int  # the last link checked (a record or a tombstone)
    hash: str  # that link's hash
    records: int  # kept records checked up to seq
    pruned: int  # tombstones checked up to seq
    images: int  # image and clip hashes (rows) checked up to seq
    images_evicted: int
    max_audit_counter: int
    verified_at: str  # ISO time with offset
    full_verified_at: str  # the last full check (this one when it was full)
    full_seq: int  # where that full check ended
    software_version: str
    key_id: str = ""

    def body(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("key_id")
        return {"schema": CHECKPOINT_SCHEMA, **doc}

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "key_id": self.key_id}


def _seal_body(cp: Checkpoint, key_id: str) -> bytes:
    return integrity.canonical_json({**cp.body(), "key_id": key_id})


def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The stored row as a dict (``seq``, ``hash``, ``key_id``, ``body``, ``digest``,
    ``signature``), or ``None``: no checkpoint yet, or a database without the table."""
    try:
        row = conn.execute(
            "SELECT seq, hash, key_id, body, digest, signature FROM verify_checkpoint WHERE id = 1"
        ).fetchone()
    except sqlite3.OperationalError:  # never written: the table comes with the first one
        return None
    if row is None:
        return None
    names = ("seq", "hash", "key_id", "body", "digest", "signature")
    return dict(zip(names, tuple(row), strict=True))


def check(
    row: dict[str, Any], public_keys: dict[str, Ed25519PublicKey]
) -> tuple[Checkpoint | None, str | None]:
    """``(checkpoint, None)`` when the stored row holds its seal, else ``(None, what is wrong)``.

    Only the row itself: whether the chain still has its hash at its ``seq`` is
    :mod:`agent.store.verify`'s check."""
    try:
        doc = json.loads(row["body"])
        if doc.pop("schema") != CHECKPOINT_SCHEMA:
            return None, f"checkpoint of an unknown schema {doc.get('schema')!r}"
        doc.pop("key_id", None)
        cp = Checkpoint(**doc, key_id=str(row["key_id"]))
    except (ValueError, KeyError, TypeError) as err:
        return None, f"checkpoint unreadable: {err}"
    key = public_keys.get(cp.key_id)
    if key is None:
        return None, f"checkpoint signed with an unknown key id {cp.key_id}"
    seal = {"prev_hash": CHECKPOINT_SCHEMA, "hash": row["digest"], "signature": row["signature"]}
    why = integrity.verify_seal(key, CHECKPOINT_SCHEMA, _seal_body(cp, cp.key_id), seal)
    if why:
        return None, f"checkpoint seal invalid: {why}"
    if (int(row["seq"]), str(row["hash"])) != (cp.seq, cp.hash):
        return None, (
            f"checkpoint columns (seq {row['seq']}) differ from its signed body (seq {cp.seq})"
        )
    return cp, None


def seal(conn: sqlite3.Connection, signer: integrity.Signer, cp: Checkpoint) -> Checkpoint:
    """Sign ``cp`` and make it the stored checkpoint (caller's write transaction)."""
    s = signer.seal(CHECKPOINT_SCHEMA, _seal_body(cp, signer.key_id))
    body = json.dumps({**cp.body(), "key_id": signer.key_id}, ensure_ascii=False, sort_keys=True)
    conn.execute(
        "INSERT INTO verify_checkpoint (id, seq, hash, key_id, body, digest, signature)"
        " VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq,"
        " hash = excluded.hash, key_id = excluded.key_id, body = excluded.body,"
        " digest = excluded.digest, signature = excluded.signature",
        (cp.seq, cp.hash, signer.key_id, body, s["hash"], s["signature"]),
    )
    return Checkpoint(**{**asdict(cp), "key_id": signer.key_id})


def write(data_dir: Path, cp: Checkpoint, config: Any = None) -> tuple[Checkpoint | None, str]:
    """Seal ``cp`` into the station database of ``data_dir`` with the station's signing key.

    Returns ``(sealed checkpoint, "")``, or ``(None, why not)`` when the key cannot be read
    (a copy without the private key, another user) or the database not written (read-only):
    never raises for those, a copied store still verifies.
    """
    from agent.store.db import Database, DatabaseError
    from agent.store.evidence import EvidenceConfig
    from agent.store.keys import signing_key_path
    from agent.store.readonly import DB_FILE

    evidence = config if isinstance(config, EvidenceConfig) else EvidenceConfig()
    key_path = signing_key_path(evidence, Path(data_dir))
    try:
        signer = integrity.Signer(integrity.load_key(key_path))
    except integrity.SigningKeyError as err:
        return None, f"no checkpoint written: cannot sign it ({err})"
    try:
        db = Database(Path(data_dir) / DB_FILE)
    except DatabaseError as err:
        return None, f"no checkpoint written: {err}"
    try:
        db.migrate(COMPONENT, MIGRATIONS)
        with db.write() as conn:
            return seal(conn, signer, cp), ""
    except (DatabaseError, sqlite3.Error) as err:
        return None, f"no checkpoint written: the database is not writable here ({err})"
    finally:
        db.close()
