"""The evidence store: one signed, hash-chained record per vehicle, with its photos.

Durability (DESIGN §4): a record's images are written to temp files, fsynced, renamed and their
directory fsynced (and every directory created for them, up to the data directory) before the
row that names them is committed; the record, its image rows, the ``seq`` counter and the outbox
row commit in one SQLite transaction (WAL, ``synchronous=FULL``). A crash at any instant leaves
either the whole record or nothing but stray files, which :meth:`EvidenceStore.recover` removes
at start-up. ``seq`` is the larger of the ``seq`` counter and every ``seq`` ever stored (kept
records and tombstones), plus one, so it is never reused.

Integrity: ``hash = SHA-256(prev_hash ‖ canonical JSON of the record without "integrity")``,
``signature = Ed25519(hash bytes)`` with the station key; see :mod:`agent.store.integrity`.

Retention (:mod:`agent.store.retention`) may drop a delivered record. It leaves a *tombstone* in
``records_pruned``: ``seq``, ``event_id``, ``prev_hash``, ``hash`` and the station's signature of
that hash. ``verify`` walks kept records and tombstones in ``seq`` order, so the chain still
links across pruned records and every tombstone still carries a valid station signature.

Disk full: when retention says the disk is below its reserve (:attr:`EvidenceStore.images_allowed`
is false) or an image write fails with ENOSPC, the record is still committed, without its images
and with ``"storage_flags": ["images_refused_disk_full"]``: the station refuses new images
before it loses records.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from agent.domain import Frame, VehicleEvent, Verdict, VerdictStatus
from agent.store import integrity, outbox
from agent.store.db import Database, DatabaseError
from drivers.paths import ConfigPath

log = logging.getLogger(__name__)

SCHEMA = "roadside.vehicle-event.v1"
IMAGES_REFUSED = "images_refused_disk_full"
TMP_SUFFIX = ".tmp"

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001-records",
        """
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE records (
            seq INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            lane INTEGER NOT NULL,
            measured_at TEXT NOT NULL,
            status TEXT NOT NULL,
            plate TEXT,
            gross_kg INTEGER,
            record_json TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX records_measured_at ON records (measured_at);
        CREATE TABLE images (
            event_id TEXT NOT NULL REFERENCES records (event_id),
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            path TEXT NOT NULL,
            evicted_at TEXT,
            PRIMARY KEY (event_id, name)
        );
        """,
    ),
    (
        "0002-tombstones",
        """
        CREATE TABLE records_pruned (
            seq INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            measured_at TEXT NOT NULL,
            status TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            signature TEXT NOT NULL,
            key_id TEXT NOT NULL,
            pruned_at TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE INDEX images_live ON images (evicted_at, event_id);
        """,
    ),
]

VIOLATIONS = {VerdictStatus.OVERLOADED.value, VerdictStatus.WARNING.value}


class EvidenceConfig(BaseModel):
    """``[evidence]`` in the station config."""

    model_config = ConfigDict(extra="forbid")

    signing_key: ConfigPath = Field(
        default="",
        description="Ed25519 private key (PEM). Empty: $CREDENTIALS_DIRECTORY/signing-key, "
        "else keys/station.key in the data directory (created on first run).",
    )
    disk_budget_mb: int = Field(
        default=0,
        ge=0,
        description="most MB the evidence (database + images) may use; 0: no budget, only "
        "the free-disk watermark applies",
    )
    min_free_mb: int = Field(
        default=1024,
        ge=0,
        description="free-disk watermark, MB: below it delivered evidence is evicted and a "
        "disk_watermark alarm is raised",
    )
    reserve_free_mb: int = Field(
        default=256,
        ge=0,
        description="hard floor, MB: below it new records are stored without their images "
        "(records are never refused)",
    )
    violation_retention_days: int = Field(
        default=365,
        ge=1,
        description="delivered violations (overloaded, warning) are kept at least this many "
        "days; undelivered violations are never evicted",
    )
    retention_interval_s: float = Field(
        default=60.0, gt=0, description="seconds between two disk checks"
    )
    eviction_batch: int = Field(
        default=200, ge=1, description="records evicted per database transaction"
    )


@dataclass(frozen=True)
class RecordContext:
    """Facts about the station that go into every record."""

    station_id: str
    scale_id: str
    accuracy_class: str = ""
    certificate: str = ""
    certificate_valid_until: str = ""
    clock_synchronized: bool | None = False
    software_version: str = ""
    legal_id: str = ""
    audit_counter: int = 0


@dataclass(frozen=True)
class StoredRecord:
    seq: int
    event_id: str
    record: dict[str, Any]


class EvidenceError(Exception):
    """A record could not be stored (disk full, database error)."""


canonical_json = integrity.canonical_json


def event_id_for(station_id: str, measured_at: datetime, seq: int) -> str:
    return f"{station_id}-{measured_at.strftime('%Y%m%d%H%M%S')}-{seq:06d}"


def iso_ms(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def build_record(
    event: VehicleEvent,
    verdict: Verdict,
    ctx: RecordContext,
    *,
    event_id: str,
    seq: int,
    images: list[dict[str, Any]],
    storage_flags: list[str] | None = None,
) -> dict[str, Any]:
    """The record body as DESIGN §5 names its fields (without ``integrity``)."""
    w = event.weighing
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "event_id": event_id,
        "station_id": ctx.station_id,
        "lane": w.lane,
        "seq": seq,
        "measured_at": iso_ms(w.measured_at),
        "clock": {"synchronized": ctx.clock_synchronized},
        "vehicle": {
            "axle_count": w.axle_count,
            "axle_loads_kg": list(w.axle_loads_kg),
            "axle_spacings_mm": list(w.axle_spacings_mm),
            "gross_kg": w.gross_kg,
            "speed_kmh": w.speed_kmh,
            "vehicle_class": verdict.vehicle_class.value,
            "flags": sorted(f.value for f in w.flags),
        },
        "plates": [p.to_dict("position") for p in event.plates],
        "match_flags": sorted(event.match_flags),
        "verdict": verdict.to_dict(),
        "images": images,
        "device": {
            "scale_id": ctx.scale_id,
            "accuracy_class": ctx.accuracy_class,
            "certificate": ctx.certificate,
            "certificate_valid_until": ctx.certificate_valid_until,
        },
        "software": {"version": ctx.software_version, "legal_id": ctx.legal_id},
        "audit_counter": ctx.audit_counter,
        "raw": w.raw,
    }
    if storage_flags:
        body["storage_flags"] = sorted(storage_flags)
    return body


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing the parent of each one created.

    A directory entry is only durable once its parent directory is fsynced; without it a power
    cut can lose a freshly created day directory together with the images inside it.
    """
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def _write_tmp(tmp: Path, data: bytes) -> None:
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_file_atomically(path: Path, data: bytes) -> None:
    """temp file → fsync → rename → fsync the directory. Raises ``OSError``."""
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    _write_tmp(tmp, data)
    tmp.replace(path)
    fsync_dir(path.parent)


def write_files_atomically(files: list[tuple[Path, bytes]]) -> None:
    """Like :func:`write_file_atomically` for files sharing directories: one fsync per directory.

    On ``OSError`` the temp files and files already renamed are removed before re-raising.
    """
    done: list[Path] = []
    try:
        for path, data in files:
            ensure_dir(path.parent)
            tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
            done.append(tmp)
            _write_tmp(tmp, data)
        for path, _ in files:
            path.with_name(f".{path.name}{TMP_SUFFIX}").replace(path)
            done.append(path)
        for parent in sorted({p.parent for p, _ in files}):
            fsync_dir(parent)
    except OSError:
        for p in done:
            p.unlink(missing_ok=True)
        raise


def _is_disk_full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


class _DiskFullError(Exception):
    """SQLite ran out of space after the images were written: retry without them."""


def _is_sqlite_full(err: BaseException) -> bool:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, sqlite3.Error) and (
            getattr(cause, "sqlite_errorcode", None) == 13 or "full" in str(cause)  # SQLITE_FULL
        ):
            return True
        cause = cause.__cause__
    return False


def signing_key_path(config: EvidenceConfig, data_dir: Path) -> Path:
    """Where the station key is: ``[evidence] signing_key``, else the systemd credential
    ``$CREDENTIALS_DIRECTORY/signing-key``, else ``{data_dir}/keys/station.key``."""
    if config.signing_key:
        return Path(config.signing_key)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / "signing-key").exists():
        return Path(creds) / "signing-key"
    return Path(data_dir) / "keys" / "station.key"


def keys_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "keys"


def publish_public_key(signer: integrity.Signer, data_dir: Path) -> Path:
    """Make sure ``{data_dir}/keys`` holds the signer's public key (for ``verify``/``export``).

    Returns the file holding it: ``station.pub`` if that is this key, else
    ``station-{key_id}.pub`` (written when missing).
    """
    kdir = keys_dir(data_dir)
    station_pub = kdir / "station.pub"
    if station_pub.exists():
        try:
            if integrity.key_id_of(integrity.load_public_key(station_pub)) == signer.key_id:
                return station_pub
        except integrity.SigningKeyError:
            pass
    path = station_pub if not station_pub.exists() else kdir / f"station-{signer.key_id}.pub"
    if not path.exists():
        integrity.write_key_file(path, integrity.public_pem(signer.public_key).encode(), mode=0o644)
    return path


def load_signer(
    config: EvidenceConfig, data_dir: Path, *, create_if_missing: bool = False
) -> integrity.Signer:
    """The station's :class:`~agent.store.integrity.Signer` (see :func:`signing_key_path`).

    With ``create_if_missing`` a missing key is generated (logged at WARNING: a production
    station gets its key from ``roadside-agent keygen`` and registers the public key first).
    Raises :class:`~agent.store.integrity.SigningKeyError`.
    """
    path = signing_key_path(config, data_dir)
    if not path.exists() and create_if_missing:
        key = integrity.generate_key(path)
        signer = integrity.Signer(key)
        log.warning(
            "evidence: no signing key; created %s (key id %s). Register its public key "
            "with the platform, or create the key with `roadside-agent keygen` instead.",
            path,
            signer.key_id,
        )
    else:
        signer = integrity.Signer(integrity.load_key(path))
    try:
        publish_public_key(signer, data_dir)
    except OSError as err:
        log.warning("evidence: cannot write the public key into %s: %s", keys_dir(data_dir), err)
    return signer


class EvidenceStore:
    """Stores vehicle records durably and signed. One instance per station process."""

    def __init__(self, db: Database, data_dir: Path, signer: integrity.Signer) -> None:
        self.db = db
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.signer = signer
        #: False while the disk is below its reserve: records are stored without images.
        self.images_allowed = True
        #: Free bytes a record's images must leave on the disk (set from ``reserve_free_mb``).
        self.reserve_free_bytes = 0
        db.migrate("evidence", MIGRATIONS)
        db.migrate("outbox", outbox.MIGRATIONS)

    def recover(self) -> int:
        """Remove temp files, images no committed record names and empty directories.

        Call once at start-up, before the first :meth:`commit`. Returns the files removed.
        """
        if not self.images_dir.exists():
            return 0
        known = {
            row[0]
            for row in self.db.read()
            .execute("SELECT path FROM images WHERE evicted_at IS NULL")
            .fetchall()
        }
        removed = 0
        for path in sorted(self.images_dir.rglob("*")):
            if not path.is_file():
                continue
            rel = str(path.relative_to(self.data_dir))
            if path.name.endswith(TMP_SUFFIX) or rel not in known:
                path.unlink(missing_ok=True)
                removed += 1
                log.warning(
                    "evidence: removed %s: no live record names it (interrupted write or eviction)",
                    rel,
                )
        for d in sorted(self.images_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        return removed

    def _last(self, conn: sqlite3.Connection) -> tuple[int, str]:
        """``(last seq ever used, hash of the chain head)``."""
        row = conn.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()
        counter = int(row[0]) if row else 0
        kept = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        pruned = conn.execute(
            "SELECT seq, hash FROM records_pruned ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        heads = [h for h in (kept, pruned) if h is not None]
        if not heads:
            return counter, integrity.GENESIS
        head = max(heads, key=lambda h: int(h[0]))
        return max(counter, int(head[0])), str(head[1])

    def commit(self, event: VehicleEvent, verdict: Verdict, ctx: RecordContext) -> StoredRecord:
        """Store one vehicle with its frames; returns the signed record.

        Returns only after the record is durable. Raises :class:`EvidenceError` when it cannot
        be stored; nothing partial stays behind. A disk too full for the images (by the
        reserve, or an actual ENOSPC/SQLITE_FULL) stores the record without them.
        """
        images_ok = self.images_allowed and self._room_for(event.frames)
        try:
            return self._commit(event, verdict, ctx, with_images=images_ok)
        except _DiskFullError as full:
            log.error(
                "evidence: disk full committing a record with images; storing it without: %s",
                full.__cause__,
            )
            return self._commit(event, verdict, ctx, with_images=False)

    def _room_for(self, frames: tuple[Frame, ...]) -> bool:
        """Whether the images fit above :attr:`reserve_free_bytes` (statvfs, no I/O wait)."""
        if not frames or not self.reserve_free_bytes:
            return True
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            return True
        needed = sum(len(f.jpeg) for f in frames) + self.reserve_free_bytes
        return st.f_bavail * st.f_frsize >= needed

    def _commit(
        self, event: VehicleEvent, verdict: Verdict, ctx: RecordContext, *, with_images: bool
    ) -> StoredRecord:
        w = event.weighing
        written: list[Path] = []
        try:
            with self.db.write() as conn:
                seq_before, prev_hash = self._last(conn)
                seq = seq_before + 1
                event_id = event_id_for(ctx.station_id, w.measured_at, seq)
                flags: list[str] = []
                images: list[dict[str, Any]] = []
                if event.frames and not with_images:
                    flags.append(IMAGES_REFUSED)
                elif event.frames:
                    try:
                        images = self._write_images(event_id, w.measured_at, event.frames)
                        written = [self.data_dir / i["path"] for i in images]
                    except OSError as err:
                        if not _is_disk_full(err):
                            raise
                        log.error(
                            "evidence: disk full writing the images of %s; stored without "
                            "images: %s",
                            event_id,
                            err,
                        )
                        flags.append(IMAGES_REFUSED)
                body = build_record(
                    event,
                    verdict,
                    ctx,
                    event_id=event_id,
                    seq=seq,
                    images=[{k: v for k, v in i.items() if k != "path"} for i in images],
                    storage_flags=flags,
                )
                record = dict(body)
                record["integrity"] = self.signer.seal(prev_hash, canonical_json(body))
                conn.execute(
                    "INSERT INTO counters (name, value) VALUES ('seq', ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (seq,),
                )
                plate = event.plates[0].text if event.plates else None
                conn.execute(
                    "INSERT INTO records (seq, event_id, lane, measured_at, status, plate,"
                    " gross_kg, record_json, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        event_id,
                        w.lane,
                        body["measured_at"],
                        verdict.status.value,
                        plate,
                        w.gross_kg,
                        canonical_json(record).decode(),
                        record["integrity"]["hash"],
                    ),
                )
                conn.executemany(
                    "INSERT INTO images (event_id, name, role, sha256, bytes, path)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (event_id, i["name"], i["role"], i["sha256"], i["bytes"], i["path"])
                        for i in images
                    ],
                )
                outbox.enqueue(
                    conn,
                    kind="event",
                    ref=event_id,
                    priority=(
                        outbox.Priority.VIOLATION
                        if verdict.status.value in VIOLATIONS
                        else outbox.Priority.PASSAGE
                    ),
                    created_at=body["measured_at"],
                )
        except (OSError, sqlite3.Error, DatabaseError) as err:
            for p in written:  # renamed but never committed: not evidence
                p.unlink(missing_ok=True)
            if written and _is_sqlite_full(err):
                raise _DiskFullError() from err
            if isinstance(err, OSError):
                raise EvidenceError(f"cannot store the record's images: {err}") from err
            raise EvidenceError(f"cannot commit the record: {err}") from err
        return StoredRecord(seq, event_id, record)

    def _write_images(
        self, event_id: str, measured_at: datetime, frames: tuple[Frame, ...]
    ) -> list[dict[str, Any]]:
        """Write a record's frames as ``images/{YYYYMMDD}/{event_id}.{name}``.

        One flat directory per day: a record costs one directory fsync, not two.
        """
        images: list[dict[str, Any]] = []
        files: list[tuple[Path, bytes]] = []
        used: set[str] = set()
        day = measured_at.strftime("%Y%m%d")
        for frame in frames:
            name = f"{frame.role}.jpg"
            n = 2
            while name in used:
                name = f"{frame.role}-{n}.jpg"
                n += 1
            used.add(name)
            rel = Path("images") / day / f"{event_id}.{name}"
            files.append((self.data_dir / rel, frame.jpeg))
            images.append(
                {
                    "name": name,
                    "role": frame.role,
                    "sha256": hashlib.sha256(frame.jpeg).hexdigest(),
                    "bytes": len(frame.jpeg),
                    "captured_at": iso_ms(frame.captured_at),
                    "camera_id": frame.camera_id,
                    "path": str(rel),
                }
            )
        write_files_atomically(files)
        return images

    # -- reading ---------------------------------------------------------------------------

    def get(self, event_id: str) -> dict[str, Any] | None:
        row = (
            self.db.read()
            .execute("SELECT record_json FROM records WHERE event_id = ?", (event_id,))
            .fetchone()
        )
        return None if row is None else dict(json.loads(row[0]))

    def image_files(self, event_id: str) -> list[tuple[str, str, Path | None]]:
        """``(name, sha256, path)`` of a record's images; path ``None`` once evicted."""
        rows = (
            self.db.read()
            .execute(
                "SELECT name, sha256, path, evicted_at FROM images WHERE event_id = ?"
                " ORDER BY name",
                (event_id,),
            )
            .fetchall()
        )
        return [
            (r["name"], r["sha256"], None if r["evicted_at"] else self.data_dir / r["path"])
            for r in rows
        ]

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = (
            self.db.read()
            .execute("SELECT record_json FROM records ORDER BY seq DESC LIMIT ?", (limit,))
            .fetchall()
        )
        return [json.loads(r[0]) for r in rows]


# -- verification ----------------------------------------------------------------------------


@dataclass
class Problem:
    """One thing ``verify`` found wrong; ``seq``/``event_id`` name the record when known."""

    where: str  # record | image | tombstone | counter | audit
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


def _chain_rows(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
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


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def verify_store(  # noqa: C901, PLR0912, PLR0915 (to be split)
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
    report = ChainReport()
    prev_hash = integrity.GENESIS
    prev_seq = 0
    images_by_event: dict[str, dict[str, sqlite3.Row]] = {}
    for row in conn.execute("SELECT * FROM images"):
        images_by_event.setdefault(row["event_id"], {})[row["name"]] = row
    seen_events: set[str] = set()

    def bad(where: str, problem: str, seq: int | None, event_id: str | None) -> None:
        report.problems.append(Problem(where, problem, seq, event_id))

    for row in _chain_rows(conn):
        seq, event_id = int(row["seq"]), str(row["event_id"])
        if seq <= prev_seq:
            bad("record", f"seq {seq} used twice (record and tombstone)", seq, event_id)
            continue
        prev_seq = seq
        if row["kind"] == "tombstone":
            report.pruned += 1
            key = public_keys.get(row["key_id"])
            if row["prev_hash"] != prev_hash:
                bad("tombstone", "chain broken: prev_hash does not match", seq, event_id)
            if key is None:
                bad("tombstone", f"no public key with key id {row['key_id']}", seq, event_id)
            elif not integrity.verify_signature(key, row["hash"], row["signature"]):
                bad("tombstone", "signature invalid for this key", seq, event_id)
            prev_hash = str(row["hash"])
            continue
        report.records += 1
        seen_events.add(event_id)
        try:
            record = json.loads(row["record_json"])
            seal = dict(record.pop("integrity"))
            body = canonical_json(record)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            bad("record", f"record JSON unreadable: {err}", seq, event_id)
            prev_hash = str(row["hash"])
            continue
        key = public_keys.get(str(seal.get("key_id")))
        if key is None:
            bad("record", f"no public key with key id {seal.get('key_id')}", seq, event_id)
        else:
            why = integrity.verify_seal(key, prev_hash, body, seal)
            if why:
                bad("record", why, seq, event_id)
        if row["hash"] != seal.get("hash"):
            bad("record", "hash column differs from the record's integrity hash", seq, event_id)
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
                bad(
                    "record",
                    f"column {name}={col!r} differs from the record ({val!r})",
                    seq,
                    event_id,
                )
        report.max_audit_counter = max(
            report.max_audit_counter, int(record.get("audit_counter", 0))
        )
        rows = images_by_event.get(event_id, {})
        for img in record.get("images", []):
            irow = rows.get(img.get("name"))
            report.images += 1
            if irow is None:
                bad("image", f"image {img.get('name')} has no row", seq, event_id)
                continue
            if irow["sha256"] != img.get("sha256") or irow["bytes"] != img.get("bytes"):
                bad("image", f"image {img['name']}: row differs from the record", seq, event_id)
            if irow["evicted_at"]:
                report.images_evicted += 1
                continue
            if not check_images:
                continue
            path = Path(data_dir) / irow["path"]
            try:
                digest, size = _sha256_file(path)
            except OSError as err:
                bad("image", f"image {img['name']} missing: {err.strerror}", seq, event_id)
                continue
            if size != img.get("bytes"):
                bad(
                    "image",
                    f"image {img['name']} is {size} bytes, record says {img.get('bytes')}",
                    seq,
                    event_id,
                )
            elif digest != img.get("sha256"):
                bad("image", f"image {img['name']} altered: SHA-256 differs", seq, event_id)
        named = {i.get("name") for i in record.get("images", [])}
        for extra in sorted(set(rows) - named):
            bad("image", f"image row {extra} is not in the signed record", seq, event_id)
        prev_hash = str(row["hash"])
    for event_id in sorted(set(images_by_event) - seen_events):
        bad("image", "image rows for a record that does not exist", None, event_id)
    report.last_seq = prev_seq
    report.last_hash = prev_hash
    counter = conn.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()
    if counter is not None and int(counter[0]) > prev_seq:
        bad(
            "counter",
            f"seq counter is {counter[0]} but the last record is {prev_seq}: "
            "records at the end of the chain are missing",
            prev_seq + 1,
            None,
        )
    return report


def verification_keys(
    data_dir: Path, config: EvidenceConfig | None = None
) -> dict[str, Ed25519PublicKey]:
    """Public keys ``verify`` trusts: every ``keys/*.pub`` plus the station key's own."""
    keys = integrity.load_public_keys(keys_dir(data_dir))
    path = signing_key_path(config or EvidenceConfig(), data_dir)
    try:
        pub = integrity.load_key(path).public_key()
    except integrity.SigningKeyError:
        return keys
    keys.setdefault(integrity.key_id_of(pub), pub)
    return keys
