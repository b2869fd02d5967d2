"""``roadside-agent``: the command line technicians use over SSH.

Each subcommand lives in ``agent/commands/<name>.py`` with two functions: ``add_parser`` (its
arguments and help) and ``run`` (returns the exit code). Heavy imports happen inside ``run`` so
``--help`` and ``check-config`` stay fast on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agent import __version__

# Order shown in --help: daemon, configuration, inspection, legal, devices, evidence, support.
COMMANDS = [
    "run",
    "check_config",
    "status",
    "events",
    "judge",
    "read_plate",
    "probe",
    "keygen",
    "verify",
    "export",
    "diag",
]

EX_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roadside-agent",
        description="Edge daemon of a roadside truck weigh-and-camera station.",
    )
    parser.add_argument("--version", action="version", version=f"roadside-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"agent.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code
