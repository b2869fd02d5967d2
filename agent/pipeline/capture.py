"""A weighing's trigger: capture every camera of the lane and read the plates, degrading.

The daemon's pipeline thread captures each weighing's frames (never the weighing thread: a
capture may wait up to ``capture_timeout_s`` for frames still to come), its reader pool
(:mod:`agent.pipeline.reading`) reads their plates, and the result goes to
``agent.pipeline.assemble.Assembler.add_reads``. A camera that is down or a plate reader that
fails or was
never loaded costs that record its photos or plate — it is then flagged ``no_image`` /
``no_plate`` by the assemble stage — and never stops the station::

    result = capture_and_read(lane_cameras, reader, weighing.measured_at, frames_per_camera=2)
    assembler.add_reads(lane, result.reads, result.frames)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from agent.domain import Frame, PlateRead
from drivers.camera.base import Camera, CameraError, Clip
from drivers.plate.base import PlateReader, PlateReaderError

log = logging.getLogger(__name__)


@dataclass
class TriggerResult:
    frames: list[Frame] = field(default_factory=list)
    reads: list[PlateRead] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # one line per failed camera / read


def capture_and_read(
    cameras: Sequence[Camera],
    reader: PlateReader | None,
    at: datetime,
    frames_per_camera: int = 2,
) -> TriggerResult:
    """Frames of every camera near ``at`` and the plates read from the front/rear ones, in
    this thread (``capture-test``; the daemon reads on its pool, :mod:`agent.pipeline.reading`).

    Never raises for a device fault: faults are logged and listed in the result.
    """
    result = capture_frames(cameras, at, frames_per_camera)
    if reader is None:
        return result
    for frame in plate_frames(result.frames):
        try:
            result.reads.extend(reader.read(frame))
        except PlateReaderError as err:
            log.warning("%s", err)
            result.faults.append(str(err))
    return result


def capture_frames(
    cameras: Sequence[Camera], at: datetime, frames_per_camera: int = 2
) -> TriggerResult:
    """Frames of every camera near ``at`` (no reads yet). Call it in the order the vehicles
    left the scale: cameras hand a push or a replayed photo out once, to the first capture
    that asks. Never raises for a device fault: faults are logged and listed in the result."""
    result = TriggerResult()
    for camera in cameras:
        try:
            result.frames.extend(camera.capture(at, frames_per_camera))
        except CameraError as err:
            log.warning("%s", err)
            result.faults.append(str(err))
    return result


def plate_frames(frames: Sequence[Frame]) -> list[Frame]:
    """The frames whose plates are read: those of the front and rear cameras."""
    return [f for f in frames if f.role in ("front", "rear")]


def capture_clips(cameras: Sequence[Camera], at: datetime) -> tuple[list[Clip], list[str]]:
    """``(clips, faults)``: a clip of the passage at ``at`` from every camera with ``clip`` on.

    Never raises for a device fault: a camera that cannot give a clip is logged and listed, and
    the record then names ``video`` in ``evidence.missing``; it is never a lost record.
    """
    clips: list[Clip] = []
    faults: list[str] = []
    for camera in cameras:
        if not camera.config.clip:
            continue
        try:
            clips.append(camera.clip(at))
        except CameraError as err:
            log.warning("%s", err)
            faults.append(str(err))
    return clips, faults
