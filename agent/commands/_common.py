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
import re
import sqlite3
import sys
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    #: ``[station] utc_offset_hours``: the offset record times are written in
    utc_offset_hours: float = 8.0


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
        offset = loaded.station.utc_offset_hours
        return Location(path, loaded.data_dir(data_dir), loaded.evidence, "", offset)
    table = _read_toml(path)
    try:
        evidence = EvidenceConfig.model_validate(table.get("evidence", {}))
    except ValueError as err:
        raise LocateError(f"{path}: [evidence]: {err}") from err
    station = table.get("station", {})
    offset = station.get("utc_offset_hours", 8.0)
    offset = float(offset) if isinstance(offset, (int, float)) else 8.0
    configured = station.get("data_dir")
    if data_dir:
        found = Path(data_dir)
    elif configured:
        found = (path.parent / str(configured)).resolve()
    else:
        found = DEFAULT_DATA_DIR
    return Location(path, found, evidence, note, offset)


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


# -- how commands print and read values -----------------------------------------------------


def format_kg(kg: float | None, *, signed: bool = False) -> str:
    """A mass as every command prints it: whole kilograms, thousands set off by a space as in
    the regulation's tables (``49 000 kg``), ``—`` when not known; ``signed`` for an excess
    (``+1 100 kg``, ``-300 kg``)."""
    if kg is None:
        return "—"
    value = round(kg)
    sign = ("+" if value > 0 else "-" if value < 0 else "±") if signed else "-" * (value < 0)
    return f"{sign}{abs(value):,} kg".replace(",", " ")


_SPAN_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 7 * 86400,
    "week": 7 * 86400,
    "weeks": 7 * 86400,
}
_SPAN_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")
_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}
TIME_FORMS = (
    'ISO 8601 ("2026-05-31", "2026-05-31 14:00", "2026-05-31T14:00:00+08:00"), "now", '
    '"today", "yesterday", or a time ago ("1 hour ago", "90 min ago", "-2d", "1h 30min ago")'
)


def parse_time(text: str, now: datetime) -> datetime:
    """A point in time as journalctl ``--since`` reads it (systemd.time(7)), aware.

    ``now`` (aware) gives the relative forms and the offset of times written without one
    (the station's offset: record times are written in it). Raises ``ValueError`` naming the
    forms understood.
    """
    word = " ".join(text.strip().lower().split())
    if word == "now":
        return now
    if word in _DAYS:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight + timedelta(days=_DAYS[word])
    span = word.removesuffix(" ago") if word.endswith(" ago") else word.removeprefix("-")
    if span != word:
        return now - timedelta(seconds=_span_s(span, text))
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a time; use {TIME_FORMS}") from None
    return when if when.tzinfo else when.replace(tzinfo=now.tzinfo)


def _span_s(span: str, text: str) -> float:
    """``"1h 30min"`` in seconds. Raises ``ValueError``."""
    parts = _SPAN_PART.findall(span)
    if not parts or _SPAN_PART.sub("", span).strip() or any(u not in _SPAN_UNITS for _, u in parts):
        raise ValueError(
            f'{text!r}: not a time span (units: s, min, h, d, w, e.g. "2 hours ago"); '
            f"use {TIME_FORMS}"
        )
    return sum(float(n) * _SPAN_UNITS[u] for n, u in parts)
