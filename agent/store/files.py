"""Durable file writes: temp file, fsync, rename, fsync the directory.

A file (or a directory entry) survives a power cut only once its data is fsynced and the
directory holding its name is fsynced too. The files the station writes for good (images, the
permit and watch lists, the daemon's status and diag dumps) go through here, so a crash at any
instant leaves the old file or the new one, never a partial one under the final name; what it
can leave is a temp file ``.{name}.tmp`` (:data:`TMP_SUFFIX`), which
:meth:`agent.store.evidence.EvidenceStore.recover` removes among the images. Key files
(:func:`agent.store.integrity.write_key_file`: a mode, no overwrite) use :func:`fsync_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path``, making the names in it durable. Raises ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing the parent of each one created.

    A directory entry is only durable once its parent directory is fsynced; without it a power
    cut can lose a freshly created day directory together with the images inside it.
    """
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def _tmp_of(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def _write_tmp(tmp: Path, data: bytes, durable: bool = True) -> None:
    with tmp.open("wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


def write_file_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """temp file → fsync → rename → fsync the directory. Raises ``OSError``.

    A write that fails before the rename removes its temp file; the old file stays in place.
    ``durable=False`` skips both fsyncs (a file that is not evidence, rewritten often:
    ``status.json``): readers still see the old or the new content whole, never a part, but
    after a power cut the file may be the previous one or empty.
    """
    ensure_dir(path.parent)
    tmp = _tmp_of(path)
    try:
        _write_tmp(tmp, data, durable)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_files_atomically(files: list[tuple[Path, bytes]]) -> None:
    """Like :func:`write_file_atomically` for files sharing directories: one fsync per directory.

    On ``OSError`` the temp files and files already renamed are removed before re-raising.
    """
    done: list[Path] = []
    try:
        for path, data in files:
            ensure_dir(path.parent)
            tmp = _tmp_of(path)
            done.append(tmp)
            _write_tmp(tmp, data)
        for path, _ in files:
            _tmp_of(path).replace(path)
            done.append(path)
        for parent in sorted({p.parent for p, _ in files}):
            fsync_dir(parent)
    except OSError:
        for p in done:
            p.unlink(missing_ok=True)
        raise
