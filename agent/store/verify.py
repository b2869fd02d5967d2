"""Re-checking the evidence store: the chain, every seal, the index columns and the images.

:func:`verify_store` walks kept records and retention's tombstones in ``seq`` order, so the
chain links across pruned records (:mod:`agent.store.evidence`). For each record it checks the
hash chain and the Ed25519 signature (:mod:`agent.store.integrity`), that the indexed columns
say what the signed record says, and that every image row and file matches the hash and size
the record signed; for each tombstone its link and its signature. Last, the ``seq`` counter
must not be ahead of the last record, no ``seq`` may be skipped, and the signed chain head
(:mod:`agent.store.chainhead`) must name the last link (records cut off the end of the chain).

Bad evidence never raises: every finding is a :class:`Problem` in the :class:`ChainReport`,
and ``roadside-agent verify`` names the first broken record.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.store import chainhead, integrity


@dataclass
class Problem:
    """One thing ``verify`` found wrong; ``seq``/``event_id`` name the record when known."""

    where: str  # record | image | tombstone | counter | head | audit
    problem: str
    seq: int | None = None
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class ChainReport:
    records: int = 0
    pruned: int = 0
    images: int = 0
    images_evicted: int = 0
    last_seq: int = 0
    last_hash: str = integrity.GENESIS
    max_audit_counter: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def first_broken(self) -> Problem | None:
        """The problem on the lowest ``seq`` (store-wide problems come after)."""
        with_seq = [p for p in self.problems if p.seq is not None]
        if with_seq:
            return min(with_seq, key=lambda p: p.seq or 0)
        return self.problems[0] if self.problems else None


def chain_length(conn: sqlite3.Connection) -> int | None:
    """Records and tombstones in the chain (what :func:`verify_store` walks); ``None`` when
    the database cannot be read (:func:`verify_store` then reports it)."""
    try:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM records) + (SELECT count(*) FROM records_pruned)"
        ).fetchone()
    except sqlite3.DatabaseError:
        return None
    return int(row[0])


def _chain_rows(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """Kept records and tombstones in ``seq`` order; the first column, ``kind``, tells them
    apart (``agent.commands.verify`` counts its progress on it)."""
    return iter(
        conn.execute(
            "SELECT 'record' AS kind, seq, event_id, lane, measured_at, status, plate, gross_kg,"
            " record_json, hash, NULL AS prev_hash, NULL AS signature, NULL AS key_id"
            " FROM records"
            " UNION ALL"
            " SELECT 'tombstone', seq, event_id, NULL, measured_at, status, NULL, NULL, NULL,"
            " hash, prev_hash, signature, key_id FROM records_pruned"
            " ORDER BY seq, kind"
        )
    )


def _image_rows(conn: sqlite3.Connection) -> dict[str, dict[str, sqlite3.Row]]:
    """Every image row, by event id and image name."""
    by_event: dict[str, dict[str, sqlite3.Row]] = {}
    for row in conn.execute("SELECT * FROM images"):
        by_event.setdefault(row["event_id"], {})[row["name"]] = row
    return by_event


def _seq_counter(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()
    return None if row is None else int(row[0])


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def verify_store(
    conn: sqlite3.Connection,
    data_dir: Path,
    public_keys: dict[str, Ed25519PublicKey],
    *,
    check_images: bool = True,
) -> ChainReport:
    """Re-check every record: chain, hash, signature, index columns, images, ``seq`` counter.

    ``conn`` may be read-only; it needs ``row_factory = sqlite3.Row``. Never raises for bad
    evidence: everything found is in :attr:`ChainReport.problems`.
    """
    walk = _ChainWalk(Path(data_dir), public_keys, check_images, _image_rows(conn))
    for row in _chain_rows(conn):
        walk.step(row)
    report = walk.report
    for event_id in sorted(set(walk.images_by_event) - walk.seen_events):
        walk.bad("image", "image rows for a record that does not exist", None, event_id)
    report.last_seq = walk.prev_seq
    report.last_hash = walk.prev_hash
    counter = _seq_counter(conn)
    if counter is not None and counter > walk.prev_seq:
        walk.bad(
            "counter",
            f"seq counter is {counter} but the last record is {walk.prev_seq}: "
            "records at the end of the chain are missing",
            walk.prev_seq + 1,
            None,
        )
    why = None
    if chainhead.expected(conn):
        why = chainhead.check(chainhead.read(conn), walk.prev_seq, walk.prev_hash, public_keys)
    if why:
        walk.bad("head", why, walk.prev_seq + 1 if "missing" in why else None, None)
    return report


class _ChainWalk:
    """One walk along the chain: where it is (``prev_seq``, ``prev_hash``) and what it found."""

    def __init__(
        self,
        data_dir: Path,
        public_keys: dict[str, Ed25519PublicKey],
        check_images: bool,
        images_by_event: dict[str, dict[str, sqlite3.Row]],
    ) -> None:
        self.data_dir = data_dir
        self.public_keys = public_keys
        self.check_images = check_images
        self.images_by_event = images_by_event
        self.report = ChainReport()
        self.prev_hash = integrity.GENESIS
        self.prev_seq = 0
        self.seen_events: set[str] = set()

    def bad(self, where: str, problem: str, seq: int | None, event_id: str | None) -> None:
        self.report.problems.append(Problem(where, problem, seq, event_id))

    def step(self, row: sqlite3.Row) -> None:
        """Check one row of the chain (a record or a tombstone) and move the chain on."""
        seq, event_id = int(row["seq"]), str(row["event_id"])
        if seq <= self.prev_seq:
            self.bad("record", f"seq {seq} used twice (record and tombstone)", seq, event_id)
            return
        gap = (self.prev_seq + 1, seq - 1) if seq > self.prev_seq + 1 else None
        self.prev_seq = seq
        if row["kind"] == "tombstone":
            self._tombstone(row, seq, event_id)
        else:
            self._record(row, seq, event_id)
        if gap:  # seq is never skipped: a gap is records removed
            self.bad(
                "record",
                f"seq {gap[0]}..{gap[1]} missing before this record (neither kept nor tombstoned)",
                seq,
                event_id,
            )
        self.prev_hash = str(row["hash"])

    def _tombstone(self, row: sqlite3.Row, seq: int, event_id: str) -> None:
        self.report.pruned += 1
        key = self.public_keys.get(row["key_id"])
        if row["prev_hash"] != self.prev_hash:
            self.bad("tombstone", "chain broken: prev_hash does not match", seq, event_id)
        if key is None:
            self.bad("tombstone", f"no public key with key id {row['key_id']}", seq, event_id)
        elif not integrity.verify_signature(key, row["hash"], row["signature"]):
            self.bad("tombstone", "signature invalid for this key", seq, event_id)

    def _record(self, row: sqlite3.Row, seq: int, event_id: str) -> None:
        self.report.records += 1
        self.seen_events.add(event_id)
        try:
            record = json.loads(row["record_json"])
            seal = dict(record.pop("integrity"))
            body = integrity.canonical_json(record)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            self.bad("record", f"record JSON unreadable: {err}", seq, event_id)
            return
        self._seal(row, seal, body, seq, event_id)
        self._columns(row, record, seq, event_id)
        self.report.max_audit_counter = max(
            self.report.max_audit_counter, int(record.get("audit_counter", 0))
        )
        self._images(record, seq, event_id)

    def _seal(
        self, row: sqlite3.Row, seal: dict[str, Any], body: bytes, seq: int, event_id: str
    ) -> None:
        key = self.public_keys.get(str(seal.get("key_id")))
        if key is None:
            self.bad("record", f"no public key with key id {seal.get('key_id')}", seq, event_id)
        else:
            why = integrity.verify_seal(key, self.prev_hash, body, seal)
            if why:
                self.bad("record", why, seq, event_id)
        if row["hash"] != seal.get("hash"):
            self.bad(
                "record", "hash column differs from the record's integrity hash", seq, event_id
            )

    def _columns(self, row: sqlite3.Row, record: dict[str, Any], seq: int, event_id: str) -> None:
        """The indexed columns (what ``events`` filters on) must say what the record says."""
        columns = {
            "seq": (seq, record.get("seq")),
            "event_id": (event_id, record.get("event_id")),
            "lane": (row["lane"], record.get("lane")),
            "measured_at": (row["measured_at"], record.get("measured_at")),
            "status": (row["status"], (record.get("verdict") or {}).get("status")),
            "gross_kg": (row["gross_kg"], (record.get("vehicle") or {}).get("gross_kg")),
        }
        for name, (col, val) in columns.items():
            if col != val:
                self.bad(
                    "record",
                    f"column {name}={col!r} differs from the record ({val!r})",
                    seq,
                    event_id,
                )

    def _images(self, record: dict[str, Any], seq: int, event_id: str) -> None:
        rows = self.images_by_event.get(event_id, {})
        files = [*record.get("images", []), *record.get("videos", [])]  # photos and clips
        for img in files:
            self._image(img, rows.get(img.get("name")), seq, event_id)
        named = {i.get("name") for i in files}
        for extra in sorted(set(rows) - named):
            self.bad("image", f"image row {extra} is not in the signed record", seq, event_id)

    def _image(
        self, img: dict[str, Any], irow: sqlite3.Row | None, seq: int, event_id: str
    ) -> None:
        self.report.images += 1
        if irow is None:
            self.bad("image", f"image {img.get('name')} has no row", seq, event_id)
            return
        if irow["sha256"] != img.get("sha256") or irow["bytes"] != img.get("bytes"):
            self.bad("image", f"image {img['name']}: row differs from the record", seq, event_id)
        if irow["evicted_at"]:
            self.report.images_evicted += 1
            return
        if self.check_images:
            self._image_file(img, self.data_dir / irow["path"], seq, event_id)

    def _image_file(self, img: dict[str, Any], path: Path, seq: int, event_id: str) -> None:
        try:
            digest, size = _sha256_file(path)
        except OSError as err:
            self.bad("image", f"image {img['name']} missing: {err.strerror}", seq, event_id)
            return
        if size != img.get("bytes"):
            self.bad(
                "image",
                f"image {img['name']} is {size} bytes, record says {img.get('bytes')}",
                seq,
                event_id,
            )
        elif digest != img.get("sha256"):
            self.bad("image", f"image {img['name']} altered: SHA-256 differs", seq, event_id)
