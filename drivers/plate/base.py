"""The plate reader contract: one frame in, the plates found in it out (best first)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from drivers.camera.base import Frame
from drivers.plate.chinese import is_valid_plate, plate_format, untrusted

#: what the camera id of an ITS camera's on-board reading ends with: a witness of its own,
#: voted apart from the station's reading of the same picture (agent.pipeline.voting)
ONBOARD_SUFFIX = "/onboard"


@dataclass(frozen=True)
class PlateRead:
    """A licence plate read from one frame (or voted over several)."""

    text: str
    color: str  # blue | yellow | green | white | black | unknown
    confidence: float  # 0..1
    position: str = "front"  # front | rear
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in the frame, pixels
    lane: int = 0
    read_at: datetime | None = None
    camera_id: str = ""
    double_row: bool = False

    def to_dict(self, *extra: str) -> dict[str, Any]:
        """The one JSON shape of a plate read: ``text``, ``color``, ``confidence`` (3 decimals),
        plus the ``extra`` fields named (``position``, ``box``, ``double_row``, ``camera_id``).

        A record seals ``to_dict("position")``; the diagnostic commands add what they show.
        """
        out: dict[str, Any] = {
            "text": self.text,
            "color": self.color,
            "confidence": round(self.confidence, 3),
        }
        for name in extra:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


class PlateReaderError(Exception):
    """The reader cannot run (model missing, bad bundle, undecodable image)."""


class PlateReaderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="backend: simulated, tflite, onnx")
    min_confidence: float = Field(
        default=0.5, ge=0, le=1, description="plates below this confidence are not reported"
    )


class PlateReader(ABC):
    Config: ClassVar[type[PlateReaderConfig]] = PlateReaderConfig

    def __init__(self, config: PlateReaderConfig) -> None:
        self.config = config

    def read(self, frame: Frame) -> list[PlateRead]:
        """The plates in ``frame``, best first, confidence ≥ ``min_confidence``: this reader's
        own readings and those an ITS camera made on board (:func:`onboard_plate_reads`)."""
        reads = [
            r
            for r in [*self._read_internal(frame), *onboard_plate_reads(frame)]
            if r.confidence >= self.config.min_confidence
        ]
        return sorted(reads, key=lambda r: r.confidence, reverse=True)

    @abstractmethod
    def _read_internal(self, frame: Frame) -> list[PlateRead]: ...

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release the model. Idempotent."""


def onboard_plate_reads(frame: Frame) -> list[PlateRead]:
    """The plates an ITS camera read on board and sent with ``frame``, checked like the
    station's own readings: an impossible string, a green plate without an 8-character
    new-energy number, or any character under the per-character trust
    (:func:`drivers.plate.chinese.untrusted`; the camera's per-character confidences, else its
    plate confidence for every character) is left out. Their ``camera_id`` ends with
    ``/onboard``: the vote treats the camera's opinion and the station's reading of the same
    picture as two witnesses that must agree."""
    out: list[PlateRead] = []
    for read in frame.onboard:
        text = read.text.strip()
        if not is_valid_plate(text):
            continue
        fmt = plate_format(text) or ""
        if read.color == "green" and not fmt.startswith("new_energy"):
            continue
        chars = read.char_confidences
        if len(chars) != len(text):
            chars = (read.confidence,) * len(text)
        if untrusted(text, chars):
            continue
        out.append(
            PlateRead(
                text=text,
                color=read.color,
                confidence=read.confidence,
                position="rear" if frame.role == "rear" else "front",
                box=read.box,
                lane=frame.lane,
                read_at=frame.captured_at,
                camera_id=frame.camera_id + ONBOARD_SUFFIX,
            )
        )
    return out


class OnboardPlateReader(PlateReader):
    """``[plate] type = "onboard"``: no model of the station's own; only the plates the ITS
    cameras read on board (checked as in :func:`onboard_plate_reads`)."""

    def _read_internal(self, frame: Frame) -> list[PlateRead]:
        return []
