"""``roadside-agent verify``: check the evidence chain, signatures and images."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EX_UNAVAILABLE = 69


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "verify", help="check the evidence chain, signatures and images"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    print("roadside-agent verify: not available in this version", file=sys.stderr)
    return EX_UNAVAILABLE
