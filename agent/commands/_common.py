"""What every command shares: the exit-code table and the one way to find config and data.

Exit codes (sysexits.h where it has one), the same for every command::

    0   ok
    1   the check failed (verify found broken evidence, export could not verify a package,
        probe read nothing, a write the command exists for failed)
    2   usage: bad arguments
    66  no input: the station database or an input file does not exist
    69  unavailable: a device, model, user or service the command needs is not there
    75  temporary: try again (the daemon after set-config: systemd restarts it on the new file)
    78  bad config: the station config cannot be read or does not validate
    130 interrupted (Ctrl-C)

:func:`locate` is how the daemon's data directory is found by every command: ``--data-dir``
wins, else ``[station] data_dir`` of the config, else ``/var/lib/roadside-agent``; the config is
``--config``, else ``/etc/roadside-agent/station.toml`` when it exists. ``run`` reads the same
``[station] data_dir`` and ``[evidence] signing_key``, so ``keygen`` writes the key where the
daemon looks for it and ``status`` and ``verify`` read the directory the daemon writes.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.store.evidence import EvidenceConfig

log = logging.getLogger(__name__)

EX_OK = 0
EX_FAILED = 1
EX_USAGE = 2
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_INTERRUPTED = 130  # Ctrl-C, as the shell reports a SIGINT

EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 the check failed, 2 usage, 66 no input (no station database or "
    "input file), 69 unavailable (device, model or user missing), 75 temporary (try again), "
    "78 bad config, 130 interrupted"
)

DEFAULT_CONFIG = Path("/etc/roadside-agent/station.toml")
DEFAULT_DATA_DIR = Path("/var/lib/roadside-agent")


class LocateError(Exception):
    """The config named on the command line cannot be read (exit 78)."""


@dataclass(frozen=True)
class Location:
    """Where a command finds the station: its config file (if any), data directory and
    ``[evidence]`` table, and a note when the config was unusable and read leniently."""

    config_file: Path | None
    data_dir: Path
    evidence: EvidenceConfig
    note: str = ""


def add_location_args(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """``--config`` and ``--data-dir`` (and ``--json``), the same for every command."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"station TOML file (default {DEFAULT_CONFIG} when it exists)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"data directory (default: the config's [station] data_dir, else {DEFAULT_DATA_DIR})",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def locate(config_file: str | Path | None, data_dir: str | Path | None) -> Location:
    """The station's config, data directory and ``[evidence]`` table (see the module doc).

    A config that does not validate is still used for ``[station] data_dir`` and
    ``[evidence]`` (read from the raw TOML, with :attr:`Location.note` saying so): a
    technician must see the evidence of a station whose config is broken. Raises
    :class:`LocateError` when a config named explicitly cannot be read at all.
    """
    from agent.config import load_config  # not at the top: --help must stay fast
    from agent.store.evidence import EvidenceConfig

    if config_file is None:
        if not DEFAULT_CONFIG.is_file():
            return Location(None, Path(data_dir or DEFAULT_DATA_DIR), EvidenceConfig())
        config_file = DEFAULT_CONFIG
    path = Path(config_file)
    try:
        loaded = load_config(path)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        note = f"{path} does not validate ({first}); read only [station] and [evidence]"
        log.warning("%s", note)
    else:
        return Location(path, loaded.data_dir(data_dir), loaded.evidence)
    table = _read_toml(path)
    try:
        evidence = EvidenceConfig.model_validate(table.get("evidence", {}))
    except ValueError as err:
        raise LocateError(f"{path}: [evidence]: {err}") from err
    if data_dir:
        return Location(path, Path(data_dir), evidence, note)
    configured = table.get("station", {}).get("data_dir")
    if configured:
        return Location(path, (path.parent / str(configured)).resolve(), evidence, note)
    return Location(path, DEFAULT_DATA_DIR, evidence, note)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise LocateError(f"cannot read {path}: {err}") from err


def location_of(args: argparse.Namespace, command: str) -> Location:
    """:func:`locate` for a command's ``--config``/``--data-dir``; exits 78 when it cannot."""
    try:
        return locate(getattr(args, "config", None), getattr(args, "data_dir", None))
    except LocateError as err:
        print(f"roadside-agent {command}: {err}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from err


def open_db(data_dir: Path, command: str) -> sqlite3.Connection:
    """The station database, read-only; exits 66 when there is none."""
    from agent.store.readonly import NoDatabaseError, open_readonly

    try:
        return open_readonly(data_dir)
    except NoDatabaseError as err:
        print(f"roadside-agent {command}: {err}", file=sys.stderr)
        raise SystemExit(EX_NOINPUT) from err


def parse_options(items: list[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` arguments as a config table. Raises ``ValueError``."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = _value(value.strip())
    return options


def _value(text: str) -> Any:
    """A TOML literal when it is one (numbers, booleans, arrays, inline tables), else text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
