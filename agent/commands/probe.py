"""``roadside-agent probe``: read a device directly, without the station config.

``probe scale --type TYPE --port URL [--baudrate N] [--option KEY=VALUE ...] [--seconds S]
[--json]`` opens a scale with the named backend (or the one of ``--config FILE``'s lane),
prints what it reads for a few seconds, and ends with a summary a technician can act on:
the last stable gross in kg, how many readings came and how fast, every distinct error, and
the last raw frames in hex. ``--json`` prints one JSON object instead (``gross_kg``,
``stable``, ``readings``, ``errors``, ``raw_tail``).

``probe camera --type TYPE [--source URL|DEVICE|FILE] ...`` grabs frames from a camera with
the named backend (or one of ``--config FILE``'s cameras) and reports frames, fps, resolution,
errors, saves the newest frame and can read its plates: see :mod:`agent.commands.probe_camera`.

``probe ports`` lists serial ports with their /dev/serial/by-id names (stable across
reboots and replugging: the name to put in the config).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.commands._common import EX_CONFIG, EX_OK, EX_UNAVAILABLE, EX_USAGE, parse_options

MAX_READINGS = 1000


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "probe",
        help="read a device directly, without the station config",
        description="Read a device directly and tell whether wiring, protocol and scaling "
        "are right.",
    )
    what = p.add_subparsers(dest="probe_what", metavar="DEVICE")
    s = what.add_parser(
        "scale",
        help="read a scale / indicator / WIM controller for a few seconds",
        description="Examples:\n"
        "  roadside-agent probe scale --type xk3190 --port /dev/ttyUSB0 --option unit=t\n"
        "  roadside-agent probe scale --type modbus_tcp --port 192.168.1.50:502 "
        "--option map=tuna_id551\n"
        "  roadside-agent probe scale --type modbus_rtu --port /dev/ttyUSB0 --baudrate 9600 "
        "--option device_id=3\n"
        "  roadside-agent probe scale --config /etc/roadside-agent/station.toml --lane 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--type", dest="scale_type", help=_types_help())
    s.add_argument(
        "--capacity-kg",
        type=float,
        default=100000.0,
        help="the scale's capacity (Max); a float32 reading outside -5 %%..120 %% of it is "
        "shown under every word order (default 100000)",
    )
    s.add_argument(
        "--port",
        help="serial port or pyserial URL; for Modbus TCP host[:port] (default port 502)",
    )
    s.add_argument("--baudrate", type=int, help="serial speed, e.g. 9600")
    s.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config key of the backend (repeatable), e.g. map=generic, unit=t",
    )
    s.add_argument("--config", type=Path, help="use the scale of this station config instead")
    s.add_argument("--lane", type=int, default=0, help="with --config: lane number (default first)")
    s.add_argument("--seconds", type=float, default=5.0, help="how long to read (default 5)")
    s.add_argument("--json", action="store_true", help="print one JSON object at the end")
    s.add_argument(
        "--simulate",
        action="store_true",
        help="read a simulated twin of --type (modbus_tcp, xk3190, toledo, wim_lines) instead "
        "of hardware: a truck crossing the scale",
    )
    s.set_defaults(func=run)
    from agent.commands import probe_camera

    probe_camera.add_parser(what)
    ports = what.add_parser("ports", help="list serial ports and their /dev/serial/by-id names")
    ports.add_argument("--json", action="store_true", help="print JSON")
    ports.set_defaults(func=run)
    p.set_defaults(func=run, probe_what=None)
    return p


#: The output formats a backend reads besides its default, for ``--type``'s help.
FORMATS = {
    "xk3190": "--option format=tf0|a12|reversed|in_order|tf1",
    "toledo": "--option stx=false, --option dialect=liden",
}


def _types_help() -> str:
    from drivers.scale import SCALES

    names = [f"{n} ({FORMATS[n]})" if n in FORMATS else n for n in SCALES.names()]
    return "backend: " + ", ".join(names)


def run(args: argparse.Namespace) -> int:
    if args.probe_what == "scale":
        return probe_scale(args)
    if args.probe_what == "camera":
        from agent.commands.probe_camera import probe_camera

        return probe_camera(args)
    if args.probe_what == "ports":
        return probe_ports(args)
    print("usage: roadside-agent probe {scale,camera,ports} ... (see --help)", file=sys.stderr)
    return EX_USAGE


# ----- scale -------------------------------------------------------------------------------


def scale_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The backend's config table from the command line (or the station config)."""
    settings: dict[str, Any] = {}
    if args.config is not None:
        data = tomllib.loads(args.config.read_text(encoding="utf-8"))
        lanes = data.get("lanes", [])
        if not lanes:
            raise ValueError(f"{args.config}: no [[lanes]]")
        lane = next((ln for ln in lanes if ln.get("number") == args.lane), None)
        if lane is None:
            if args.lane:
                raise ValueError(f"{args.config}: no lane number {args.lane}")
            lane = lanes[0]
        if "scale" not in lane:
            raise ValueError(f"{args.config}: lane {lane.get('number')} has no [lanes.scale]")
        settings.update(lane["scale"])
    if args.scale_type:
        settings["type"] = args.scale_type
    if "type" not in settings:
        raise ValueError("--type is needed (or --config with a [lanes.scale] table)")
    tcp = settings["type"] == "modbus_tcp" or (
        settings["type"] == "wim_modbus" and ("host" in settings or _looks_tcp(args.port))
    )
    if args.port:
        if tcp:
            host, _, port = args.port.removeprefix("tcp://").partition(":")
            settings["host"] = host
            settings["port"] = int(port) if port else 502
        else:
            settings["port"] = args.port
    if args.baudrate:
        settings["baudrate"] = args.baudrate
    settings.update(parse_options(args.option))
    return settings


def _looks_tcp(port: str | None) -> bool:
    if not port:
        return False
    if port.startswith("tcp://"):
        return True
    head = port.split(":")[0]
    return bool(head) and all(c.isdigit() or c == "." for c in head) and ":" in port


def _reading(m: Any, t0: float) -> dict[str, Any]:
    from drivers.scale import DetectorEdge, WeightSample, WimRecord

    t = round(time.monotonic() - t0, 3)
    if isinstance(m, WeightSample):
        return {
            "t_s": t,
            "kind": "weight",
            "gross_kg": round(m.gross_kg, 3),
            "stable": m.stable,
            "flags": sorted(m.flags),
        }
    if isinstance(m, WimRecord):
        return {
            "t_s": t,
            "kind": "wim",
            "lane": m.lane,
            "axle_loads_kg": list(m.axle_loads_kg),
            "gross_kg": m.gross_kg,
            "axle_spacings_mm": list(m.axle_spacings_mm),
            "speed_kmh": m.speed_kmh,
            "flags": sorted(m.flags),
        }
    assert isinstance(m, DetectorEdge)
    return {"t_s": t, "kind": "detector", "occupied": m.occupied}


def _line(r: dict[str, Any]) -> str:
    if r["kind"] == "weight":
        state = "stable" if r["stable"] else "MOTION"
        flags = f"  [{', '.join(r['flags'])}]" if r["flags"] else ""
        return f"{r['t_s']:7.2f} s  {r['gross_kg']:>12,.1f} kg  {state}{flags}"
    if r["kind"] == "wim":
        loads = " + ".join(str(x) for x in r["axle_loads_kg"])
        return (
            f"{r['t_s']:7.2f} s  vehicle lane {r['lane']}: {r['gross_kg']} kg = {loads}"
            f"  {r['speed_kmh']} km/h  {' '.join(r['flags'])}"
        )
    return f"{r['t_s']:7.2f} s  detector {'OCCUPIED' if r['occupied'] else 'free'}"


@dataclass
class _Readings:
    """What a probe run collected."""

    readings: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_READINGS
    errors: dict[str, int] = field(default_factory=dict)  # message → count
    last_stable: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    raw_tail: list[str] = field(default_factory=list)
    rejects: dict[str, int] = field(default_factory=dict)
    last_registers: bytes | None = None  # the last Modbus weight block read


def probe_scale(args: argparse.Namespace) -> int:
    from drivers.scale import ScaleError

    try:
        settings = scale_settings(args)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as err:
        print(f"probe: {err}", file=sys.stderr)
        return EX_USAGE
    sim = None
    if args.simulate:
        try:
            sim = _start_simulator(settings)
        except ValueError as err:
            print(f"probe: {err}", file=sys.stderr)
            return EX_USAGE
    backend = _backend(settings)
    if backend is None:
        return EX_CONFIG
    cls, config = backend
    # probe reports every error itself (counted, once each); the drivers' journal lines would
    # only repeat them on the terminal.
    for name in ("drivers", "pymodbus"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    t0 = time.monotonic()
    try:
        try:
            scale = cls(config)
        except ScaleError as err:
            print(f"probe: {err}", file=sys.stderr)
            return EX_CONFIG
        if not args.json:
            print(f"reading {settings['type']} {_where(settings)} for {args.seconds:g} s ...")
        try:
            got = _read(scale, args, t0)
        finally:
            scale.shutdown()
    finally:
        if sim is not None:
            sim.stop()
    result = _result(settings, got, time.monotonic() - t0)
    check = _word_order_check(scale, got, args.capacity_kg)
    if check is not None:
        result["word_order_check"] = check
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _summary(result)
    return EX_OK if got.readings else EX_UNAVAILABLE


def _result(settings: dict[str, Any], got: _Readings, elapsed: float) -> dict[str, Any]:
    """The summary of a probe run (what ``--json`` prints)."""
    last = got.last
    return {
        "type": settings["type"],
        "where": _where(settings),
        "gross_kg": got.last_stable["gross_kg"] if got.last_stable else None,
        "stable": bool(last is not None and last.get("stable", last["kind"] == "wim")),
        "readings": got.readings,
        "reading_count": len(got.readings),
        "rate_hz": round(len(got.readings) / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": [{"message": k, "count": v} for k, v in got.errors.items()],
        "rejected_frames": got.rejects,
        "raw_tail": got.raw_tail,
    }


def _backend(settings: dict[str, Any]) -> tuple[Any, Any] | None:
    """The scale class and its validated config; ``None`` (after saying why) when the type
    is unknown or a setting is wrong."""
    from pydantic import ValidationError

    from drivers.registry import BackendError
    from drivers.scale import SCALES

    try:
        cls = SCALES.get(str(settings["type"]))
        return cls, cls.Config.model_validate(settings)
    except BackendError as err:
        print(f"probe: {err}", file=sys.stderr)
    except ValidationError as err:
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(scale)"
            print(f"probe: {key} = {e.get('input')!r} → {e['msg']}", file=sys.stderr)
    return None


def _read(scale: Any, args: argparse.Namespace, t0: float) -> _Readings:
    """Read ``scale`` until ``args.seconds`` after ``t0``, printing as it goes (unless
    ``--json``): readings at most five a second, each distinct error once."""
    from drivers.scale import ScaleError

    got = _Readings()
    printed_at = -1.0
    while (remaining := args.seconds - (time.monotonic() - t0)) > 0:
        try:
            m = scale.recv(min(0.5, remaining))
        except ScaleError as err:
            text = re.sub(r"; next attempt in [0-9.]+ s", "", str(err).split("; last raw")[0])
            got.errors[text] = got.errors.get(text, 0) + 1
            if not args.json and got.errors[text] == 1:
                print(f"ERROR {text}")
            continue
        if m is None:
            continue
        r = _reading(m, t0)
        got.last = r
        if r["kind"] == "weight" and hasattr(scale, "map"):
            got.last_registers = m.raw
        if len(got.readings) < MAX_READINGS:
            got.readings.append(r)
        if r["kind"] == "wim" or (r["kind"] == "weight" and r["stable"]):
            got.last_stable = r
        if not args.json and (r["kind"] != "weight" or r["t_s"] - printed_at >= 0.2):
            printed_at = r["t_s"]
            print(_line(r))
    got.raw_tail = [f.hex(" ") for f in list(scale.raw_tail)[-8:]]
    got.rejects = dict(getattr(scale, "rejects", {}) or {})
    return got


def _word_order_check(scale: Any, got: _Readings, capacity_kg: float) -> dict[str, Any] | None:
    """For a float32 weight: the last reading under every word order when it is implausible
    for ``capacity_kg`` (a wrong order is not always absurd: 31 460 kg served CDAB and read
    ABCD is −131 355.8 kg); ``None`` when it is plausible or not float32."""
    from drivers.scale.registermap import WORD_ORDERS, every_word_order, plausible_kg

    spec = getattr(getattr(scale, "map", None), "weight", None)
    if spec is None or spec.type != "float32" or not got.last_registers:
        return None
    block = getattr(scale, "_block", (spec.address, 0))[0]
    data = got.last_registers
    registers = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    factor = 1000.0 if scale.map.unit == "t" else 1.0
    values = {k: v * factor for k, v in every_word_order(spec, registers, block).items()}
    current = next(
        k for k, (w, b) in WORD_ORDERS.items() if (w, b) == (spec.word_order, spec.byte_order)
    )
    if plausible_kg(values[current], capacity_kg):
        return None
    return {
        "map_order": current,
        "capacity_kg": capacity_kg,
        "values_kg": {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()},
        "plausible": [k for k, v in values.items() if plausible_kg(v, capacity_kg)],
    }


def _where(settings: dict[str, Any]) -> str:
    if "host" in settings and settings.get("host"):
        return f"{settings['host']}:{settings.get('port', 502)}"
    return str(settings.get("port", ""))


def _summary(r: dict[str, Any]) -> None:
    print("-" * 60)
    print(f"readings: {r['reading_count']} ({r['rate_hz']} /s)")
    if r["gross_kg"] is not None:
        print(f"last stable gross: {r['gross_kg']:,.1f} kg")
    elif r["reading_count"]:
        print("no stable reading (platform moving, or the indicator never reports stable)")
    for e in r["errors"]:
        print(f"error ×{e['count']}: {e['message']}")
    if r["rejected_frames"]:
        print("rejected frames: " + ", ".join(f"{k} ×{v}" for k, v in r["rejected_frames"].items()))
    check = r.get("word_order_check")
    if check:
        print(
            f"WARNING: the float32 weight read {check['map_order']} is implausible for a "
            f"{check['capacity_kg']:,.0f} kg scale. The last reading under each word order:"
        )
        for order, kg in check["values_kg"].items():
            mark = "  <- plausible" if order in check["plausible"] else ""
            shown = f"{kg:>16,.1f}" if isinstance(kg, float) else f"{kg:>16}"
            print(f"  {order}: {shown} kg{mark}")
        print("  Set word_order / byte_order in the map to the one the display shows.")
    print("last raw frames (hex):")
    for frame in r["raw_tail"] or ["(none)"]:
        print(f"  {frame}")
        text = _as_text(frame)
        if text:
            print(f"    = {text!r}")
    if not r["reading_count"]:
        print(
            "verdict: NO READINGS. Check the port name (roadside-agent probe ports), cable and "
            "RS-485 A/B polarity, baud rate and parity, the device id / register map, and that "
            "the indicator's output mode matches --type."
        )
    elif r["errors"]:
        print("verdict: readings arrive, with errors: see above.")
    elif check:
        print("verdict: WRONG WORD ORDER likely: see the warning above.")
    else:
        print("verdict: OK. Compare the gross with the indicator's display (unit and decimals).")


class _StreamSim:
    """A continuous-output twin on a pty in a temporary folder."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import tempfile

        from drivers.scale import stream_sim
        from drivers.scale.pty import PtyPair

        self.dir = tempfile.TemporaryDirectory(prefix="probe-sim-")
        self.pty = PtyPair(Path(self.dir.name) / "ttySIM0")
        kind = settings["type"]
        unit = str(settings.get("unit", "kg"))
        fmt = str(settings.get("format", "tf0"))
        self.talker: Any
        if kind == "wim_lines":
            self.talker = stream_sim.wim_controller(self.pty.write)
        elif kind == "xk3190" and fmt == "tf1":
            from drivers.scale.modbus_sim import playback
            from drivers.scale.trace import axle_scale_trace

            self.talker = stream_sim.CommandResponder(
                self.pty,
                playback(axle_scale_trace(stream_sim.SIX_AXLE)),
                str(settings.get("address", "A")),
                unit,
            )
        else:
            self.talker = stream_sim.indicator(kind, self.pty.write, unit=unit, format=fmt)
        self.talker.start()
        settings["port"] = str(self.pty.path)

    def stop(self) -> None:
        self.talker.stop()
        self.pty.close()
        self.dir.cleanup()


def _as_text(hex_frame: str) -> str:
    """The frame as text when it is printable ASCII (record lines), else ''."""
    try:
        data = bytes.fromhex(hex_frame)
    except ValueError:
        return ""
    if data and all(32 <= b < 127 or b in (9, 10, 13) for b in data):
        return data.decode("ascii")
    return ""


def _start_simulator(settings: dict[str, Any]) -> Any:
    """Start the simulated twin of ``settings["type"]`` and point the settings at it."""
    from drivers.scale.modbus_sim import ModbusDeviceSimulator, playback
    from drivers.scale.stream_sim import SIX_AXLE
    from drivers.scale.trace import axle_scale_trace

    kind = settings["type"]
    if kind in ("xk3190", "toledo", "wim_lines"):
        return _StreamSim(settings)
    if kind not in ("modbus_tcp", "wim_modbus"):
        raise ValueError(f"--simulate has no twin for {kind!r} (try modbus_tcp, xk3190, toledo)")
    default_map = "generic_wim" if kind == "wim_modbus" else "generic"
    sim = ModbusDeviceSimulator(
        str(settings.get("map", default_map)), playback(axle_scale_trace(SIX_AXLE))
    ).start()
    settings["host"], settings["port"] = "127.0.0.1", sim.port
    return sim


# ----- ports -------------------------------------------------------------------------------


def list_ports() -> list[dict[str, str]]:
    """Serial ports with their stable /dev/serial/by-id (and by-path) names."""
    from serial.tools import list_ports as lp

    aliases: dict[str, list[str]] = {}
    for folder in (Path("/dev/serial/by-id"), Path("/dev/serial/by-path")):
        if folder.is_dir():
            for link in sorted(folder.iterdir()):
                try:
                    aliases.setdefault(str(link.resolve()), []).append(str(link))
                except OSError:
                    continue
    out = []
    for info in sorted(lp.comports(), key=lambda i: i.device):
        names = aliases.get(str(Path(info.device).resolve()), [])
        out.append(
            {
                "device": info.device,
                "by_id": next((n for n in names if "/by-id/" in n), ""),
                "by_path": next((n for n in names if "/by-path/" in n), ""),
                "description": info.description or "",
                "hwid": info.hwid or "",
            }
        )
    return out


def probe_ports(args: argparse.Namespace) -> int:
    ports = list_ports()
    if args.json:
        print(json.dumps({"ports": ports}, ensure_ascii=False))
        return EX_OK
    if not ports:
        print("no serial ports found (is the USB adapter plugged in? see `dmesg | tail`)")
        return EX_OK
    for p in ports:
        print(p["device"])
        if p["by_id"]:
            print(f"  by-id:       {p['by_id']}   <- use this name in the config")
        if p["by_path"]:
            print(f"  by-path:     {p['by_path']}")
        print(f"  description: {_reported(p['description'])}")
        print(f"  hardware id: {_reported(p['hwid'])}")
    return EX_OK


def _reported(value: str) -> str:
    """pyserial says ``n/a`` for what the kernel does not report (a built-in UART)."""
    return "not reported by the kernel" if value in ("", "n/a") else value
