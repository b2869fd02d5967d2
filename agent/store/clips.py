"""A record's video clips as evidence files: remuxed, named, hashed (DESIGN §4a ``videos``).

A clip is stored like a photo (:mod:`agent.store.evidence`): written to a temp file, fsynced and
renamed before the row that names it commits, one row in ``images`` (its name ends in
``.mjpeg``), so ``verify``, the uplink and retention handle it as they handle photos. Its
entry in the signed record::

    {"name": "front.mjpeg", "role": "front", "camera_id": "cam-front-1",
     "content_type": "video/x-motion-jpeg", "sha256": "…", "bytes": 2345678,
     "start": "…+08:00", "end": "…+08:00", "frames": 21, "frame_bytes": [112233, …]}
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from agent.domain import Clip
from agent.store.record import iso_ms
from drivers.camera.clip import CONTENT_TYPE, SUFFIX, remux


def is_clip(name: str) -> bool:
    """Whether an evidence file name is a clip's (rows of ``images`` hold both)."""
    return name.endswith(SUFFIX)


def content_type(name: str) -> str:
    """The MIME type an evidence file travels with, by its name."""
    return CONTENT_TYPE if is_clip(name) else "image/jpeg"


def clip_entries(
    clips: tuple[Clip, ...], event_id: str, day: str, max_bytes: int = 0
) -> list[dict[str, Any]]:
    """The record's ``videos`` entries, each with its ``path`` (relative to the data
    directory) and its ``data`` (the bytes to write), which the caller removes."""
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    for clip in clips:
        stream = remux(clip, max_bytes)
        if not stream.frames:
            continue
        name, n = f"{clip.role}{SUFFIX}", 2
        while name in used:
            name, n = f"{clip.role}-{n}{SUFFIX}", n + 1
        used.add(name)
        out.append(
            {
                "name": name,
                "role": clip.role,
                "camera_id": clip.camera_id,
                "content_type": CONTENT_TYPE,
                "sha256": hashlib.sha256(stream.data).hexdigest(),
                "bytes": len(stream.data),
                "start": iso_ms(stream.frames[0].captured_at),
                "end": iso_ms(stream.frames[-1].captured_at),
                "frames": len(stream.frames),
                "frame_bytes": stream.frame_bytes,
                "path": str(Path("images") / day / f"{event_id}.{name}"),
                "data": stream.data,
            }
        )
    return out
