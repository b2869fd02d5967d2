"""The legal software id: one SHA-256 over the legally relevant modules (WELMEC 7.2 "S1").

The legally relevant part of the station is what decides a measurement, a plate or a verdict and
what seals the evidence (:data:`LEGALLY_RELEVANT`). A change to any of it changes the id, which
goes into every record, every heartbeat and (as a change of ``software.legal_id``) the audit log.

``id = SHA-256 over, for each file in sorted relative-path order:
relative path (UTF-8) ‖ NUL ‖ SHA-256 of the file's bytes (hex) ‖ LF``. Files that do not exist
in this build are skipped (and listed by :func:`manifest`), so the id is stable for one build.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The legally relevant code and tables, relative to the source root; a directory counts with
#: every file below it. This list is the one place that says what the legal id covers (and
#: docs/evidence.md explains it): what turns device bytes into a weight (the scale decoders and
#: register maps), a weight into a vehicle (the weighing stage), a vehicle and its plates into
#: an event (assemble and the plate vote), an event into a verdict (legal/ and its rule tables),
#: and a verdict into a sealed record (the record builder and the integrity code). Transport,
#: storage mechanics, the uplink and the CLI are not legally relevant: changing them does not
#: change the id.
LEGALLY_RELEVANT = (
    "agent/domain.py",
    "agent/legalid.py",
    "agent/legal",
    "agent/pipeline/weighing.py",
    "agent/pipeline/assemble.py",
    "agent/pipeline/voting.py",
    "agent/store/record.py",
    "agent/store/completeness.py",
    "agent/provenance.py",
    "agent/store/integrity.py",
    "drivers/camera/base.py",
    "drivers/camera/isapi.py",
    "drivers/plate/base.py",
    "drivers/scale/base.py",
    "drivers/scale/registermap.py",
    "drivers/scale/modbus.py",
    "drivers/scale/stream.py",
    "drivers/scale/xk3190.py",
    "drivers/scale/yaohua.py",
    "drivers/scale/toledo.py",
    "drivers/scale/wim_modbus.py",
    "drivers/scale/wim_lines.py",
    "firmware_config/legal",
    "firmware_config/registermaps",
)


def legal_files(root: Path = ROOT) -> list[Path]:
    """The legally relevant files that exist under ``root``, sorted by relative path."""
    found: set[Path] = set()
    for pattern in LEGALLY_RELEVANT:
        for path in root.glob(pattern):
            if path.is_file():
                found.add(path)
            elif path.is_dir():
                found.update(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
                )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def manifest(root: Path = ROOT) -> list[tuple[str, str]]:
    """``(relative path, SHA-256)`` of each legally relevant file."""
    return [
        (p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in legal_files(root)
    ]


def compute_legal_id(root: Path = ROOT) -> str:
    h = hashlib.sha256()
    for rel, digest in manifest(root):
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


@functools.cache
def legal_software_id() -> str:
    """The id of the running code (computed once per process)."""
    return compute_legal_id(ROOT)
