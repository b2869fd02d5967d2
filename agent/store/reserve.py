"""The database's disk reserve: space set aside so records go on being committed on a full disk.

Photos are refused below ``reserve_free_mb`` (:mod:`agent.store.retention`), but on a disk that
something else fills (a log, a copied file, photos faster than eviction) SQLite itself runs out
of room and then *nothing* can be committed, records without photos included. So the station
keeps ``{data_dir}/db-reserve.bin``, ``db_reserve_mb`` of blocks allocated for real
(``posix_fallocate``: not a sparse file), and gives it back in steps when the disk is full:

* a commit that SQLite refuses with "database or disk is full" releases one step and is tried
  again, without photos (:meth:`agent.store.evidence.EvidenceStore.commit`);
* start-up on a full disk releases a step before the database is opened;
* retention raises a ``disk_reserve_released`` alarm and refills the reserve once the disk has
  room for it again (above the photo floor and the reserve together).

Records without photos are a few KB: the 64 MB default keeps a station recording for thousands
of vehicles after the disk is full, while the alarm asks for someone to come.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_FILE = "db-reserve.bin"
#: The reserve is released in this many steps (each at least :data:`MIN_STEP_BYTES`).
STEPS = 4
MIN_STEP_BYTES = 1024 * 1024


class DiskReserve:
    """The preallocated reserve file of one data directory (``size_bytes`` when full)."""

    def __init__(self, data_dir: Path, size_bytes: int) -> None:
        self.path = Path(data_dir) / RESERVE_FILE
        self.size_bytes = max(0, int(size_bytes))
        self.step_bytes = max(MIN_STEP_BYTES, self.size_bytes // STEPS)
        #: how many times a step was released (retention alarms on a change)
        self.releases = 0

    def held(self) -> int:
        """Bytes the reserve holds now."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def fill(self) -> int:
        """Grow the reserve to ``size_bytes`` with real blocks; returns the bytes added.

        When the disk cannot take it all, nothing is added (the file keeps its old size).
        """
        held = self.held()
        if held >= self.size_bytes:
            return 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as err:
            log.warning("reserve: cannot create %s: %s", self.path, err)
            return 0
        try:
            os.posix_fallocate(fd, 0, self.size_bytes)
            os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, held)  # give back what a partial allocation took
            log.warning("reserve: %s not grown to %d MB: %s", self.path, self.size_bytes >> 20, err)
            return 0
        finally:
            os.close(fd)
        return self.size_bytes - held

    def release(self, nbytes: int | None = None) -> int:
        """Give back ``nbytes`` (default one step) of the reserve; returns the bytes freed."""
        held = self.held()
        if held <= 0:
            return 0
        keep = max(0, held - (self.step_bytes if nbytes is None else nbytes))
        try:
            if keep:
                os.truncate(self.path, keep)
            else:
                self.path.unlink()
        except OSError as err:
            log.error("reserve: cannot release %s: %s", self.path, err)
            return 0
        self.releases += 1
        log.error(
            "reserve: disk full: released %.1f MB of the database reserve (%.1f MB left) so "
            "records can still be committed",
            (held - keep) / 2**20,
            keep / 2**20,
        )
        return held - keep
