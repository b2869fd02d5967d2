"""Re-checking the evidence store: the chain, every seal, the index columns and the images.

:func:`verify_store` walks kept records and retention's tombstones in ``seq`` order, so the
chain links across pruned records (:mod:`agent.store.evidence`). For each record it checks the
hash chain and the Ed25519 signature (:mod:`agent.store.integrity`), that the indexed columns
say what the signed record says, and that every image row and file matches the hash and size
the record signed; for each tombstone its link and its signature. Last, the ``seq`` counter
must not be ahead of the last record, no ``seq`` may be skipped, and the signed chain head
(:mod:`agent.store.chainhead`) must name the last link (records cut off the end of the chain).

Incremental (``full=False``): the walk starts at the signed verify checkpoint
(:mod:`agent.store.checkpoint`) once it holds — its seal, and the record or tombstone at its
``seq`` still carrying its hash and a valid seal — and checks only what comes after it, plus
the link from the checkpoint's record into the first new one and the store-wide checks above.
A checkpoint that does not hold is a ``checkpoint`` problem and the whole chain is walked.
Records changed before the checkpoint are found only by a full walk; image rows of no record
too (one anti-join over ``images``).

Memory is flat in the number of records: the walk reads records (and tombstones) in ``seq``
order :data:`BATCH_RECORDS` at a time, with the image rows of just that batch, inside one read
transaction (one snapshot of the store, as the single statement before it was).

Bad evidence never raises: every finding is a :class:`Problem` in the :class:`ChainReport`,
and ``roadside-agent verify`` names the first broken record.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.store import chainhead, checkpoint, integrity

#: Records (and tombstones) read per query; their image rows come with them.
BATCH_RECORDS = 256
#: Problems kept from the walk itself (a store signed by a lost key would list every record):
#: the rest are counted in :attr:`ChainReport.problems_omitted`; store-wide ones always stay.
MAX_WALK_PROBLEMS = 1000


class ProgressSink(Protocol):
    """What the walk reports its progress to (``agent.commands.progress.Progress``)."""

    total: int | None

    def advance(self, n: int = 1, note: str = "") -> None: ...


@dataclass
class Problem:
    """One thing ``verify`` found wrong; ``seq``/``event_id`` name the record when known."""

    where: str  # record | image | tombstone | counter | head | checkpoint | audit
    problem: str
    seq: int | None = None
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class ChainReport:
    """What one walk checked (from :attr:`from_seq` on) and found."""

    records: int = 0
    pruned: int = 0
    images: int = 0
    images_evicted: int = 0
    last_seq: int = 0
    last_hash: str = integrity.GENESIS
    max_audit_counter: int = 0
    problems: list[Problem] = field(default_factory=list)
    problems_omitted: int = 0
    #: "full" (from the genesis) or "incremental" (after :attr:`checkpoint`)
    mode: str = "full"
    #: the walk checked the links after this ``seq`` (0: the whole chain)
    from_seq: int = 0
    #: the stored checkpoint when it holds (the incremental walk started from it)
    checkpoint: checkpoint.Checkpoint | None = None
    #: the stored checkpoint as read, when there is one (for the output, even when broken)
    checkpoint_row: dict[str, Any] | None = None
    #: the station id the signed chain head names (``None`` before the chain head)
    station_id: str | None = None

    @property
    def first_broken(self) -> Problem | None:
        """The problem on the lowest ``seq`` (store-wide problems come after)."""
        with_seq = [p for p in self.problems if p.seq is not None]
        if with_seq:
            return min(with_seq, key=lambda p: p.seq or 0)
        return self.problems[0] if self.problems else None

    @property
    def chain_problems(self) -> list[Problem]:
        """Problems of the chain itself (all but the checkpoint's own)."""
        return [p for p in self.problems if p.where != "checkpoint"]


_CHAIN_SQL = (
    "SELECT 'record' AS kind, seq, event_id, lane, measured_at, status, plate, gross_kg,"
    " record_json, hash, NULL AS prev_hash, NULL AS signature, NULL AS key_id"
    " FROM records WHERE seq >= :lo AND seq <= :hi"
    " UNION ALL"
    " SELECT 'tombstone', seq, event_id, NULL, measured_at, status, NULL, NULL, NULL,"
    " hash, prev_hash, signature, key_id FROM records_pruned WHERE seq >= :lo AND seq <= :hi"
    " ORDER BY seq, kind"
)
#: Image rows whose record does not exist (an anti-join on the unique event id index).
ORPHAN_IMAGES_SQL = (
    "SELECT DISTINCT i.event_id FROM images i WHERE NOT EXISTS"
    " (SELECT 1 FROM records r WHERE r.event_id = i.event_id) ORDER BY i.event_id"
)


def chain_batches(
    conn: sqlite3.Connection, after_seq: int, end_seq: int, batch: int | None = None
) -> Iterator[list[sqlite3.Row]]:
    """Kept records and tombstones with ``after_seq < seq <= end_seq`` in ``(seq, kind)``
    order, ``batch`` rows per query (default :data:`BATCH_RECORDS`; a rowid range on each
    table, merged: no sort, no scan). A ``seq`` stored twice (record and tombstone) comes
    twice."""
    batch = max(3, batch or BATCH_RECORDS)  # a seq comes at most twice: each batch moves on
    lo, last = after_seq + 1, (after_seq, "")
    while lo <= end_seq:
        rows = conn.execute(
            f"{_CHAIN_SQL} LIMIT :n", {"lo": lo, "hi": end_seq, "n": batch}
        ).fetchall()
        fresh = [r for r in rows if (int(r["seq"]), str(r["kind"])) > last]
        if not fresh:
            return
        yield fresh
        last = (int(fresh[-1]["seq"]), str(fresh[-1]["kind"]))
        if len(rows) < batch:
            return
        lo = last[0]  # inclusive: a tombstone of the same seq may follow in the next batch


def _image_rows(
    conn: sqlite3.Connection, event_ids: list[str]
) -> dict[str, dict[str, sqlite3.Row]]:
    """The image rows of ``event_ids`` (one batch), by event id and image name."""
    by_event: dict[str, dict[str, sqlite3.Row]] = {}
    if not event_ids:
        return by_event
    marks = ",".join("?" * len(event_ids))
    for row in conn.execute(f"SELECT * FROM images WHERE event_id IN ({marks})", event_ids):
        by_event.setdefault(row["event_id"], {})[row["name"]] = row
    return by_event


def _chain_end(conn: sqlite3.Connection) -> int:
    """The highest ``seq`` stored (kept or tombstoned); 0 for an empty chain."""
    row = conn.execute(
        "SELECT max(coalesce((SELECT max(seq) FROM records), 0),"
        " coalesce((SELECT max(seq) FROM records_pruned), 0))"
    ).fetchone()
    return int(row[0])


def chain_length(conn: sqlite3.Connection) -> int | None:
    """Records and tombstones in the chain (what a full :func:`verify_store` walks); ``None``
    when the database cannot be read (:func:`verify_store` then reports it)."""
    try:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM records) + (SELECT count(*) FROM records_pruned)"
        ).fetchone()
    except sqlite3.DatabaseError:
        return None
    return int(row[0])


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


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction around the walk: every batch sees the same store."""
    if conn.in_transaction:  # the caller's own
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def checkpoint_link_problem(
    conn: sqlite3.Connection, cp: checkpoint.Checkpoint, public_keys: dict[str, Ed25519PublicKey]
) -> str | None:
    """``None`` when the record or tombstone at the checkpoint's ``seq`` still has its hash and
    a valid seal of its own (the link the incremental walk starts from), else what is wrong."""
    if cp.seq == 0:  # sealed on an empty chain: it starts at the genesis
        return None if cp.hash == integrity.GENESIS else "the checkpoint of seq 0 is not genesis"
    rows = [r for batch in chain_batches(conn, cp.seq - 1, cp.seq) for r in batch]
    if len(rows) != 1:
        return f"the checkpoint names seq {cp.seq}, which the chain does not hold once"
    row = rows[0]
    if row["hash"] != cp.hash:
        return f"the checkpoint's hash is not the hash of seq {cp.seq}: that link was replaced"
    if row["kind"] == "tombstone":
        key = public_keys.get(row["key_id"])
        if key is None or not integrity.verify_signature(key, row["hash"], row["signature"]):
            return f"the tombstone at the checkpoint (seq {cp.seq}) has no valid signature"
        return None
    try:
        record = json.loads(row["record_json"])
        seal = dict(record.pop("integrity"))
        body = integrity.canonical_json(record)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return f"the record at the checkpoint (seq {cp.seq}) is unreadable: {err}"
    key = public_keys.get(str(seal.get("key_id")))
    why = "no public key for it" if key is None else None
    if key is not None and seal.get("hash") == cp.hash:
        why = integrity.verify_seal(key, str(seal.get("prev_hash")), body, seal)
    elif key is not None:
        why = "its signed hash differs from the checkpoint's"
    return None if why is None else f"the record at the checkpoint (seq {cp.seq}): {why}"


def _usable_checkpoint(
    conn: sqlite3.Connection, report: ChainReport, public_keys: dict[str, Ed25519PublicKey]
) -> checkpoint.Checkpoint | None:
    """The stored checkpoint when it holds; a ``checkpoint`` problem when one is stored and
    does not."""
    row = checkpoint.read(conn)
    report.checkpoint_row = row
    if row is None:
        return None
    cp, why = checkpoint.check(row, public_keys)
    if cp is not None:
        why = checkpoint_link_problem(conn, cp, public_keys)
    if why:
        report.problems.append(Problem("checkpoint", why + "; the whole chain is checked"))
        return None
    report.checkpoint = cp
    return cp


def verify_store(
    conn: sqlite3.Connection,
    data_dir: Path,
    public_keys: dict[str, Ed25519PublicKey],
    *,
    check_images: bool = True,
    full: bool = True,
    progress: ProgressSink | None = None,
) -> ChainReport:
    """Re-check the chain: hash, signature, index columns, images, ``seq`` counter, head.

    ``full=False`` checks only the links after a stored checkpoint that holds (see the module
    doc); ``full=True`` the whole chain (a stored checkpoint is still checked and reported).
    ``conn`` may be read-only; it needs ``row_factory = sqlite3.Row``. Never raises for bad
    evidence: everything found is in :attr:`ChainReport.problems`.
    """
    report = ChainReport()
    with _snapshot(conn):
        cp = _usable_checkpoint(conn, report, public_keys)
        walk = _ChainWalk(Path(data_dir), public_keys, check_images, report)
        if cp is not None and not full:
            report.mode, report.from_seq = "incremental", cp.seq
            walk.prev_seq, walk.prev_hash = cp.seq, cp.hash
        end_seq = _chain_end(conn)
        if progress is not None:
            progress.total = max(0, end_seq - walk.prev_seq)
        for rows in chain_batches(conn, walk.prev_seq, end_seq):
            walk.step_batch(rows, _image_rows(conn, _record_ids(rows)))
            if progress is not None:
                progress.advance(len(rows))
        if report.mode == "full":
            for (event_id,) in conn.execute(ORPHAN_IMAGES_SQL):
                walk.bad("image", "image rows for a record that does not exist", None, event_id)
        report.last_seq, report.last_hash = walk.prev_seq, walk.prev_hash
        _end_checks(conn, walk, public_keys)
    return report


def _record_ids(rows: list[sqlite3.Row]) -> list[str]:
    return [str(r["event_id"]) for r in rows if r["kind"] == "record"]


def _end_checks(
    conn: sqlite3.Connection, walk: _ChainWalk, public_keys: dict[str, Ed25519PublicKey]
) -> None:
    """The ``seq`` counter and the signed chain head against where the walk ended."""
    counter = _seq_counter(conn)
    if counter is not None and counter > walk.prev_seq:
        walk.bad(
            "counter",
            f"seq counter is {counter} but the last record is {walk.prev_seq}: "
            "records at the end of the chain are missing",
            walk.prev_seq + 1,
            None,
            always=True,
        )
    why = None
    head = chainhead.read(conn)
    walk.report.station_id = None if head is None else str(head["station_id"])
    if chainhead.expected(conn):
        why = chainhead.check(head, walk.prev_seq, walk.prev_hash, public_keys)
    if why:
        walk.bad("head", why, walk.prev_seq + 1 if "missing" in why else None, None, always=True)


class _ChainWalk:
    """One walk along the chain: where it is (``prev_seq``, ``prev_hash``) and what it found."""

    def __init__(
        self,
        data_dir: Path,
        public_keys: dict[str, Ed25519PublicKey],
        check_images: bool,
        report: ChainReport,
    ) -> None:
        self.data_dir = data_dir
        self.public_keys = public_keys
        self.check_images = check_images
        self.images_by_event: dict[str, dict[str, sqlite3.Row]] = {}  # this batch's only
        self.report = report
        self.prev_hash = integrity.GENESIS
        self.prev_seq = 0

    def bad(
        self,
        where: str,
        problem: str,
        seq: int | None,
        event_id: str | None,
        *,
        always: bool = False,
    ) -> None:
        """Note a problem; past :data:`MAX_WALK_PROBLEMS` the walk's own are only counted."""
        walk_problems = len(self.report.problems)
        if not always and walk_problems >= MAX_WALK_PROBLEMS:
            self.report.problems_omitted += 1
            return
        self.report.problems.append(Problem(where, problem, seq, event_id))

    def step_batch(
        self, rows: list[sqlite3.Row], images_by_event: dict[str, dict[str, sqlite3.Row]]
    ) -> None:
        """Check one batch of chain rows with the image rows of its records."""
        self.images_by_event = images_by_event
        for row in rows:
            self.step(row)

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
