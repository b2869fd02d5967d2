"""The evidence store: one signed, hash-chained record per vehicle, with its photos.

Durability (DESIGN §4): images are written to a temp file, fsynced, renamed and the directory
fsynced before the row that names them is committed; the record, its image rows, the ``seq``
counter and the outbox row commit in one SQLite transaction (WAL, ``synchronous=FULL``). A crash
at any instant leaves either the whole record or nothing but stray files, which
:meth:`EvidenceStore.recover` removes at start-up.

Integrity: ``hash = SHA-256(prev_hash ‖ canonical JSON of the record without "integrity")``,
``signature = Ed25519(hash bytes)`` with the station key; see :mod:`agent.integrity`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent import integrity, outbox
from agent.db import Database
from agent.domain import Frame, VehicleEvent, Verdict, VerdictStatus
from drivers.paths import ConfigPath

log = logging.getLogger(__name__)

SCHEMA = "roadside.vehicle-event.v1"

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


@dataclass(frozen=True)
class RecordContext:
    """Facts about the station that go into every record."""

    station_id: str
    scale_id: str
    accuracy_class: str = ""
    certificate: str = ""
    certificate_valid_until: str = ""
    clock_synchronized: bool = False
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


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, UTF-8, no spaces: the bytes that are hashed and signed."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


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
) -> dict[str, Any]:
    """The record body as DESIGN §5 names its fields (without ``integrity``)."""
    w = event.weighing
    return {
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
        "plates": [
            {
                "position": p.position,
                "text": p.text,
                "color": p.color,
                "confidence": round(p.confidence, 3),
            }
            for p in event.plates
        ],
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """temp file → fsync → rename → fsync the directory. Raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


class EvidenceStore:
    """Stores vehicle records durably and signed. One instance per station process."""

    def __init__(self, db: Database, data_dir: Path, signer: integrity.Signer) -> None:
        self.db = db
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.signer = signer
        db.migrate("evidence", MIGRATIONS)
        db.migrate("outbox", outbox.MIGRATIONS)

    def recover(self) -> int:
        """Remove temp files and images no committed record names. Returns files removed."""
        if not self.images_dir.exists():
            return 0
        known = {row[0] for row in self.db.read().execute("SELECT path FROM images").fetchall()}
        removed = 0
        for path in sorted(self.images_dir.rglob("*")):
            if not path.is_file():
                continue
            rel = str(path.relative_to(self.data_dir))
            if path.name.endswith(".tmp") or rel not in known:
                path.unlink(missing_ok=True)
                removed += 1
                log.warning("evidence: removed %s left by an interrupted write", rel)
        return removed

    def _last(self, conn: sqlite3.Connection) -> tuple[int, str]:
        row = conn.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()
        seq = int(row[0]) if row else 0
        last = conn.execute("SELECT hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return seq, (last[0] if last else integrity.GENESIS)

    def commit(self, event: VehicleEvent, verdict: Verdict, ctx: RecordContext) -> StoredRecord:
        """Store one vehicle with its frames; returns the signed record.

        Raises :class:`EvidenceError` when it cannot be stored; nothing partial stays behind.
        """
        w = event.weighing
        try:
            with self.db.write() as conn:
                seq_before, prev_hash = self._last(conn)
                seq = seq_before + 1
                event_id = event_id_for(ctx.station_id, w.measured_at, seq)
                images = self._write_images(event_id, w.measured_at, event.frames)
                body = build_record(
                    event,
                    verdict,
                    ctx,
                    event_id=event_id,
                    seq=seq,
                    images=[{k: v for k, v in i.items() if k != "path"} for i in images],
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
        except OSError as err:
            raise EvidenceError(f"cannot store the record's images: {err}") from err
        except sqlite3.Error as err:
            raise EvidenceError(f"cannot commit the record: {err}") from err
        return StoredRecord(seq, event_id, record)

    def _write_images(
        self, event_id: str, measured_at: datetime, frames: tuple[Frame, ...]
    ) -> list[dict[str, Any]]:
        images: list[dict[str, Any]] = []
        used: set[str] = set()
        day = measured_at.strftime("%Y%m%d")
        for frame in frames:
            name = f"{frame.role}.jpg"
            n = 2
            while name in used:
                name = f"{frame.role}-{n}.jpg"
                n += 1
            used.add(name)
            rel = Path("images") / day / event_id / name
            write_file_atomically(self.data_dir / rel, frame.jpeg)
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
