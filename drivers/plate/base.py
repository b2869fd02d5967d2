"""The plate reader contract: one frame in, the plates found in it out (best first)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from drivers.camera.base import Frame


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
        """The plates in ``frame``, best first, confidence ≥ ``min_confidence``."""
        reads = [
            r for r in self._read_internal(frame) if r.confidence >= self.config.min_confidence
        ]
        return sorted(reads, key=lambda r: r.confidence, reverse=True)

    @abstractmethod
    def _read_internal(self, frame: Frame) -> list[PlateRead]: ...

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release the model. Idempotent."""
