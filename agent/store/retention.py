"""Retention: keep the evidence inside its disk budget without ever losing what matters.

Two limits from ``[evidence]``: ``disk_budget_mb`` (database + live images) and the free-disk
watermark ``min_free_mb``. While either is crossed, delivered evidence is evicted, oldest first,
class by class, each class exhausted before the next is touched:

0. video clips of *delivered passages* (the biggest files; the photos still show the vehicle);
1. images of *delivered passages* (any status but ``overloaded``/``warning``);
2. delivered passages themselves (the record row; a tombstone keeps the chain, see below);
3. delivered violations older than ``violation_retention_days`` (images and row).

*Delivered* means acknowledged by the platform (``outbox.acked_at``); nothing undelivered is ever
evicted, so unsynced violation evidence stays until the platform has it. Below the hard floor
``reserve_free_mb`` the store refuses new *images* (records are still committed, flagged
``images_refused_disk_full``): the station keeps running on a full disk and resumes storing
images when space returns.

Crash safety: an eviction first commits the rows (``images.evicted_at`` set, or the record moved
to a tombstone) and only then deletes the files; a crash in between leaves files no live row
names (listed in ``evictions_pending`` until deleted), which
:meth:`agent.store.evidence.EvidenceStore.recover` removes at start-up.
``verify`` never
sees a live row pointing at a missing file.

Tombstones: a pruned record leaves ``(seq, event_id, measured_at, status, prev_hash, hash,
signature, key_id)`` in ``records_pruned``. ``verify`` walks records and tombstones in ``seq``
order, checks that the chain links through the tombstone and that its hash carries a valid
station signature, so the chain stays verifiable after eviction and ``seq`` is never reused.
(About 460 bytes per pruned record stay forever, measured: docs/evidence.md; compacting them
into signed checkpoints is future work.)

Every eviction is logged (WARNING), counted (``counters``: ``evicted_images``,
``evicted_records``, ``evicted_bytes``) and raises a ``disk_eviction`` alarm; crossing the
watermark raises ``disk_watermark``, the floor ``disk_full``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple, Protocol

from agent.store.alarms import raise_alarm
from agent.store.db import DEFAULT_AUTOCHECKPOINT_PAGES, Database, DatabaseError
from agent.store.evidence import VIOLATIONS, EvidenceConfig, EvidenceStore
from agent.store.record import iso_ms
from drivers.camera.clip import SUFFIX as CLIP_SUFFIX

log = logging.getLogger(__name__)

MB = 1024 * 1024
HYSTERESIS = 0.05


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


class Clock(Protocol):
    def now(self) -> datetime: ...


class _Usage(Protocol):
    @property
    def free(self) -> int: ...


DiskUsageFn = Callable[[Path], _Usage]


@dataclass
class RetentionReport:
    """What one :meth:`Retention.check` saw and did."""

    free_bytes: int = 0
    evidence_bytes: int = 0
    pressure: bool = False
    images_allowed: bool = True
    evicted_images: int = 0
    evicted_records: int = 0
    evicted_bytes: int = 0
    #: what the eviction really gave back to the file system: photo files deleted and the
    #: database file shrunk by ``incremental_vacuum`` (bytes)
    files_freed_bytes: int = 0
    db_shrunk_bytes: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)


# the very terms of the partial indexes records_passages and records_violations_age
# (evidence migration 0003): a query INDEXED BY one of them fails loudly if they part
_NOT_VIOLATION = "r.status NOT IN ({})".format(",".join(f"'{s}'" for s in sorted(VIOLATIONS)))
_VIOLATION = "r.status IN ({})".format(",".join(f"'{s}'" for s in sorted(VIOLATIONS)))
_DELIVERED = (
    "EXISTS (SELECT 1 FROM outbox o WHERE o.kind = 'event' AND o.ref = r.event_id"
    " AND o.acked_at IS NOT NULL)"
)


class Retention:
    """Enforces the disk budget and watermark for one evidence store.

    ``clock`` gives the wall time (retention ages, alarm times); ``disk_usage`` is
    :func:`shutil.disk_usage` unless a test injects a fake.
    """

    def __init__(
        self,
        db: Database,
        store: EvidenceStore,
        config: EvidenceConfig,
        clock: Clock,
        *,
        station_id: str,
        disk_usage: DiskUsageFn = shutil.disk_usage,
    ) -> None:
        self.station_id = station_id
        self.db = db
        self.store = store
        self.config = config
        self.clock = clock
        self.disk_usage = disk_usage
        self._low_free = False
        self._full = False
        self._reserve_releases = store.reserve.releases if store.reserve is not None else 0
        self._unsent: list[tuple[str, datetime, str, dict[str, object]]] = []
        self._alarm_failing = False
        #: where each eviction class resumes its walk of the passages (see :class:`_Walk`)
        self._walks: dict[str, _Walk] = {}
        #: photo file bytes deleted by eviction since this object was made
        self.files_freed = 0
        store.reserve_free_bytes = config.reserve_free_mb * MB

    # -- measuring -------------------------------------------------------------------------

    def free_bytes(self) -> int:
        return int(self.disk_usage(self.store.data_dir).free)

    def evidence_bytes(self) -> int:
        """Live image bytes + database pages in use + the WAL."""
        conn = self.db.read()
        images = conn.execute("SELECT sum(bytes) FROM images WHERE evicted_at IS NULL").fetchone()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        wal = self.db.path.with_name(self.db.path.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        return int(images[0] or 0) + int(pages - free_pages) * int(page_size) + wal_bytes

    def _pressure(self, margin: float = 0.0) -> tuple[int, int, int]:
        """``(bytes to free, free bytes, evidence bytes)``; nothing to free: 0.

        ``margin`` tightens both limits while evicting (hysteresis: one eviction round frees a
        little more than the minimum, so the watermark does not flap with every vehicle).
        """
        free = self.free_bytes()
        used = self.evidence_bytes()
        budget = int(self.config.disk_budget_mb * MB * (1 - margin))
        min_free = int(self.config.min_free_mb * MB * (1 + margin))
        need = max(used - budget if budget else 0, min_free - free, 0)
        return need, free, used

    # -- the check -------------------------------------------------------------------------

    def check(self) -> RetentionReport:
        """Measure, evict what the budget and watermark require, set the image gate, alarm."""
        now = self.clock.now()
        report = RetentionReport()
        files_freed_before = self.files_freed
        self._send_alarms(report)
        need, free, used = self._pressure()
        report.pressure = need > 0
        if need:
            self._alarm_watermark(now, free, used, report)
            # the WAL holds what was committed since the last checkpoint: give it back first
            self.db.checkpoint()
            need, free, used = self._pressure(HYSTERESIS)
        classes: list[tuple[str, Callable[[datetime, int], tuple[int, int, int]]]] = [
            ("passage_clips", self._evict_passage_clips),
            ("passage_images", self._evict_passage_images),
            ("passages", self._evict_passages),
            ("violations_past_retention", self._evict_old_violations),
        ]
        for name, evict in classes:
            while need:
                images, records, freed = evict(now, need)
                if not images and not records:
                    break
                report.evicted_images += images
                report.evicted_records += records
                report.evicted_bytes += freed
                report.by_class[name] = report.by_class.get(name, 0) + images + records
                if records:  # rows gone: give their pages back before measuring again
                    report.db_shrunk_bytes += self._vacuum()
                need, free, used = self._pressure(HYSTERESIS)
        report.files_freed_bytes = self.files_freed - files_freed_before
        if report.evicted_images or report.evicted_records:
            self._log_eviction(now, report)
        if self._low_free and not self._pressure()[0]:
            self._low_free = False
            log.warning("retention: disk back above the watermark (%d MB free)", free // MB)
        self._gate_images(now, free, report)
        self._tend_reserve(now, free, report)
        report.free_bytes, report.evidence_bytes = free, used
        report.images_allowed = self.store.images_allowed
        return report

    def run(self, stop: threading.Event) -> None:
        """The retention thread: :meth:`check` every ``retention_interval_s`` until ``stop``."""
        while True:
            try:
                self.check()
            except Exception:  # a failed check must not end retention for good
                log.exception("retention: disk check failed; retrying next interval")
            if stop.wait(self.config.retention_interval_s):
                return

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="retention", daemon=True)
        thread.start()
        return thread

    def stats(self) -> dict[str, int]:
        rows = self.db.read().execute(
            "SELECT name, value FROM counters WHERE name LIKE 'evicted_%' OR name IN"
            " ('freed_file_bytes', 'freed_db_bytes')"
        )
        return {r[0]: int(r[1]) for r in rows}

    def _vacuum(self) -> int:
        """``incremental_vacuum`` after rows were deleted; the bytes the database shrank by
        (counted as ``freed_db_bytes``)."""
        try:
            shrunk = self.db.incremental_vacuum()
        except Exception as err:  # a full disk can refuse even this; the next check retries
            log.warning("retention: incremental vacuum of %s not done: %s", self.db.path, err)
            return 0
        if shrunk:
            with self.db.write() as conn:
                _add_counter(conn, "freed_db_bytes", shrunk)
        return shrunk

    # -- alarms and the image gate -----------------------------------------------------------

    def _alarm(
        self, alarm: str, now: datetime, message: str, report: RetentionReport, **details: object
    ) -> None:
        """Queue an alarm; one the full disk refuses is kept and queued at the next check."""
        self._unsent.append((alarm, now, message, dict(details)))
        self._send_alarms(report)

    def _send_alarms(self, report: RetentionReport) -> None:
        while self._unsent:
            alarm, at, message, details = self._unsent[0]
            try:
                with self.db.write() as conn:
                    raise_alarm(
                        conn,
                        station_id=self.station_id,
                        kind=alarm,
                        at=at,
                        message=message,
                        details=details,
                    )
            except DatabaseError as err:
                (log.debug if self._alarm_failing else log.error)(
                    "retention: %s alarm not queued yet (retried): %s", alarm, err
                )
                self._alarm_failing = True
                return
            self._alarm_failing = False
            self._unsent.pop(0)
            report.alarms.append(alarm)

    def _alarm_watermark(
        self, now: datetime, free: int, used: int, report: RetentionReport
    ) -> None:
        if self._low_free:
            return
        self._low_free = True
        message = (
            f"evidence over its disk limits: {free // MB} MB free (watermark "
            f"{self.config.min_free_mb} MB), evidence uses {used // MB} MB (budget "
            f"{self.config.disk_budget_mb or 'none'} MB); evicting delivered evidence"
        )
        log.error("retention: %s", message)
        self._alarm("disk_watermark", now, message, report, free_mb=free // MB, used_mb=used // MB)

    def _gate_images(self, now: datetime, free: int, report: RetentionReport) -> None:
        full = free < self.config.reserve_free_mb * MB
        if full and not self._full:
            self._full = True
            self.store.images_allowed = False
            message = (
                f"disk full: {free // MB} MB free, below the {self.config.reserve_free_mb} MB "
                "reserve, after evicting all it may; new records are stored without images"
            )
            log.error("retention: %s", message)
            self._alarm("disk_full", now, message, report, free_mb=free // MB)
        elif not full and self._full:
            self._full = False
            self.store.images_allowed = True
            log.warning(
                "retention: disk space is back (%d MB free); storing images again", free // MB
            )

    def _tend_reserve(self, now: datetime, free: int, report: RetentionReport) -> None:
        """Alarm when the store released part of the database reserve; refill it once the
        disk has room for it above the photo floor."""
        reserve = self.store.reserve
        if reserve is None:
            return
        if reserve.releases != self._reserve_releases:
            held = reserve.held()
            message = (
                f"disk full: the database reserve was released to keep committing records "
                f"({held // MB} of {reserve.size_bytes // MB} MB left, {free // MB} MB free); "
                "free space on the station disk"
            )
            self._alarm("disk_reserve_released", now, message, report, reserve_left_mb=held // MB)
            self._reserve_releases = reserve.releases
        missing = reserve.size_bytes - reserve.held()
        room = free >= self.config.reserve_free_mb * MB + missing
        if missing > 0 and room and reserve.fill():
            log.warning("retention: database reserve restored (%d MB)", reserve.size_bytes // MB)
            self.db.autocheckpoint(DEFAULT_AUTOCHECKPOINT_PAGES)  # the WAL may grow again

    def _log_eviction(self, now: datetime, report: RetentionReport) -> None:
        freed = report.files_freed_bytes + report.db_shrunk_bytes
        message = (
            f"evicted {report.evicted_images} images and {report.evicted_records} delivered "
            f"records; {freed / MB:.1f} MB given back to the disk ("
            f"{report.files_freed_bytes / MB:.1f} MB of photo files, "
            f"{report.db_shrunk_bytes / MB:.1f} MB of database file): {report.by_class}"
        )
        log.warning("retention: %s", message)
        self._alarm(
            "disk_eviction",
            now,
            message,
            report,
            images=report.evicted_images,
            records=report.evicted_records,
            bytes=report.evicted_bytes,
            freed_bytes=freed,
            freed_file_bytes=report.files_freed_bytes,
            freed_db_bytes=report.db_shrunk_bytes,
            by_class=report.by_class,
        )

    # -- the classes -----------------------------------------------------------------------

    def _evict_passage_clips(self, now: datetime, need: int) -> tuple[int, int, int]:
        """Video clips of delivered passages go first: the biggest files, and a passage's
        photos still show the vehicle."""
        return self._evict_passage_images(
            now, need, only=f"i.name LIKE '%{CLIP_SUFFIX}'", walk="passage_clips"
        )

    def _evict_passage_images(
        self, now: datetime, need: int, only: str = "1", walk: str = "passage_images"
    ) -> tuple[int, int, int]:
        """One batch of the oldest delivered passages' images, stopping once ``need`` is freed
        (whole records at a time: a record keeps all its photos or none).

        Walks the passages' index from this class's cursor (:class:`_Walk`): the records
        whose photos are gone already are not read again batch after batch.
        """
        cursor = self._walks.setdefault(walk, _Walk())
        with self.db.write() as conn:
            found = conn.execute(
                "SELECT r.seq, i.event_id, i.name, i.path, i.bytes,"
                f" {_DELIVERED} FROM records r INDEXED BY records_passages"
                " JOIN images i ON i.event_id = r.event_id"
                f" WHERE {_NOT_VIOLATION} AND r.seq > ? AND i.evicted_at IS NULL AND {only}"
                " ORDER BY r.seq, i.name",
                (cursor.after,),
            )
            rows: list[tuple[str, str, str, int]] = []
            total = 0
            stop: int | None = None
            for seq, event_id, name, path, size, delivered in found:
                if (
                    rows
                    and rows[-1][0] != event_id
                    and (total >= need or len(rows) >= self.config.eviction_batch)
                ):
                    stop = int(seq)
                    break
                cursor.saw(int(seq))
                if not delivered:
                    cursor.skipped(int(seq))
                    continue
                rows.append((event_id, name, path, int(size)))
                total += int(size)
            found.close()
            cursor.done(stop)
            conn.executemany(
                "UPDATE images SET evicted_at = ? WHERE event_id = ? AND name = ?",
                [(iso_ms(now), r[0], r[1]) for r in rows],
            )
            _note_unlinks(conn, [r[2] for r in rows])
            _count(conn, images=len(rows), records=0, freed=total)
        self._unlink([r[2] for r in rows])
        return len(rows), 0, total

    def _evict_passages(self, now: datetime, need: int) -> tuple[int, int, int]:
        """One batch of the oldest delivered passages, from the passages' cursor."""
        cursor = self._walks.setdefault("passages", _Walk())
        found = self.db.read().execute(
            f"SELECT r.seq, {_DELIVERED} FROM records r INDEXED BY records_passages"
            f" WHERE {_NOT_VIOLATION} AND r.seq > ? ORDER BY r.seq",
            (cursor.after,),
        )
        seqs: list[int] = []
        stop: int | None = None
        for seq, delivered in found:
            if len(seqs) >= self.config.eviction_batch:
                stop = int(seq)
                break
            cursor.saw(int(seq))
            if delivered:
                seqs.append(int(seq))
            else:
                cursor.skipped(int(seq))
        found.close()
        cursor.done(stop)
        return self._prune(now, seqs, "delivered passage")

    def _evict_old_violations(self, now: datetime, need: int) -> tuple[int, int, int]:
        """One batch of the delivered violations past ``violation_retention_days``, oldest
        first: a range of the violations' age index (the younger ones are not read)."""
        cutoff = iso_ms(now - timedelta(days=self.config.violation_retention_days))
        seqs = [
            int(r[0])
            for r in self.db.read().execute(
                "SELECT r.seq FROM records r INDEXED BY records_violations_age"
                f" WHERE {_VIOLATION} AND julianday(r.measured_at) < julianday(?)"
                f" AND {_DELIVERED} ORDER BY julianday(r.measured_at) LIMIT ?",
                (cutoff, self.config.eviction_batch),
            )
        ]
        return self._prune(now, seqs, "delivered violation past retention")

    def _prune(self, now: datetime, seqs: list[int], reason: str) -> tuple[int, int, int]:
        """Move the records ``seqs`` to tombstones (with their images), in one transaction.

        Each is checked again inside it (still kept, still delivered): the candidates were
        read before the write lock was taken."""
        with self.db.write() as conn:
            rows = [
                r
                for seq in seqs
                for r in conn.execute(
                    "SELECT r.seq, r.event_id, r.measured_at, r.status, r.record_json"
                    f" FROM records r WHERE r.seq = ? AND {_DELIVERED}",
                    (seq,),
                )
            ]
            paths: list[str] = []
            freed = 0
            images = 0
            for seq, event_id, measured_at, status, record_json in rows:
                seal = json.loads(record_json)["integrity"]
                conn.execute(
                    "INSERT INTO records_pruned (seq, event_id, measured_at, status, prev_hash,"
                    " hash, signature, key_id, pruned_at, reason)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        event_id,
                        measured_at,
                        status,
                        seal["prev_hash"],
                        seal["hash"],
                        seal["signature"],
                        seal["key_id"],
                        iso_ms(now),
                        reason,
                    ),
                )
                live = conn.execute(
                    "SELECT path, bytes FROM images WHERE event_id = ? AND evicted_at IS NULL",
                    (event_id,),
                ).fetchall()
                paths += [r[0] for r in live]
                freed += sum(int(r[1]) for r in live)
                images += len(live)
                conn.execute("DELETE FROM images WHERE event_id = ?", (event_id,))
                conn.execute("DELETE FROM records WHERE seq = ?", (seq,))
            _note_unlinks(conn, paths)
            _count(conn, images=images, records=len(rows), freed=freed)
        self._unlink(paths)
        return images, len(rows), freed

    def _unlink(self, rel_paths: list[str]) -> None:
        """Delete evicted photo files; what they took is added to :attr:`files_freed`.

        Their names leave ``evictions_pending`` once deleted (in the transaction that counts
        the bytes); a file this does not get to is deleted by the next start's recover()."""
        freed = 0
        done: list[str] = []
        for rel in rel_paths:
            path = self.store.data_dir / rel
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                done.append(rel)
                continue
            except OSError as err:  # recover() retries at the next start
                log.warning("retention: cannot delete %s: %s", rel, err)
                continue
            done.append(rel)
            freed += size
        self.files_freed += freed
        if done:
            with self.db.write() as conn:
                conn.executemany(
                    "DELETE FROM evictions_pending WHERE path = ?", [(p,) for p in done]
                )
                if freed:
                    _add_counter(conn, "freed_file_bytes", freed)


@dataclass
class _Walk:
    """Where one eviction class resumes its walk of the passages' index, in ``seq`` order.

    ``after``: every passage at or below it has been looked at; those that were delivered
    lost what the class evicts, so the next batch starts above it instead of reading them
    again (a walk from the start each batch made pruning quadratic). Undelivered passages
    are stepped over; the lowest one stepped over is remembered, and once a walk comes back
    empty the next one starts there again, so a passage the platform acknowledges late is
    still found. In memory: a restart walks once from the start.
    """

    after: int = 0
    first_skipped: int | None = None
    last_seen: int = 0

    def saw(self, seq: int) -> None:
        self.last_seen = max(self.last_seen, seq)

    def skipped(self, seq: int) -> None:
        if self.first_skipped is None or seq < self.first_skipped:
            self.first_skipped = seq

    def done(self, stop: int | None) -> None:
        """The batch ended before ``stop`` (a seq not looked at), or at the end (``None``)."""
        if stop is not None:
            self.after = stop - 1
        elif self.first_skipped is not None:
            self.after, self.first_skipped = self.first_skipped - 1, None
        else:
            self.after = max(self.after, self.last_seen)


def _note_unlinks(conn: sqlite3.Connection, rel_paths: list[str]) -> None:
    """Name the files an eviction is about to delete, in its transaction (see recover())."""
    conn.executemany(
        "INSERT OR IGNORE INTO evictions_pending (path) VALUES (?)", [(p,) for p in rel_paths]
    )


def _add_counter(conn: sqlite3.Connection, name: str, n: int) -> None:
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, n),
    )


def _count(conn: sqlite3.Connection, *, images: int, records: int, freed: int) -> None:
    for name, n in (
        ("evicted_images", images),
        ("evicted_records", records),
        ("evicted_bytes", freed),
    ):
        if n:
            _add_counter(conn, name, n)
