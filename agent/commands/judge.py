"""``roadside-agent judge``: what the station would decide for a truck (legal check).

Runs the daemon's own code (:func:`agent.legal.load_rules`, :func:`agent.legal.judge`) on axle
loads typed by a technician. Without ``--config`` it uses the shipped rule tables and the default
tolerance (5 %); with ``--config`` it takes the ``[legal]`` table of the station config and, for
``--plate``, the vehicle registry the platform pushed to that station (``set-vehicles``, in its
data directory): the same facts the daemon would use for that plate.

Exit codes: 0 a verdict was printed; 2 bad input; 78 unusable config or rule tables.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.commands._common import EX_CONFIG, EX_USAGE, format_kg

EPILOG = """\
examples:
  roadside-agent judge --axles 7100,9800,9700,11200,11300,11000 \\
      --spacings-mm 3400,1350,7100,1310,1310
  roadside-agent judge --axles 7000,9000,10000,10000 --vehicle-class truck --no-air-suspension
  roadside-agent judge --axles 7000,11500 --config /etc/roadside-agent/station.toml --json
  roadside-agent judge --axles 7000,11000,7000,7800,7800,7701 --plate 苏L12345 \
      --config /etc/roadside-agent/station.toml     # with the station's vehicle registry

Facts not given are unknown; the station then takes the reading with the higher limit and
says so in the explanation (never accuse on ambiguity).
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "judge",
        help="what the station would decide for a truck (legal check)",
        description="What the station would decide for a truck, with the daemon's own code.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--axles", required=True, metavar="KG,KG,...", help="axle loads, front to back, in kg"
    )
    p.add_argument("--spacings-mm", metavar="MM,...", help="axle spacings, front to back, in mm")
    p.add_argument("--gross-kg", type=str, metavar="KG", help="gross (default: sum of the axles)")
    p.add_argument(
        "--vehicle-class",
        choices=["truck", "combination", "unknown"],
        default="unknown",
        help="rigid truck or combination (default: unknown, inferred from the spacings)",
    )
    yes_no = argparse.BooleanOptionalAction
    p.add_argument(
        "--single-drive-axle", action=yes_no, help="the tractor (6+ axles) has one drive axle"
    )
    p.add_argument("--air-suspension", action=yes_no, help="air suspension fitted")
    p.add_argument(
        "--dual-tyre-drive-axle", action=yes_no, help="drive axle(s) with two tyres per side"
    )
    p.add_argument("--articulated", action=yes_no, help="tractor with a semi-trailer (铰接列车)")
    p.add_argument(
        "--single-tyre-axles",
        type=str,
        metavar="N",
        help="non-drive group/trailer axles with single tyres (−3000 kg each)",
    )
    p.add_argument(
        "--wide-tyres", action=yes_no, help="those axles have approved wide tyres (no reduction)"
    )
    p.add_argument("--speed-kmh", type=str, metavar="KMH", help="measured speed")
    p.add_argument("--plate", help="licence plate (for permits and the watch-list)")
    p.add_argument(
        "--accuracy-class", metavar="CLASS", help="scale accuracy class (tolerance accuracy_class)"
    )
    p.add_argument(
        "--at", metavar="ISO8601", help="measurement time with offset (default: now, +08:00)"
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="station config (TOML); uses its [legal] and, with --plate, its vehicle registry",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory holding the vehicle registry (default: the config's data_dir)",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(func=run)
    return p


class BadInputError(ValueError):
    """Input the technician typed that cannot be judged; the message says what is wrong."""


def _whole(text: str, what: str, *, allow_zero: bool = True) -> int:
    text = text.strip()
    try:
        value = int(text)
    except ValueError:
        try:
            float(text)
        except ValueError:
            raise BadInputError(f"{what} {text!r} is not a number") from None
        raise BadInputError(f"{what} {text!r} must be a whole number") from None
    if value < 0:
        raise BadInputError(f"{what} {value} is negative")
    if value == 0 and not allow_zero:
        raise BadInputError(f"{what} must be greater than 0")
    return value


def _list(text: str | None, what: str, *, allow_zero: bool = True) -> tuple[int, ...]:
    if text is None or not text.strip():
        return ()
    parts = text.split(",")
    return tuple(
        _whole(p, f"{what} {i}", allow_zero=allow_zero) for i, p in enumerate(parts, start=1)
    )


def _speed(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(f"speed {text!r} is not a number") from None
    if not value >= 0:  # also NaN
        raise BadInputError(f"speed {text!r} must be 0 km/h or more")
    return value


def _legal_config(path: str | None) -> Any:
    """``[legal]`` of the station config (or the defaults)."""
    import tomllib

    from agent.legal import LegalConfig

    if path is None:
        return LegalConfig()
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    # relative paths (rules_dir) resolve against the config's folder, as in the daemon
    base_dir = str(Path(path).resolve().parent)
    return LegalConfig.model_validate(data.get("legal", {}), context={"base_dir": base_dir})


def _kg(value: int | None) -> str:
    return format_kg(value)


def _render(verdict: Any, registry_line: str) -> str:
    pct = "" if verdict.over_pct is None else f"  ({verdict.over_pct:.2f} %)"
    lines = [
        f"status       {verdict.status.value}",
        f"limit        {_kg(verdict.limit_kg)}  ({verdict.rule})",
        f"tolerance    {_kg(verdict.tolerance_kg)}  ({verdict.tolerance_policy})",
        f"over         {_kg(verdict.over_kg)}{pct}",
        f"class        {verdict.vehicle_class.value} ({verdict.class_source})",
        f"facts        {verdict.facts_source}{registry_line}",
        f"explanation  {verdict.explanation}",
        f"说明         {verdict.explanation_zh}",
    ]
    if verdict.watchlist_hit:
        lines.append("watch-list   HIT")
    return "\n".join(lines)


PROG = "roadside-agent judge"


def run(args: argparse.Namespace) -> int:
    import json

    from agent.legal import DeviceFacts, InvalidFactsError, judge

    try:
        facts, at = _facts(args)
    except (BadInputError, InvalidFactsError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EX_USAGE
    rules = _rules(args.config)
    if rules is None:
        return EX_CONFIG
    problem = _accuracy_class_problem(rules, args.accuracy_class)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return EX_USAGE
    device = DeviceFacts(accuracy_class=args.accuracy_class) if args.accuracy_class else None
    registry = _registry(args)
    if isinstance(registry, int):
        return registry
    vehicles = registry.vehicles_for(args.plate) if registry is not None else ()
    version = registry.version if registry is not None else ""
    verdict = judge(facts, rules, at, device=device, vehicles=vehicles, registry_version=version)
    if args.json:
        print(json.dumps(verdict.to_dict(), ensure_ascii=False, indent=2, default=str))
    else:
        line = ""
        if registry is not None and args.plate:
            found = "registered" if vehicles else "not registered"
            line = f"  (vehicle registry version {version or '-'}: {args.plate} {found})"
        print(_render(verdict, line))
    return 0


def _registry(args: argparse.Namespace) -> Any:
    """The station's vehicle registry for ``--plate`` with ``--config`` / ``--data-dir``
    (``None`` without them), or an exit code after saying why it cannot be read."""
    from agent.commands._common import location_of
    from agent.store.permits import PermitStoreError
    from agent.store.vehicles import VehicleRegistry

    if not args.plate or (args.config is None and args.data_dir is None):
        return None
    where = location_of(args, "judge")
    try:
        return VehicleRegistry(where.data_dir)
    except PermitStoreError as err:
        print(f"{PROG}: vehicle registry: {err}", file=sys.stderr)
        return EX_CONFIG


def _facts(args: argparse.Namespace) -> tuple[Any, datetime]:
    """The vehicle as typed and the measurement time (default now, +08:00).

    Raises :class:`BadInputError` or ``InvalidFactsError`` saying what is wrong.
    """
    from agent.domain import VehicleClass
    from agent.legal import VehicleFacts
    from drivers.clock import SystemClock

    loads = _list(args.axles, "axle load")
    if not loads:
        raise BadInputError("--axles needs at least one axle load in kg, e.g. --axles 7000,11000")
    spacings = _list(args.spacings_mm, "axle spacing", allow_zero=False)
    gross = sum(loads) if args.gross_kg is None else _whole(args.gross_kg, "gross")
    single_tyre = None
    if args.single_tyre_axles is not None:
        single_tyre = _whole(args.single_tyre_axles, "single-tyre axle count")
    at = SystemClock().now()
    if args.at is not None:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            raise BadInputError(f"--at {args.at!r} is not an ISO 8601 time") from None
        if at.tzinfo is None:
            raise BadInputError(f"--at {args.at!r} needs a UTC offset, e.g. +08:00")
    declared = VehicleClass(args.vehicle_class)
    facts = VehicleFacts(
        axle_loads_kg=loads,
        gross_kg=gross,
        axle_spacings_mm=spacings,
        speed_kmh=_speed(args.speed_kmh),
        declared_class=declared,
        class_source="declared" if declared is not VehicleClass.UNKNOWN else "unknown",
        single_drive_axle=args.single_drive_axle,
        plate=args.plate,
        single_tyre_non_drive_axles=single_tyre,
        wide_tyres=args.wide_tyres,
        dual_tyre_drive_axle=args.dual_tyre_drive_axle,
        air_suspension=args.air_suspension,
        articulated=args.articulated,
    )
    return facts, at


def _rules(config: str | None) -> Any:
    """The rules of ``config``'s ``[legal]`` (or the shipped defaults); ``None`` after
    saying why they cannot be loaded."""
    from pydantic import ValidationError

    from agent.legal import LegalRulesError, load_rules

    try:
        return load_rules(_legal_config(config))
    except OSError as err:
        print(f"{PROG}: cannot read {config}: {err.strerror}", file=sys.stderr)
    except ValidationError as err:
        problems = "; ".join(
            f"legal.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        print(f"{PROG}: {config}: {problems}", file=sys.stderr)
    except (LegalRulesError, ValueError) as err:  # TOML syntax errors are ValueErrors too
        print(f"{PROG}: {config or 'rule tables'}: {err}", file=sys.stderr)
    return None


def _accuracy_class_problem(rules: Any, accuracy_class: str | None) -> str:
    """What is wrong with ``--accuracy-class`` for the rules' tolerance policy ('' if nothing)."""
    if rules.tolerance.kind != "accuracy_class":
        return ""
    known = ", ".join(sorted(rules.accuracy_mpe_pct, key=float))
    if not accuracy_class:
        return f"tolerance_policy is accuracy_class: give --accuracy-class ({known})"
    if accuracy_class.strip() not in rules.accuracy_mpe_pct:
        return f"accuracy class {accuracy_class!r} is not in the rule table (known: {known})"
    return ""
