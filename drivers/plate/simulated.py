"""Simulated plate reader: the label of a replayed labelled photo.

It reads the plate from the folder's ``labels.csv`` by the frame's source file, so the simulated
station can later swap in the real model without changing anything else.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import Field

from drivers import traffic
from drivers.camera.base import Frame
from drivers.plate.base import PlateRead, PlateReader, PlateReaderConfig


class SimulatedPlateReaderConfig(PlateReaderConfig):
    confidence: float = Field(default=0.95, ge=0, le=1, description="confidence reported")
    road: str = Field(default="default", description="simulated road whose photos it knows")


class SimulatedPlateReader(PlateReader):
    Config = SimulatedPlateReaderConfig
    config: SimulatedPlateReaderConfig

    def __init__(self, config: SimulatedPlateReaderConfig) -> None:
        super().__init__(config)
        self._labels: dict[Path, dict[str, str]] = {}

    def _label(self, source: Path) -> str | None:
        photo = traffic.road(self.config.road).photos.label_of(source)
        if photo is not None:
            return photo.plate
        folder = source.parent
        if folder not in self._labels:
            labels: dict[str, str] = {}
            if (folder / "labels.csv").is_file():
                with (folder / "labels.csv").open(encoding="utf-8") as fh:
                    labels = {r["filename"]: r.get("plate", "") for r in csv.DictReader(fh)}
            self._labels[folder] = labels
        return self._labels[folder].get(source.name) or None

    def _read_internal(self, frame: Frame) -> list[PlateRead]:
        if frame.source is None:
            return []
        text = self._label(Path(frame.source))
        if not text:
            return []
        color = "green" if len(text) == 8 else "blue"
        return [
            PlateRead(
                text=text,
                color=color,
                confidence=self.config.confidence,
                position="rear" if frame.role == "rear" else "front",
                lane=frame.lane,
                read_at=frame.captured_at,
                camera_id=frame.camera_id,
            )
        ]
