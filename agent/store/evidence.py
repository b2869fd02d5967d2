"""The evidence store: one signed, hash-chained record per vehicle, with its photos.

This module stores; its neighbours say what a record is (:mod:`agent.store.record`), write
files durably (:mod:`agent.store.files`), find the station key (:mod:`agent.store.keys`) and
re-check the store (:mod:`agent.store.verify`).

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
that hash. :func:`agent.store.verify.verify_store` walks kept records and tombstones in ``seq``
order, so the chain still links across pruned records and every tombstone still carries a valid
station signature.

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
import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.domain import Clip, Frame, VehicleEvent, Verdict, VerdictStatus
from agent.store import chainhead, files, integrity, outbox, readonly
from agent.store.alarms import raise_alarm
from agent.store.clips import clip_entries
from agent.store.completeness import DEFAULT_REQUIRED, EvidenceName
from agent.store.db import LOW_DISK_AUTOCHECKPOINT_PAGES, Database, DatabaseError
from agent.store.record import RecordContext, StoredRecord, build_record, event_id_for, iso_ms
from agent.store.reserve import DiskReserve
from drivers.paths import ConfigPath

log = logging.getLogger(__name__)

IMAGES_REFUSED = "images_refused_disk_full"
EVICTIONS_MIGRATION = "0005-evictions-pending"
#: Day folders (``images/YYYYMMDD``) recover() checks at start-up: the newest ones by name
#: (a record measured at 23:59:59 may be committed after one of 00:00:00).
RECOVER_NEWEST_DAYS = 2

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
    (
        # every hot path reads an index, not the records table (one 2.5 KB record per page):
        # events --plate/--status/--lane walk (column, seq) newest first; --since and resend
        # take a time range as instants (julianday: records carry different offsets);
        # retention walks passages by seq and violations by age without touching the others
        "0003-query-indexes",
        """
        CREATE INDEX records_plate ON records (plate);
        CREATE INDEX records_status ON records (status);
        CREATE INDEX records_lane ON records (lane);
        CREATE INDEX records_measured_jd ON records (julianday(measured_at));
        CREATE INDEX records_passages ON records (seq)
            WHERE status NOT IN ('overloaded', 'warning');
        CREATE INDEX records_violations_age ON records (julianday(measured_at))
            WHERE status IN ('overloaded', 'warning');
        """,
    ),
    (
        # kept records by verdict status, kept by triggers in the transaction that inserts or
        # deletes a record (commit, retention's tombstones, anything else): status reads a
        # handful of rows instead of counting every record
        "0004-record-counts",
        """
        CREATE TABLE record_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
        INSERT INTO record_counts (status, n) SELECT status, count(*) FROM records GROUP BY status;
        CREATE TRIGGER records_counted_insert AFTER INSERT ON records BEGIN
            INSERT INTO record_counts (status, n) VALUES (NEW.status, 1)
                ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER records_counted_delete AFTER DELETE ON records BEGIN
            UPDATE record_counts SET n = n - 1 WHERE status = OLD.status;
        END;
        CREATE TRIGGER records_counted_update AFTER UPDATE OF status ON records BEGIN
            UPDATE record_counts SET n = n - 1 WHERE status = OLD.status;
            INSERT INTO record_counts (status, n) VALUES (NEW.status, 1)
                ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END;
        """,
    ),
    (
        # photo files retention has evicted (rows committed) but not yet deleted: a crash in
        # between leaves exactly these, so recover() need not list every photo on the disk
        EVICTIONS_MIGRATION,
        """
        CREATE TABLE evictions_pending (path TEXT PRIMARY KEY);
        """,
    ),
]

VIOLATIONS = {VerdictStatus.OVERLOADED.value, VerdictStatus.WARNING.value}


class EvidenceConfig(BaseModel):
    """``[evidence]`` in the station config."""

    model_config = ConfigDict(extra="forbid")

    signing_key: ConfigPath = Field(
        default="",
        description="Ed25519 private key (PEM); a file named here must exist (check-config and "
        "run refuse a missing one rather than sign with a new, unregistered key). Empty: "
        "$CREDENTIALS_DIRECTORY/signing-key, else keys/station.key in the data directory "
        "(created on first run).",
        json_schema_extra={"secret": True},
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
    db_reserve_mb: int = Field(
        default=64,
        ge=0,
        description="MB preallocated in db-reserve.bin for the database: released step by "
        "step when the disk is full, so records (without photos) are still committed; "
        "refilled when space returns. 0: no reserve",
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
    clip_max_mb: float = Field(
        default=4.0,
        ge=0,
        description="largest video clip, MB (0: no limit); a longer clip keeps every k-th frame "
        "so it spans the passage at a lower frame rate and cannot starve live violations on "
        "a thin uplink",
    )
    composite_image: bool = Field(
        default=True,
        description="add the composite evidence image (合成图: front, side, rear photos and a "
        "Chinese caption band) to every record with photos, as its own images entry "
        "role=composite",
    )
    composite_font: ConfigPath = Field(
        default="",
        description="CJK font file for the composite's caption; empty: the first found of "
        "fonts-noto-cjk, fonts-wqy-microhei (none found: no composite, evidence.composite "
        "= no_cjk_font)",
    )
    required: list[EvidenceName] = Field(
        default_factory=lambda: list(DEFAULT_REQUIRED),
        description="what a chargeable record needs (names: plate, front_image, rear_image, "
        "side_image (only where the lane has a side camera), video, clock_sync, certificate); "
        "a record lacking one is sealed with evidence.complete false and never chargeable",
    )


class EvidenceError(Exception):
    """A record could not be stored (disk full, database error)."""


def _is_disk_full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(EvidenceError):
    """The record cannot be committed: the disk is full and the database reserve is used up.

    Nothing partial is left; the caller keeps the vehicle and tries again.
    """


class _DiskFullError(Exception):
    """SQLite ran out of space: retry without images, then with more of the reserve."""


def _is_sqlite_full(err: BaseException) -> bool:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, sqlite3.Error) and (
            getattr(cause, "sqlite_errorcode", None) == 13 or "full" in str(cause)  # SQLITE_FULL
        ):
            return True
        cause = cause.__cause__
    return False


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
        #: The database's disk reserve (:mod:`agent.store.reserve`), released when SQLite
        #: finds the disk full; ``None``: no reserve (a commit on a full disk then fails).
        self.reserve: DiskReserve | None = None
        #: Largest clip file (``clip_max_mb``): bigger clips keep every k-th frame only.
        self.clip_max_bytes = 0
        #: the first start after the upgrade that added ``evictions_pending``: evictions of
        #: the older version may have left files anywhere, so recover() sweeps every photo once
        self._full_sweep_due = EVICTIONS_MIGRATION in db.migrate("evidence", MIGRATIONS)
        db.migrate("outbox", outbox.MIGRATIONS)
        if db.migrate("chainhead", chainhead.MIGRATIONS):
            self._seal_first_head()

    def _seal_first_head(self) -> None:
        """A database from before the chain head: seal its current end once (at upgrade)."""
        with self.db.write() as conn:
            seq, head_hash = self._last(conn)
            row = conn.execute(
                "SELECT event_id FROM records UNION ALL SELECT event_id FROM records_pruned LIMIT 1"
            ).fetchone()
            if seq and row is not None:
                station_id = str(row[0]).rsplit("-", 2)[0]  # {station}-{time}-{seq}
                chainhead.seal(conn, self.signer, station_id=station_id, seq=seq, hash_=head_hash)
                log.warning("evidence: chain head sealed for the first time at seq %d", seq)

    def recover(self, *, full: bool = False) -> int:
        """Remove what an interrupted run left: temp files, photos no committed record names,
        photos retention evicted but had not deleted yet, and empty day folders.

        Call once at start-up, before the first :meth:`commit` (a file being written by a
        commit in flight would look stray). It checks only where a crash can leave something:
        the files in ``evictions_pending`` (retention's list, exact) and the newest
        :data:`RECOVER_NEWEST_DAYS` day folders plus the newest record's (where the writes in
        flight were), so start-up does not grow with the photos kept. ``full``: every photo
        on the disk (a maintenance sweep; done once by itself after the upgrade to this
        schema) — a file left in an older folder by a crash across a backward clock step
        waits for that. Returns the files removed.
        """
        removed = self._finish_evictions()
        if not self.images_dir.exists():
            self._full_sweep_due = False  # no photos: nothing an old version left
            return removed
        if full or self._full_sweep_due:
            days = sorted(d for d in self.images_dir.iterdir() if d.is_dir())
        else:
            days = self._newest_days()
        conn = self.db.read()
        last_seq = None if full or self._full_sweep_due else self._last(conn)[0]
        for day in days:
            removed += self._sweep_day(conn, day, last_seq)
        self._full_sweep_due = False
        return removed

    def _finish_evictions(self) -> int:
        """Delete the photo files retention evicted before a crash stopped it."""
        paths = [str(r[0]) for r in self.db.read().execute("SELECT path FROM evictions_pending")]
        removed = 0
        for rel in paths:
            path = self.data_dir / rel
            if path.exists():
                path.unlink(missing_ok=True)
                removed += 1
                log.warning("evidence: removed %s: evicted before an interruption", rel)
        if paths:
            with self.db.write() as conn:
                conn.executemany(
                    "DELETE FROM evictions_pending WHERE path = ?", [(p,) for p in paths]
                )
        return removed

    def _newest_days(self) -> list[Path]:
        """The day folders a crash can have left a stray file in (see :meth:`recover`)."""
        names = sorted(d.name for d in self.images_dir.iterdir() if d.is_dir())
        wanted = set(names[-RECOVER_NEWEST_DAYS:])
        row = self.db.read().execute("SELECT measured_at FROM records ORDER BY seq DESC LIMIT 1")
        newest = row.fetchone()
        if newest is not None:  # its local date, as _write_images names the folder
            wanted.add(str(newest[0])[:10].replace("-", ""))
        return [self.images_dir / n for n in sorted(wanted) if (self.images_dir / n).is_dir()]

    def _sweep_day(self, conn: sqlite3.Connection, day: Path, last_seq: int | None) -> int:
        """Remove temp files and stray photos from one day folder (and the folder once empty).

        ``last_seq`` (the last ``seq`` committed): a photo is stray when its name carries a
        later ``seq`` (written for a record the crash kept from committing; recover() runs
        before the next commit), so the check is the folder's listing and no query.
        ``None``: stray when no live image row names it (one look-up per file).
        """
        removed = 0
        for path in sorted(day.iterdir()):
            if not path.is_file():
                continue
            rel = str(path.relative_to(self.data_dir))
            if path.name.endswith(files.TMP_SUFFIX) or _stray(conn, rel, last_seq):
                path.unlink(missing_ok=True)
                removed += 1
                log.warning(
                    "evidence: removed %s: no live record names it (interrupted write or eviction)",
                    rel,
                )
        if not any(day.iterdir()):
            day.rmdir()
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
        with_images = self.images_allowed and self._room_for(
            (*event.frames, *(f for c in event.clips for f in c.frames))
        )
        checkpointed = False
        while True:
            try:
                return self._commit(event, verdict, ctx, with_images=with_images)
            except _DiskFullError as full:
                if with_images and event.frames:
                    log.error(
                        "evidence: disk full committing a record with images; storing it "
                        "without: %s",
                        full.__cause__,
                    )
                    with_images = False
                    continue
                if not checkpointed:
                    # the WAL's own blocks are reused from its start after a checkpoint:
                    # often that is all a record without photos needs; and from now on the
                    # WAL is kept short (retention lifts that when the disk has room again)
                    checkpointed = True
                    self.db.autocheckpoint(LOW_DISK_AUTOCHECKPOINT_PAGES)
                    self.db.checkpoint("RESTART")
                    continue
                checkpointed = False
                if not self._release_reserve():
                    raise DiskFullError(
                        f"disk full: the record cannot be committed even without photos and "
                        f"the database reserve is used up ({self.data_dir}): {full.__cause__}"
                    ) from full.__cause__

    def _release_reserve(self) -> bool:
        """Give SQLite room on a full disk: a step of the reserve, then a checkpoint that
        keeps the WAL's blocks for reuse. False when there is no reserve left."""
        if self.reserve is None or not self.reserve.release():
            return False
        self.db.checkpoint("RESTART")
        return True

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
        """One record in one write transaction: images first (durable before the row that
        names them), then the sealed record, its image rows, ``seq`` and the outbox row."""
        written: list[Path] = []
        try:
            with self.db.write() as conn:
                seq_before, prev_hash = self._last(conn)
                seq = seq_before + 1
                event_id = event_id_for(ctx.station_id, event.weighing.measured_at, seq)
                images, videos, flags = self._images_for(event, event_id, with_images=with_images)
                written = [self.data_dir / i["path"] for i in (*images, *videos)]
                body = build_record(
                    event,
                    verdict,
                    ctx,
                    event_id=event_id,
                    seq=seq,
                    images=[{k: v for k, v in i.items() if k != "path"} for i in images],
                    storage_flags=flags,
                    videos=[{k: v for k, v in i.items() if k != "path"} for i in videos],
                )
                record = dict(body)
                record["integrity"], record_json = integrity.seal_record(
                    self.signer, prev_hash, body
                )
                # a clip's file is a row of `images` like a photo (verify, uplink, retention
                # treat them alike); its name ends in .mjpeg
                _insert(conn, event, verdict, record, [*images, *videos], record_json)
                self._seal_head(conn, ctx, seq_before, prev_hash, record)
        except (OSError, sqlite3.Error, DatabaseError) as err:
            for p in written:  # renamed but never committed: not evidence
                p.unlink(missing_ok=True)
            if _is_sqlite_full(err):
                raise _DiskFullError() from err
            if isinstance(err, OSError):
                raise EvidenceError(f"cannot store the record's images: {err}") from err
            raise EvidenceError(f"cannot commit the record: {err}") from err
        return StoredRecord(seq, event_id, record)

    def _seal_head(
        self,
        conn: sqlite3.Connection,
        ctx: RecordContext,
        seq_before: int,
        prev_hash: str,
        record: dict[str, Any],
    ) -> None:
        """The new signed chain head; an old one that no longer names the chain's end (records
        cut off or replaced while the station was not looking) is an alarm first."""
        why = chainhead.check_before_commit(conn, seq_before, prev_hash)
        if why:
            log.error("evidence: %s", why)
            raise_alarm(
                conn,
                station_id=ctx.station_id,
                kind="chain_head_mismatch",
                at=datetime.fromisoformat(record["measured_at"]),
                message=why,
                details={"seq": record["seq"], "event_id": record["event_id"]},
            )
        chainhead.seal(
            conn,
            self.signer,
            station_id=ctx.station_id,
            seq=record["seq"],
            hash_=record["integrity"]["hash"],
        )

    def _images_for(
        self, event: VehicleEvent, event_id: str, *, with_images: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        """``(image entries, video entries (with their path), storage flags)``: the frames and
        clips written durably, or none and :data:`IMAGES_REFUSED` when they may not or cannot
        be (disk full)."""
        if not event.frames and not event.clips:
            return [], [], []
        if not with_images:
            return [], [], [IMAGES_REFUSED]
        try:
            images, videos = self._write_images(
                event_id, event.weighing.measured_at, event.frames, event.clips
            )
            return images, videos, []
        except OSError as err:
            if not _is_disk_full(err):
                raise
            log.error(
                "evidence: disk full writing the images of %s; stored without images: %s",
                event_id,
                err,
            )
            return [], [], [IMAGES_REFUSED]

    def _write_images(
        self,
        event_id: str,
        measured_at: datetime,
        frames: tuple[Frame, ...],
        clips: tuple[Clip, ...] = (),
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Write a record's frames and clips as ``images/{YYYYMMDD}/{event_id}.{name}``.

        One flat directory per day: a record costs one directory fsync, not two.
        """
        images: list[dict[str, Any]] = []
        to_write: list[tuple[Path, bytes]] = []
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
            to_write.append((self.data_dir / rel, frame.jpeg))
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
        videos = clip_entries(clips, event_id, day, self.clip_max_bytes)
        to_write += [(self.data_dir / v["path"], v.pop("data")) for v in videos]
        files.write_files_atomically(to_write)
        return images, videos

    # -- reading ---------------------------------------------------------------------------

    def get(self, event_id: str) -> dict[str, Any] | None:
        text = readonly.record_json(self.db.read(), event_id)
        return None if text is None else dict(json.loads(text))

    def image_files(self, event_id: str) -> list[tuple[str, str, Path | None]]:
        """``(name, sha256, path)`` of a record's images; path ``None`` once evicted."""
        return [
            (r.name, r.sha256, None if r.evicted_at else self.data_dir / r.path)
            for r in readonly.image_rows(self.db.read(), event_id)
        ]


def _insert(
    conn: sqlite3.Connection,
    event: VehicleEvent,
    verdict: Verdict,
    record: dict[str, Any],
    images: list[dict[str, Any]],
    record_json: bytes | None = None,
) -> None:
    """The rows of one sealed record (caller's transaction): ``seq``, record, images, outbox.

    ``record_json``: the record's canonical JSON when the caller has it already
    (:func:`agent.store.integrity.seal_record`)."""
    w = event.weighing
    seq, event_id = record["seq"], record["event_id"]
    conn.execute(
        "INSERT INTO counters (name, value) VALUES ('seq', ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (seq,),
    )
    plate = event.plates[0].text if event.plates else None
    body = integrity.canonical_json(record) if record_json is None else record_json
    conn.execute(
        "INSERT INTO records (seq, event_id, lane, measured_at, status, plate,"
        " gross_kg, record_json, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq,
            event_id,
            w.lane,
            record["measured_at"],
            verdict.status.value,
            plate,
            w.gross_kg,
            body.decode(),
            record["integrity"]["hash"],
        ),
    )
    conn.executemany(
        "INSERT INTO images (event_id, name, role, sha256, bytes, path) VALUES (?, ?, ?, ?, ?, ?)",
        [(event_id, i["name"], i["role"], i["sha256"], i["bytes"], i["path"]) for i in images],
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
        created_at=record["measured_at"],
        size_bytes=len(body) + sum(i["bytes"] for i in images),  # what the uplink will send
    )


#: ``{event_id}.{name}``: the event id ends ``-{YYYYmmddHHMMSS}-{seq:06d}`` (record.event_id_for)
_PHOTO_NAME = re.compile(r"^.+-\d{14}-(\d{6,})\.[^.].*$")


def _stray(conn: sqlite3.Connection, rel: str, last_seq: int | None) -> bool:
    """Whether the photo file ``rel`` belongs to no committed record (see _sweep_day)."""
    m = _PHOTO_NAME.match(Path(rel).name)
    if last_seq is not None and m is not None:
        return int(m.group(1)) > last_seq
    return not _names_live_image(conn, rel)


def _names_live_image(conn: sqlite3.Connection, rel: str) -> bool:
    """Whether a live image row names the file ``rel`` (``images/{day}/{event_id}.{name}``).

    Looked up by the images' key: the file name splits at one of its dots into event id and
    image name (an event id has none unless the station id does, so each split is tried).
    """
    filename = Path(rel).name
    splits = [i for i, ch in enumerate(filename) if ch == "."]
    for i in splits:
        row = conn.execute(
            "SELECT path FROM images WHERE event_id = ? AND name = ? AND evicted_at IS NULL",
            (filename[:i], filename[i + 1 :]),
        ).fetchone()
        if row is not None and str(row[0]) == rel:
            return True
    return False


def requeue_kept_events(conn: sqlite3.Connection, since: datetime, until: datetime) -> int:
    """Send again the kept records measured in ``[since, until]`` (the platform's ``resend``),
    acknowledged or not; returns the outbox rows re-opened (caller's write transaction).

    The range is found on the records' time index (as instants: ``julianday``), and each
    record's outbox row by its key, so the cost is the records in the range, not the outbox.
    An evicted record (a tombstone) has nothing left to send and is not re-opened: its row
    would wait for an ack forever. (The outbox row of a record is created with the record's
    ``measured_at`` as its ``created_at``: this selects what a scan of the outbox did.)
    """
    cur = conn.execute(
        "UPDATE outbox SET acked_at = NULL, next_attempt_mono = NULL"
        " WHERE kind = 'event' AND ref IN (SELECT event_id FROM records"
        " WHERE julianday(measured_at) BETWEEN ? AND ?)",
        (outbox.julian_day(since), outbox.julian_day(until)),
    )
    return cur.rowcount


def upgrade_pending(db: Database) -> bool:
    """Whether opening the store will apply evidence migrations (on a big old store: one pass
    over the records per new index, minutes on an SD card; the caller asks systemd for time)."""
    done = {
        str(r[0])
        for r in db.read().execute("SELECT name FROM migrations WHERE component = 'evidence'")
    }
    return done != set() and any(name not in done for name, _ in MIGRATIONS)
