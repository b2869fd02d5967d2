"""``roadside-agent judge``: what the station would decide for a truck (legal check)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EX_UNAVAILABLE = 69


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "judge", help="what the station would decide for a truck (legal check)"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    print("roadside-agent judge: not available in this version", file=sys.stderr)
    return EX_UNAVAILABLE
