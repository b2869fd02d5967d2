"""``roadside-agent diag``: one archive with everything the operations desk asks for.

A technician on site runs ``sudo roadside-agent diag`` and sends the file it names. Inside
(``roadside-diag-{station}-{UTC time}/``):

=====================  ==================================================================
``MANIFEST.txt``       what is in the archive and what could not be collected, and why
``journal.txt``        the last lines of the service's journal, ``systemctl status``
``unit.txt``           the unit as systemd runs it, drop-ins included (``systemctl cat``)
``config/``            the station config with passwords, keys and secrets redacted, its
                       SHA-256 (the heartbeat's ``config_hash``), and ``check-config``
``credentials.txt``    names, sizes and modes of the credential files — never contents
``status.json``        what the daemon last wrote; ``status-cli.json``: ``status --json``
``frames/``            raw frame ring buffers and whatever the daemon dumped in
                       ``{data_dir}/diag/`` (see below)
``images/``            the newest vehicle images
``versions.txt``       agent, Python, key packages, OS, kernel, board; ``pip-freeze.txt``
``system.txt``         disk, clock synchronisation, serial and camera devices
=====================  ==================================================================

Never in the archive: private keys, the database, the MQTT key. Every part is collected on
its own; a missing journal, an unreadable config or a station that never ran gives a note in
the manifest, not a failed diag — a broken station is exactly when this is needed.

The daemon's side (``{data_dir}/diag/``): files the station dumps for this command, e.g.
``raw-{device}.log`` with a device's last raw frames (hex, one per line). Every regular file
there (and in ``{data_dir}/raw-frames/``) is copied, each capped in size. When the daemon
runs and announces ``"diag_dump_signal": "SIGUSR1"`` in ``status.json``, diag first sends it
SIGUSR1 and waits (5 s at most) for a renewed ``diag/dump.json``, so the frames are current.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from agent import __version__
from agent.commands._common import (
    DEFAULT_CONFIG,
    DEFAULT_DATA_DIR,
    EX_FAILED,
    LocateError,
    add_location_args,
    locate,
)
from agent.commands.progress import Progress

JOURNAL_LINES = 2000
IMAGES = 10
FILE_CAP_BYTES = 16 * 1024 * 1024
COMMAND_TIMEOUT_S = 60
DUMP_TIMEOUT_S = 5.0
UNIT = "roadside-agent"
CREDENTIALS_DIR = Path("/etc/roadside-agent/credentials")
FRAME_DIRS = ("diag", "raw-frames")
KEY_PACKAGES = (
    "roadside-agent",
    "paho-mqtt",
    "pymodbus",
    "pyserial",
    "pydantic",
    "cryptography",
    "numpy",
    "pillow",
    "opencv-python-headless",
    "ai-edge-litert",
    "tflite-runtime",
    "onnxruntime",
    "picamera2",
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "diag",
        help="write a diagnostics archive for the operations desk",
        description="Collect the journal, the config (secrets redacted), status, raw frames, "
        "the newest images and versions into one .tar.gz to send to the operations desk. "
        "Run it with sudo so the journal and the credential list are readable.",
    )
    add_location_args(p)
    p.add_argument(
        "-o",
        "--output",
        help="archive path or directory (default: roadside-diag-STATION-TIME.tar.gz here)",
    )
    p.add_argument(
        "--images", type=int, default=IMAGES, help=f"newest images to include ({IMAGES})"
    )
    p.add_argument(
        "--journal-lines",
        type=int,
        default=JOURNAL_LINES,
        help=f"journal lines of the service ({JOURNAL_LINES})",
    )
    p.set_defaults(func=run)
    return p


# -- collection -----------------------------------------------------------------------------------


@dataclass
class Archive:
    """The archive being written: members added by name, a manifest of what happened."""

    tar: tarfile.TarFile
    prefix: str
    notes: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)

    def add_bytes(self, name: str, data: bytes, mtime: float | None = None) -> None:
        info = tarfile.TarInfo(f"{self.prefix}/{name}")
        info.size = len(data)
        info.mtime = int(mtime if mtime is not None else time.time())
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))
        self.members.append(name)

    def add_text(self, name: str, text: str) -> None:
        self.add_bytes(name, text.encode())

    def add_file(self, name: str, path: Path) -> None:
        size = path.stat().st_size
        if size > FILE_CAP_BYTES:
            with path.open("rb") as fh:
                fh.seek(size - FILE_CAP_BYTES)
                data = fh.read(FILE_CAP_BYTES)
            self.note(f"{name}: only the last {FILE_CAP_BYTES} of {size} bytes")
        else:
            data = path.read_bytes()
        self.add_bytes(name, data, path.stat().st_mtime)

    def note(self, text: str) -> None:
        self.notes.append(text)


def _command(argv: list[str]) -> tuple[bool, str]:
    """Run a command; ``(ran, output)``. Never raises."""
    exe = shutil.which(argv[0])
    if exe is None:
        return False, f"{argv[0]}: not installed on this machine\n"
    try:
        result = subprocess.run(
            [exe, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"{' '.join(argv)}: {err}\n"
    out = result.stdout
    if result.stderr:
        out += ("\n" if out and not out.endswith("\n") else "") + result.stderr
    return True, f"$ {' '.join(argv)}   (exit {result.returncode})\n{out}"


def _journal(a: Archive, lines: int) -> None:
    ran, out = _command(
        ["journalctl", "-u", UNIT, "-n", str(lines), "--no-pager", "-o", "short-iso-precise"]
    )
    if not ran:
        a.note(f"journal: {out.strip()} — not included")
    _, status = _command(["systemctl", "status", UNIT, "--no-pager", "-l", "-n", "0"])
    a.add_text("journal.txt", status + "\n" + out)
    _, unit = _command(["systemctl", "cat", UNIT, "--no-pager"])
    a.add_text("unit.txt", unit)


def _config(a: Archive, config_path: Path) -> str | None:
    """The redacted config and its check; returns the station id when readable."""
    from agent.config import ConfigError, is_secret_key, load_config, redact_config

    try:
        text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        a.note(f"config: cannot read {config_path}: {err}")
        return None
    a.add_text(f"config/{config_path.name}.redacted", redact_config(text))
    a.add_text(
        "config/sha256.txt",
        f"{hashlib.sha256(text.encode()).hexdigest()}  {config_path}\n",
    )
    try:
        cfg = load_config(config_path)
    except ConfigError as err:
        # Problems quote the offending value: not when the key is a secret one.
        problems = [
            dataclasses.replace(p, value="'<redacted>'")
            if p.value and is_secret_key(re.split(r"[.\[]", p.path)[-1] or p.path)
            else p
            for p in err.problems
        ]
        a.add_text(
            "config/check-config.txt",
            "".join(p.format(err.filename) + "\n" for p in problems),
        )
        a.note(f"config: {len(err.problems)} problem(s), see config/check-config.txt")
        return None
    except Exception as err:  # a broken install must still give a diag
        a.add_text("config/check-config.txt", f"check-config crashed: {err!r}\n")
        a.note(f"config: check-config crashed: {err!r}")
        return None
    a.add_text("config/check-config.txt", f"{config_path}: OK\n")
    station_id: str = cfg.station.id
    return station_id


def _credentials(a: Archive, cred_dir: Path) -> None:
    rows = []
    try:
        for p in sorted(cred_dir.iterdir()):
            st = p.stat()
            rows.append(f"{oct(st.st_mode & 0o7777)}  {st.st_size:8d}  {p.name}")
    except OSError as err:
        rows.append(f"cannot list {cred_dir}: {err}")
    a.add_text(
        "credentials.txt", f"{cred_dir} (names only, never contents)\n" + "\n".join(rows) + "\n"
    )


def _status(a: Archive, data_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    status_file = data_dir / "status.json"
    if status_file.is_file():
        a.add_file("status.json", status_file)
    else:
        a.note(f"status: no {status_file} (has the daemon run with this data dir?)")
    from agent.commands import status

    try:
        doc = status.collect(data_dir)
    except SystemExit:
        a.note(f"status: no station database in {data_dir}")
        return {}
    except Exception as err:
        a.note(f"status: {err!r}")
        return {}
    a.add_text("status-cli.json", json.dumps(doc, ensure_ascii=False, indent=1, default=str))
    return doc


def request_dump(data_dir: Path, timeout_s: float = DUMP_TIMEOUT_S) -> str:
    """Ask the running daemon for fresh ring buffers; returns a note (empty on success).

    Only when the daemon says in ``status.json`` that it handles the signal
    (``"diag_dump_signal": "SIGUSR1"``) — SIGUSR1 would kill a process without a handler —
    and only to the pid it wrote there, if that process is still a roadside-agent. The daemon
    writes ``diag/*`` and then ``diag/dump.json``; this waits for the latter to be renewed.
    """
    try:
        doc = json.loads((data_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if doc.get("diag_dump_signal") != "SIGUSR1" or not doc.get("running"):
        return ""
    pid = int(doc.get("pid") or 0)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return f"frames: daemon pid {pid} from status.json is not running; older dumps only"
    is_daemon = b"roadside-agent" in cmdline or b"-m agent" in cmdline
    if pid <= 1 or not is_daemon or b" run " not in cmdline + b" ":
        return f"frames: pid {pid} is not the daemon; older dumps only"
    marker = data_dir / "diag" / "dump.json"
    before = marker.stat().st_mtime_ns if marker.exists() else 0
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as err:
        return f"frames: cannot signal the daemon (pid {pid}): {err}; older dumps only"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if marker.exists() and marker.stat().st_mtime_ns != before:
            return ""
        time.sleep(0.1)  # another process writes the file: nothing to wait on but the file
    return f"frames: the daemon did not dump within {timeout_s:g} s; older dumps only"


def _frames(a: Archive, data_dir: Path) -> None:
    note = request_dump(data_dir)
    if note:
        a.note(note)
    found = 0
    for sub in FRAME_DIRS:
        d = data_dir / sub
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            if p.is_file() and not p.is_symlink():
                a.add_file(f"frames/{sub}/{p.relative_to(d)}", p)
                found += 1
    if not found:
        a.note(f"frames: nothing in {data_dir}/diag or {data_dir}/raw-frames")


def newest_images(data_dir: Path, limit: int) -> list[Path]:
    """The newest ``limit`` images still on disk, newest record first.

    Asks the station database (the one place that knows which file belongs to which record)
    read-only, so it works whatever the folder layout and never blocks the daemon.
    """
    if limit <= 0:
        return []
    from agent.store.readonly import newest_image_paths

    paths = newest_image_paths(data_dir, limit * 4)
    found = [data_dir / p for p in paths if (data_dir / p).is_file()]
    return found[:limit]


def _images(a: Archive, data_dir: Path, limit: int) -> None:
    images = newest_images(data_dir, limit)
    for img in images:
        a.add_file(f"images/{img.relative_to(data_dir / 'images')}", img)
    if not images and limit > 0:
        a.note(f"images: none in {data_dir}/images")


def _versions(a: Archive) -> None:
    lines = [
        f"roadside-agent {__version__}",
        f"python {sys.version.split()[0]} ({sys.executable})",
        f"platform {platform.platform()}",
        f"machine {platform.machine()}",
    ]
    for name in KEY_PACKAGES:
        try:
            lines.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{name} (not installed)")
    for path, label in ((Path("/proc/device-tree/model"), "board"), (Path("/etc/os-release"), "")):
        try:
            text = path.read_text(errors="replace").replace("\0", "").strip()
        except OSError:
            continue
        if label:
            lines.append(f"{label} {text}")
        else:
            pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.M)
            lines.append(f"os {pretty.group(1) if pretty else text.splitlines()[0]}")
    _, systemd = _command(["systemctl", "--version"])
    lines.append(systemd.splitlines()[1] if len(systemd.splitlines()) > 1 else systemd.strip())
    a.add_text("versions.txt", "\n".join(lines) + "\n")
    _, freeze = _command([sys.executable, "-m", "pip", "freeze", "--all"])
    a.add_text("pip-freeze.txt", freeze)


def _system(a: Archive, data_dir: Path) -> None:
    parts: list[str] = []
    try:
        du = shutil.disk_usage(data_dir)
        parts.append(
            f"disk {data_dir}: {du.free / 1e9:.2f} GB free of {du.total / 1e9:.2f} GB "
            f"({100 * du.free / du.total:.0f}% free)"
        )
    except OSError as err:
        parts.append(f"disk {data_dir}: {err}")
    for argv in (
        ["df", "-h"],
        ["du", "-sh", *(str(p) for p in sorted(data_dir.glob("*")))] if data_dir.is_dir() else [],
        ["timedatectl", "show"],
        ["timedatectl", "timesync-status"],
        ["uptime"],
    ):
        if argv:
            parts.append(_command(argv)[1])
    devices = []
    for pattern in ("serial/by-id/*", "ttyUSB*", "ttyACM*", "ttyAMA*", "video*", "media*"):
        for p in sorted(Path("/dev").glob(pattern)):
            target = f" -> {os.path.realpath(p)}" if p.is_symlink() else ""
            devices.append(f"/dev/{p.relative_to('/dev')}{target}")
    parts.append(
        "devices:\n" + ("\n".join(devices) if devices else "(no serial or camera devices)")
    )
    a.add_text("system.txt", "\n".join(parts) + "\n")


def _resolve_data_dir(args: argparse.Namespace) -> tuple[Path, str]:
    """The data dir from --data-dir or the config; a bad config falls back to the default."""
    try:
        where = locate(args.config, args.data_dir)
    except LocateError as err:
        return DEFAULT_DATA_DIR, f"data dir: {err}; looked in {DEFAULT_DATA_DIR}"
    return where.data_dir, where.note


def _output_path(args: argparse.Namespace, stem: str) -> Path:
    if not args.output:
        return Path.cwd() / f"{stem}.tar.gz"
    out = Path(args.output)
    return out / f"{stem}.tar.gz" if out.is_dir() else out


def run(args: argparse.Namespace) -> int:
    data_dir, data_note = _resolve_data_dir(args)
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    now = datetime.now(UTC)
    station_guess = _station_id_guess(config_path)
    stem = f"roadside-diag-{station_guess}-{now:%Y%m%dT%H%M%SZ}"
    path = _output_path(args, stem)
    tmp = path.with_name(path.name + ".part")
    steps: list[tuple[str, Callable[[Archive], object]]] = [
        ("journal", lambda a: _journal(a, args.journal_lines)),
        ("config", lambda a: _config(a, config_path)),
        ("credentials", lambda a: _credentials(a, CREDENTIALS_DIR)),
        ("status", lambda a: _status(a, data_dir)),
        ("frames", lambda a: _frames(a, data_dir)),
        ("images", lambda a: _images(a, data_dir, args.images)),
        ("versions", _versions),
        ("system", lambda a: _system(a, data_dir)),
    ]
    try:
        tar = tarfile.open(tmp, "w:gz")  # noqa: SIM115 (closed below, after the manifest)
    except OSError as err:
        print(f"diag: cannot write {tmp}: {err}", file=sys.stderr)
        return EX_FAILED
    archive = Archive(tar, stem)
    if data_note:
        archive.note(data_note)
    with tar, Progress("diag", total=len(steps)) as progress:
        for name, step in steps:
            progress.advance(0, name)
            try:
                step(archive)
            except Exception as err:  # one part failing never loses the others
                archive.note(f"{name}: failed: {err!r}")
            progress.advance()
        heading = [
            f"roadside-agent diag, {now:%Y-%m-%d %H:%M:%S} UTC, station {station_guess}",
            f"config {config_path}, data dir {data_dir}",
        ]
        archive.add_text("MANIFEST.txt", _manifest(heading, archive))
    try:
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except OSError as err:
        print(f"diag: cannot write {path}: {err}", file=sys.stderr)
        return EX_FAILED
    _print_result(args, path, archive)
    return 0


def _manifest(heading: list[str], archive: Archive) -> str:
    """``MANIFEST.txt``: ``heading``, then what is in the archive and what could not be."""
    lines = [
        *heading,
        "",
        "contents:",
        *(f"  {m}" for m in archive.members),
        "",
        "notes:" if archive.notes else "notes: none",
        *(f"  {n}" for n in archive.notes),
    ]
    return "\n".join(lines) + "\n"


def _print_result(args: argparse.Namespace, path: Path, archive: Archive) -> None:
    if args.json:
        print(
            json.dumps(
                {"archive": str(path), "members": archive.members, "notes": archive.notes},
                ensure_ascii=False,
            )
        )
    else:
        for n in archive.notes:
            print(f"note: {n}", file=sys.stderr)
        print(path)


def _station_id_guess(config_path: Path) -> str:
    """The station id for the file name, read leniently (the config may be broken)."""
    try:
        text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "unknown"
    m = re.search(r'^\s*id\s*=\s*"([A-Za-z0-9_-]{1,64})"', text, re.M)
    return m.group(1) if m else "unknown"
