"""``roadside-agent export``: write evidence packages for records."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EX_UNAVAILABLE = 69


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "export", help="write evidence packages for records"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    print("roadside-agent export: not available in this version", file=sys.stderr)
    return EX_UNAVAILABLE
