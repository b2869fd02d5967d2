"""The plate reader contract: one frame in, the plates found in it out (best first)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from agent.domain import Frame, PlateRead


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
