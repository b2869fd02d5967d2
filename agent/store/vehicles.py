"""The vehicle registry, as pushed by the platform (``set-vehicles``).

The platform sends the complete list with its version; it replaces the previous one atomically,
on disk and in memory: a list with one bad entry (or two entries for one plate) is refused whole,
with a message naming the entry, and the old list stays in force. The verdict uses it through
:func:`agent.legal.judge` (``vehicles=registry.vehicles_for(plate),
registry_version=registry.version``). Entry format: :mod:`agent.legal.registry`.

Storage: ``vehicles.json`` in the data directory, written like the permit book's lists
(:func:`agent.store.files.write_file_atomically`): a crash leaves the old list or the new one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.legal.facts import normalize_plate
from agent.legal.registry import RegisteredVehicle, VehicleListError, parse_vehicle
from agent.store.permits import PermitStoreError, read_list_file, store_list_file

__all__ = ["RegisteredVehicle", "VehicleListError", "VehicleRegistry"]

VEHICLES_FILE = "vehicles.json"
VEHICLES_SCHEMA = "roadside.vehicles.v1"
MAX_VERSION_CHARS = 64


class VehicleRegistry:
    """The registered vehicles of one station, kept in ``data_dir``.

    Thread-safe like :class:`agent.store.permits.PermitBook`: readers see the old or the new
    list (one assignment swaps an immutable snapshot). Raises
    :class:`agent.store.permits.PermitStoreError` when the stored file cannot be read.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self._path = Path(data_dir) / VEHICLES_FILE
        self._lock = threading.Lock()
        self._snapshot: tuple[str, dict[str, RegisteredVehicle]] = ("", {})
        version, entries = self._load()
        try:
            self._snapshot = (version, _index(entries))
        except VehicleListError as err:
            raise PermitStoreError(f"{self._path}: stored list is invalid: {err}") from err

    @property
    def version(self) -> str:
        """The platform's version of the list in force ("" before the first push)."""
        return self._snapshot[0]

    def vehicles_for(self, plate: str | None) -> tuple[RegisteredVehicle, ...]:
        """``(entry,)`` when the plate is registered, else ``()``: for ``judge(vehicles=...)``."""
        if not plate:
            return ()
        entry = self._snapshot[1].get(normalize_plate(plate))
        return (entry,) if entry is not None else ()

    def count(self) -> int:
        return len(self._snapshot[1])

    def replace(self, entries: Iterable[Any], version: str) -> int:
        """Validate the whole list, store it atomically, then use it. Returns the count.

        Raises :class:`VehicleListError` (nothing changed) or ``PermitStoreError``.
        """
        if isinstance(entries, (str, bytes, Mapping)):
            raise VehicleListError("set-vehicles needs a list of vehicles")
        if not isinstance(version, str) or not version.strip():
            raise VehicleListError('set-vehicles needs a version (text), e.g. "2026-11-26.1"')
        if len(version) > MAX_VERSION_CHARS:
            raise VehicleListError(f"version is longer than {MAX_VERSION_CHARS} characters")
        index = _index(list(entries))
        with self._lock:
            payload = {
                "schema": VEHICLES_SCHEMA,
                "version": version,
                "entries": [v.to_dict() for v in index.values()],
            }
            store_list_file(self._path, payload)
            self._snapshot = (version, index)
        return len(index)

    def _load(self) -> tuple[str, list[Any]]:
        data = read_list_file(self._path, VEHICLES_SCHEMA)
        if data is None:
            return "", []
        if not isinstance(data.get("version"), str):
            raise PermitStoreError(f"{self._path}: needs a 'version' (text)")
        return data["version"], data["entries"]


def _index(entries: list[Any]) -> dict[str, RegisteredVehicle]:
    """The entries by plate; :class:`VehicleListError` for a bad entry or a plate twice."""
    index: dict[str, RegisteredVehicle] = {}
    where: dict[str, int] = {}
    for i, entry in enumerate(entries):
        vehicle = parse_vehicle(entry, i)
        if vehicle.key in index:
            raise VehicleListError(
                f"vehicles {where[vehicle.key]} and {i} are the same plate ({vehicle.plate})"
            )
        index[vehicle.key] = vehicle
        where[vehicle.key] = i
    return index
