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
from agent.commands._common import EX_FAILED, EX_INTERRUPTED, EX_OK, EX_USAGE, EXIT_CODES_HELP

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roadside-agent",
        description="Edge daemon of a roadside truck weigh-and-camera station.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"roadside-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"agent.commands.{name}")
        sub_parser = module.add_parser(sub)
        sub_parser.epilog = sub_parser.epilog or EXIT_CODES_HELP
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        code: int = args.func(args)
    except SystemExit as done:  # a command's helper exited with a code of the table
        if isinstance(done.code, int):
            return done.code
        if done.code is not None:
            print(done.code, file=sys.stderr)
        return EX_OK if done.code is None else EX_FAILED
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except BrokenPipeError:
        return EX_OK
    return code
