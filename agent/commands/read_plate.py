"""``roadside-agent read-plate``: read licence plates from image files.

The same reader the daemon uses (``drivers.plate``), so a technician can check a camera's
pictures or a model bundle on the station itself::

    roadside-agent read-plate /var/lib/roadside-agent/images/*.jpg
    roadside-agent read-plate --json --type onnx photo.jpg

``--json`` prints a list of ``{"image": PATH, "plates": [{"text", "color", "confidence", "box",
"double_row"}, ...]}``, best plate first. Exit status: 0 when every image was read (finding no
plate is not an error), 66 when an image could not be opened or decoded, 69 when no plate model
can be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.commands._common import EX_NOINPUT, EX_UNAVAILABLE


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "read-plate",
        help="read licence plates from image files",
        description="Read licence plates from JPEG/PNG files with the station's plate model.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    p.add_argument("--json", action="store_true", help="print JSON for programs")
    p.add_argument(
        "--type",
        default="auto",
        help="plate reader type: auto (TFLite bundle, else ONNX), tflite, onnx (default: auto)",
    )
    p.add_argument("--bundle", default="", help="model bundle folder (default: see docs/plates.md)")
    p.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="report plates at or above this confidence (default: the reader's 0.5)",
    )
    p.set_defaults(func=run)
    return p


#: The keys of a plate in ``--json`` (the module docstring's contract).
PLATE_KEYS = ("text", "color", "confidence", "box", "double_row")


def _plate(read: Any) -> dict[str, Any]:
    """A read in the one JSON shape of a plate read, cut to :data:`PLATE_KEYS`."""
    shape = read.to_dict(detail=True)
    return {key: shape[key] for key in PLATE_KEYS}


def run(args: argparse.Namespace) -> int:
    from agent.domain import Frame
    from drivers.plate import PLATE_READERS, PlateReaderError
    from drivers.registry import BackendError

    options: dict[str, Any] = {"type": args.type}
    if args.bundle:
        options["bundle"] = args.bundle
    if args.min_confidence is not None:
        options["min_confidence"] = args.min_confidence
    try:
        cls = PLATE_READERS.get(args.type)
        reader = cls(cls.Config(**options))
    except (BackendError, PlateReaderError, ValueError) as err:
        print(f"read-plate: cannot load the plate reader: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    status = 0
    out: list[dict[str, Any]] = []
    try:
        for name in args.images:
            path = Path(name)
            try:
                data = path.read_bytes()
                frame = Frame(
                    camera_id="read-plate",
                    role="front",
                    lane=0,
                    captured_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
                    jpeg=data,
                    source=str(path),
                )
                reads = reader.read(frame)
            except (OSError, PlateReaderError) as err:
                print(f"read-plate: {path}: {err}", file=sys.stderr)
                status = EX_NOINPUT
                continue
            plates = [_plate(r) for r in reads]
            out.append({"image": str(path), "plates": plates})
            if not args.json:
                if not plates:
                    print(f"{path}: no plate")
                for p in plates:
                    rows = " double-row" if p["double_row"] else ""
                    print(
                        f"{path}: {p['text']}  {p['color']}{rows}  "
                        f"confidence {p['confidence']:.2f}  box {p['box']}"
                    )
    finally:
        reader.shutdown()
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    return status
