"""Video clips: a camera's JPEG frames remuxed into one Motion-JPEG stream, no re-encoding.

A live camera already holds its recent frames as JPEG in its ring buffer (:mod:`.live`); a clip
of a passage is those frames, cut by time and written one after the other. That is a Motion-JPEG
elementary stream (``video/x-motion-jpeg``; what ``ffmpeg -f mjpeg`` writes and ``ffplay`` /
VLC play): every frame stays byte for byte what the camera encoded, so the clip costs a copy, not
a core (re-encoding H.264 on a Raspberry Pi would). The frame boundaries are kept beside the
stream (``frame_bytes``) so a reader splits it exactly, even when a JPEG carries an EXIF
thumbnail with its own start/end markers.

Big clips must not starve live violations on a thin uplink: :func:`remux` keeps a clip under
``max_bytes`` by dropping frames evenly (a lower frame rate, never a cut-off passage).

The simulated twin (:func:`simulated_frames`) turns one still photo into a short pan, for the
replay camera and the demo.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from datetime import datetime, timedelta

from drivers.camera.base import Clip, Frame

CONTENT_TYPE = "video/x-motion-jpeg"
SUFFIX = ".mjpeg"


@dataclass(frozen=True)
class MotionJpeg:
    """A remuxed clip: the stream and the frames it holds (after any thinning)."""

    data: bytes
    frames: tuple[Frame, ...]

    @property
    def frame_bytes(self) -> list[int]:
        return [len(f.jpeg) for f in self.frames]


def remux(clip: Clip, max_bytes: int = 0) -> MotionJpeg:
    """The clip's frames concatenated into one Motion-JPEG stream.

    ``max_bytes`` > 0: every k-th frame only, the smallest k that fits (the first and the last
    frame always stay, so the clip still spans the passage).
    """
    frames = clip.frames
    total = sum(len(f.jpeg) for f in frames)
    step = 1
    while max_bytes and total > max_bytes and step < len(frames):
        step += 1
        kept = _every(frames, step)
        total = sum(len(f.jpeg) for f in kept)
    kept = _every(frames, step)
    return MotionJpeg(b"".join(f.jpeg for f in kept), kept)


def _every(frames: tuple[Frame, ...], step: int) -> tuple[Frame, ...]:
    if step <= 1 or len(frames) <= 2:
        return frames
    picked = list(frames[::step])
    if picked[-1] is not frames[-1]:
        picked.append(frames[-1])
    return tuple(picked)


def split(data: bytes, frame_bytes: list[int]) -> list[bytes]:
    """The JPEG frames of a Motion-JPEG stream, by the sizes recorded beside it.

    Raises ``ValueError`` when the sizes do not add up to the stream (a damaged clip).
    """
    if sum(frame_bytes) != len(data):
        raise ValueError(f"clip is {len(data)} bytes, its frames add up to {sum(frame_bytes)}")
    out, pos = [], 0
    for n in frame_bytes:
        out.append(data[pos : pos + n])
        pos += n
    return out


def simulated_frames(
    photo: bytes, *, start: datetime, end: datetime, fps: float, width_px: int = 360
) -> list[tuple[datetime, bytes]]:
    """A still photo as a short clip: the picture panning slowly, ``fps`` frames a second.

    The simulated twin of a live camera's ring buffer (the demo, tests). Encoded once per photo
    and frame count (cached): it stands for frames a real camera has already encoded.
    """
    n = max(1, int((end - start).total_seconds() * fps) + 1)
    jpegs = _pan(photo, n, width_px)
    return [(start + timedelta(seconds=i / fps), jpeg) for i, jpeg in enumerate(jpegs)]


@functools.lru_cache(maxsize=16)
def _pan(photo: bytes, n: int, width_px: int) -> tuple[bytes, ...]:
    from PIL import Image

    with Image.open(io.BytesIO(photo)) as src:
        src.draft("RGB", (width_px, src.height * width_px // max(1, src.width)))
        im = src.convert("RGB")
    if im.width > width_px:
        size = (width_px, max(1, round(im.height * width_px / im.width)))
        im = im.resize(size, Image.Resampling.BILINEAR)
    crop_w = max(1, int(im.width * 0.8))
    out = []
    for i in range(n):
        x = round((im.width - crop_w) * (i / max(1, n - 1)))
        buf = io.BytesIO()
        im.crop((x, 0, x + crop_w, im.height)).save(buf, format="JPEG", quality=75)
        out.append(buf.getvalue())
    return tuple(out)
