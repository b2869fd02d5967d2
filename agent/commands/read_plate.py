"""``roadside-agent read-plate``: read licence plates from image files."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EX_UNAVAILABLE = 69


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "read-plate", help="read licence plates from image files"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    print("roadside-agent read-plate: not available in this version", file=sys.stderr)
    return EX_UNAVAILABLE
