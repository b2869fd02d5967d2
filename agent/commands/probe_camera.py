"""``roadside-agent probe camera``: grab frames from a camera without the station.

``probe camera --type TYPE [--source URL|DEVICE|FILE] [--option KEY=VALUE ...] [--seconds S]
[--out FILE.jpg] [--read-plate] [--json]`` opens a camera with the named backend — or, with
``--config FILE [--lane N] [--camera ID]``, a camera of the station config — runs it for a few
seconds with the same driver code the daemon uses, and ends with a summary a technician can
act on: frames received and the effective frame rate, resolution, time to the first frame, every
distinct error and the reconnects. The newest frame is saved as JPEG (``--out``, default
``./probe-<camera id>.jpg``) to check framing and focus; ``--read-plate`` reads its plates with
the config's plate reader (``auto`` without ``--config``). ``--json`` prints one JSON object
instead (``frames``, ``fps``, ``width``, ``height``, ``first_frame_s``, ``errors``,
``reconnects``, ``saved``, ``plates``).

It never touches the running station: no config is written and no record is stored. A V4L2
device or a Pi camera the daemon holds is busy, though: stop the service first.

``--source`` is the backend's main key: ``source`` for ``opencv`` (``/dev/video0``, ``0``,
``rtsp://…``, a video file), ``folder`` for ``replay`` (cycle mode), ``camera_num`` for
``picamera2``.

Live backends are counted by the frames their grabber keeps (``buffer_fps`` is raised to 60 for
the probe, so rates up to 60 fps are measured as they are); the ``replay`` backend, which has no
stream, is triggered five times a second like a station asking for pictures. A video file
shorter than ``--seconds`` loops, which the driver handles as a dropped stream: it shows as a
reconnect with "stream lost, reopening".

Exit status: 0 frames came; 1 no frame (device or file missing, stream unreachable); 2 usage
(unknown type, bad option or config); 69 the backend's library is not installed here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.commands._common import EX_FAILED, EX_OK, EX_UNAVAILABLE, EX_USAGE, parse_options

PROBE_BUFFER_FPS = 60.0  # the highest LiveCameraConfig accepts
TRIGGER_INTERVAL_S = 0.2  # replay: like a station asking for five pictures a second
SOURCE_KEY = {"opencv": "source", "replay": "folder", "picamera2": "camera_num"}


class ProbeError(Exception):
    """The probe cannot run; ``code`` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_parser(what: Any) -> argparse.ArgumentParser:
    c: argparse.ArgumentParser = what.add_parser(
        "camera",
        help="grab frames from a camera for a few seconds, save one, read its plates",
        description="Examples:\n"
        "  roadside-agent probe camera --type opencv --source /dev/video0\n"
        "  roadside-agent probe camera --type opencv "
        "--source 'rtsp://admin:PASS@192.168.1.64:554/Streaming/Channels/101' --read-plate\n"
        "  roadside-agent probe camera --type picamera2 --option exposure_us=2000\n"
        "  roadside-agent probe camera --config /etc/roadside-agent/station.toml --lane 1 "
        "--camera cam-front-1\n"
        "\n"
        "Exit status: 0 frames came, 1 no frame, 2 usage, 69 backend library not installed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--type", dest="camera_type", help="backend: opencv, picamera2, replay")
    c.add_argument(
        "--source",
        help="opencv: /dev/videoN, N, rtsp:// or http:// URL, or a video file; "
        "replay: a folder of photos; picamera2: camera number",
    )
    c.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config key of the backend (repeatable), e.g. width=1920, fourcc=MJPG",
    )
    c.add_argument("--config", type=Path, help="use a camera of this station config instead")
    c.add_argument("--lane", type=int, help="with --config: lane number (default first)")
    c.add_argument("--camera", help="with --config: camera id (default the lane's first)")
    c.add_argument("--seconds", type=float, default=5.0, help="how long to grab (default 5)")
    c.add_argument("--out", type=Path, help="where to save the newest frame (JPEG)")
    c.add_argument("--read-plate", action="store_true", help="read the plates of the saved frame")
    c.add_argument("--json", action="store_true", help="print one JSON object at the end")
    c.set_defaults(func=_run)
    return c


def _run(args: argparse.Namespace) -> int:
    return probe_camera(args)


# ----- settings ------------------------------------------------------------------------------


def camera_settings(args: argparse.Namespace) -> tuple[dict[str, Any], int, Any]:
    """The backend's config table, the lane number and the plate reader config.

    Raises :class:`ProbeError` (exit 2) for a config, lane or camera that is not there.
    """
    from agent.config import ConfigError, load_config
    from drivers.plate import PlateReaderConfig

    settings: dict[str, Any] = {}
    lane_number = args.lane or 1
    plate: Any = PlateReaderConfig(type="auto")
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as err:
            raise ProbeError(
                f"{err}\n(fix it with check-config, or probe with --type/--source)", EX_USAGE
            ) from err
        lane = next((ln for ln in config.lanes if ln.number == args.lane), None)
        if lane is None:
            if args.lane is not None:
                raise ProbeError(f"{args.config}: no lane number {args.lane}", EX_USAGE)
            lane = config.lanes[0]
        cams = {c.id: c for c in lane.cameras}
        if not cams:
            raise ProbeError(f"{args.config}: lane {lane.number} has no cameras", EX_USAGE)
        if args.camera is not None and args.camera not in cams:
            raise ProbeError(
                f"{args.config}: lane {lane.number} has no camera {args.camera!r} "
                f"(it has {', '.join(cams)})",
                EX_USAGE,
            )
        camera = cams[args.camera] if args.camera is not None else lane.cameras[0]
        settings.update(camera.model_dump())
        lane_number = lane.number
        plate = config.plate
    elif args.camera is not None:
        settings["id"] = args.camera
    if args.camera_type:
        settings["type"] = args.camera_type
    if "type" not in settings:
        raise ProbeError("--type is needed (or --config with [[lanes.cameras]])", EX_USAGE)
    kind = str(settings["type"])
    if args.source is not None:
        key = SOURCE_KEY.get(kind, "source")
        settings[key] = args.source
        if kind == "replay":
            settings.setdefault("mode", "cycle")
            if settings["mode"] == "road":
                settings["mode"] = "cycle"
    try:
        settings.update(parse_options(args.option))
    except ValueError as err:
        raise ProbeError(str(err), EX_USAGE) from err
    settings.setdefault("id", "cam-1")
    return settings, lane_number, plate


def _probe_tuning(settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Settings for the probe's run of a live camera: every frame kept, quick retries."""
    tuned = dict(settings)
    tuned["buffer_fps"] = PROBE_BUFFER_FPS
    tuned["buffer_s"] = 4.0
    tuned.setdefault("reconnect_min_s", 0.5)
    tuned.setdefault("reconnect_max_s", 2.0)
    if tuned.get("type") == "opencv":
        # an unreachable RTSP camera must fail within the probe, not after FFmpeg's 10 s
        tuned.setdefault("open_timeout_s", max(1.0, min(seconds, 10.0)))
    return tuned


def _missing_library(kind: str) -> str | None:
    """Why the probe cannot run this backend here (a library not installed), or ``None``."""
    import importlib.util

    if importlib.util.find_spec("cv2") is None:
        return (
            "probe camera needs OpenCV (opencv-python-headless, the 'camera' extra) to read "
            "and save frames"
        )
    if kind == "picamera2":
        from drivers.camera.picamera2 import picamera2_missing_reason

        return picamera2_missing_reason()
    return None


def _source_missing(settings: dict[str, Any]) -> str | None:
    """A one-line reason when the opencv source is a local device or file that is not there."""
    if settings.get("type") != "opencv":
        return None
    source = str(settings.get("source", ""))
    cam = settings.get("id", "cam-1")
    device = f"/dev/video{source}" if source.isdigit() else source
    if device.startswith("/dev/") and not Path(device).exists():
        return (
            f"camera {cam}: no device {device} (is the camera plugged in? "
            "v4l2-ctl --list-devices lists the cameras)"
        )
    local_file = "://" not in source and not device.startswith("/dev/") and Path(source).suffix
    if local_file and not Path(source).is_file():
        return f"camera {cam}: video file {source} does not exist"
    return None


# ----- the run -------------------------------------------------------------------------------


class _ErrorLog(logging.Handler):
    """Collects the camera drivers' error lines (first at ERROR, repeats at DEBUG), counted.

    The probe reports every error itself, once each with a count; the journal-style lines
    would only repeat them on the terminal.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: dict[str, int] = {}
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno in (logging.INFO, logging.WARNING):  # "reconnected": a reconnect
            return
        text = record.getMessage()
        with self._guard:
            self.counts[text] = self.counts.get(text, 0) + 1


@contextmanager
def _collect_driver_errors() -> Iterator[_ErrorLog]:
    handler = _ErrorLog()
    logger = logging.getLogger("drivers")
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _grab_live(camera: Any, seconds: float) -> tuple[Any, float | None, int]:
    """Run the live camera's grabber for ``seconds``: the newest frame it kept, the time to
    the first frame, and how many frames it kept."""
    newest: Any = None
    first_s: float | None = None
    count = 0
    t0 = time.monotonic()
    camera.start()

    def new_frame() -> bool:
        recent = camera.recent()
        return bool(recent) and recent[-1] is not newest

    while (remaining := seconds - (time.monotonic() - t0)) > 0:
        if not camera.wait_until(new_frame, remaining):
            break
        recent = camera.recent()
        if newest is None:
            first_s = time.monotonic() - t0
            count += len(recent)
        else:
            count += sum(1 for f in recent if f.captured_at > newest.captured_at)
        newest = recent[-1]
    return newest, first_s, count


def _grab_triggered(camera: Any, seconds: float) -> tuple[Any, float | None, int]:
    """Captures of a camera without a stream (replay), five a second: the newest frame, the
    time to the first and how many came."""
    from drivers.camera import CameraError

    newest: Any = None
    first_s: float | None = None
    count = 0
    t0 = time.monotonic()
    stop = threading.Event()
    while time.monotonic() - t0 < seconds:
        try:
            got = camera.capture(camera.clock.now(), 1)
        except CameraError:
            got = []  # counted in camera.health
        if got:
            count += len(got)
            newest = got[-1]
            if first_s is None:
                first_s = time.monotonic() - t0
        if stop.wait(min(TRIGGER_INTERVAL_S, max(0.0, seconds - (time.monotonic() - t0)))):
            break
    return newest, first_s, count


def _decode(jpeg: bytes) -> Any:
    import cv2
    import numpy as np

    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def _save_jpeg(data: bytes, image: Any, out: Path) -> None:
    """Write the frame as JPEG (re-encoded when the source gave PNG). Raises ``OSError``."""
    import cv2

    if not data.startswith(b"\xff\xd8"):
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise OSError(f"cannot encode the frame as JPEG for {out}")
        data = buf.tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)


def _read_plates(frame: Any, plate_config: Any) -> tuple[list[dict[str, Any]], str]:
    """The plates of ``frame`` with the configured reader, and an error text ('' when read)."""
    from drivers.plate import PlateReaderError
    from drivers.plate.model import open_plate_reader

    with _collect_driver_errors() as errors:
        reader = open_plate_reader(plate_config)
    if reader is None:
        why = "; ".join(errors.counts) or "see the journal"
        return [], f"plate reader {plate_config.type!r} not available: {why}"
    try:
        reads = reader.read(frame)
    except PlateReaderError as err:
        return [], str(err)
    finally:
        reader.shutdown()
    plates = [r.to_dict("box", "double_row") for r in reads]
    return plates, ""


def probe_camera(args: argparse.Namespace) -> int:
    try:
        return _probe(args)
    except ProbeError as err:
        print(f"probe: {err}", file=sys.stderr)
        return err.code


@dataclass(frozen=True)
class _Grab:
    """What a camera gave in the probe's run."""

    newest: Any  # the newest Frame, or None
    first_s: float | None
    count: int
    reconnects: int
    errors: dict[str, int]  # message → count
    elapsed_s: float


def _probe(args: argparse.Namespace) -> int:
    from drivers.camera.live import describe_source

    if args.seconds <= 0:
        raise ProbeError("--seconds must be more than 0", EX_USAGE)
    settings, lane, plate_config = camera_settings(args)
    kind = str(settings["type"])
    cls, config, live = _backend(kind, settings, args.seconds)
    gone = _source_missing(settings)
    if gone:
        raise ProbeError(gone, EX_FAILED)
    where = describe_source(
        settings.get(SOURCE_KEY.get(kind, "source"), settings.get("mode", "")) or "(default)"
    )
    if not args.json:
        print(f"grabbing {kind} camera {config.id} ({where}) for {args.seconds:g} s ...")
    grab = _grab(cls, config, lane, live, args.seconds)
    result: dict[str, Any] = {
        "type": kind,
        "camera": config.id,
        "source": where,
        "seconds": round(grab.elapsed_s, 3),
        "frames": grab.count,
        "fps": round(grab.count / grab.elapsed_s, 1) if grab.elapsed_s > 0 else 0.0,
        "width": None,
        "height": None,
        "first_frame_s": None if grab.first_s is None else round(grab.first_s, 3),
        "errors": [{"message": k, "count": v} for k, v in grab.errors.items()],
        "reconnects": grab.reconnects,
        "saved": None,
        "plates": None,
    }
    problems: list[str] = []
    if grab.newest is not None:
        problems = _look_at(grab.newest, args.out or Path(f"probe-{config.id}.jpg"), result)
        if args.read_plate:
            result["plates"], why = _read_plates(grab.newest, plate_config)
            if why:
                problems.append(why)
    result["problems"] = problems
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _summary(result, args)
    for p in problems if args.json else []:
        print(f"probe: {p}", file=sys.stderr)
    return EX_OK if grab.count else EX_FAILED


def _backend(kind: str, settings: dict[str, Any], seconds: float) -> tuple[Any, Any, bool]:
    """The camera class, its validated config and whether it is a live (streaming) camera.

    Raises :class:`ProbeError`: unknown type or bad setting (2), library missing (69).
    """
    from pydantic import ValidationError

    from drivers.camera import CAMERAS
    from drivers.camera.live import LiveCamera
    from drivers.registry import BackendError

    try:
        cls = CAMERAS.get(kind)
    except BackendError as err:
        unknown = kind not in CAMERAS.names()
        raise ProbeError(str(err), EX_USAGE if unknown else EX_UNAVAILABLE) from err
    missing = _missing_library(kind)
    if missing:
        raise ProbeError(f"camera {settings['id']}: {missing}", EX_UNAVAILABLE)
    live = issubclass(cls, LiveCamera)
    try:
        config = cls.Config.model_validate(_probe_tuning(settings, seconds) if live else settings)
    except ValidationError as err:
        lines = [
            f"{'.'.join(str(p) for p in e['loc']) or '(camera)'} = {e.get('input')!r} → {e['msg']}"
            for e in err.errors()
        ]
        raise ProbeError("\n       ".join(lines), EX_USAGE) from err
    return cls, config, live


def _grab(cls: Any, config: Any, lane: int, live: bool, seconds: float) -> _Grab:
    """Open the camera, grab for ``seconds`` and shut it down, its error lines counted.

    Raises :class:`ProbeError` when it cannot be opened (69 for a missing library, else 1).
    """
    from drivers.camera import CameraError
    from drivers.camera.live import LiveCamera

    t0 = time.monotonic()
    with _collect_driver_errors() as errors:
        try:
            camera = cls(config, lane=lane)
        except CameraError as err:
            code = EX_UNAVAILABLE if isinstance(err.__cause__, ImportError) else EX_FAILED
            raise ProbeError(str(err), code) from err
        try:
            if live:
                newest, first_s, count = _grab_live(camera, seconds)
                assert isinstance(camera, LiveCamera)
                reconnects = max(0, camera.connects - 1)
            else:
                newest, first_s, count = _grab_triggered(camera, seconds)
                reconnects = 0
            health_errors = camera.health.errors
            last_error = camera.health.last_error
        finally:
            camera.shutdown()
    elapsed = time.monotonic() - t0
    error_counts = dict(errors.counts)
    if health_errors and not error_counts and last_error:
        error_counts[last_error] = health_errors
    return _Grab(newest, first_s, count, reconnects, error_counts, elapsed)


def _look_at(newest: Any, out: Path, result: dict[str, Any]) -> list[str]:
    """Decode the newest frame, note its size in ``result`` and save it to ``out``; the
    problems met on the way."""
    image = _decode(newest.jpeg)
    if image is None:
        return ["the newest frame cannot be decoded"]
    result["height"], result["width"] = (int(n) for n in image.shape[:2])
    try:
        _save_jpeg(newest.jpeg, image, out)
        result["saved"] = str(out)
    except OSError as err:
        return [f"cannot save the frame: {err}"]
    return []


def _summary(r: dict[str, Any], args: argparse.Namespace) -> None:
    print("-" * 60)
    print(f"frames: {r['frames']} in {r['seconds']:.1f} s ({r['fps']} fps)")
    if r["width"]:
        print(f"resolution: {r['width']}x{r['height']}")
    if r["first_frame_s"] is not None:
        print(f"first frame after: {r['first_frame_s']:.2f} s")
    if r["reconnects"]:
        print(f"reconnects: {r['reconnects']}")
    for e in r["errors"]:
        print(f"error ×{e['count']}: {e['message']}")
    for p in r["problems"]:
        print(f"problem: {p}")
    if r["saved"]:
        print(f"saved: {r['saved']} (check framing and focus: a plate ≥ ~100 px wide)")
    if args.read_plate and r["plates"] is not None:
        if not r["plates"]:
            print("plates: none read")
        for p in r["plates"]:
            print(
                f"plate: {p['text']}  {p['color']}  confidence {p['confidence']:.2f}  "
                f"box {p['box']}"
            )
    if not r["frames"]:
        hint = (
            "check the URL, user and password, the network (ping) and that RTSP is on (ffprobe URL)"
            if "://" in r["source"]
            else "check the cable, the device (v4l2-ctl --list-devices, rpicam-hello "
            "--list-cameras), and that the station is not holding it (systemctl stop "
            "roadside-agent)"
        )
        print(f"verdict: NO FRAME. {hint}.")
    elif r["errors"] or r["reconnects"]:
        print("verdict: frames arrive, with errors: see above.")
    else:
        print("verdict: OK. Look at the saved frame.")
