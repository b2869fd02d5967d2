"""The permit book and the watch-list, as pushed by the platform.

The platform sends whole lists (MQTT commands ``set-permits`` / ``set-watchlist``); each list
replaces the previous one atomically, on disk and in memory: a list with one bad entry is refused
whole, with a message naming the entry, and the old list stays in force. The verdict uses them
through :func:`agent.legal.judge` (``permits=book.permits_for(plate)``,
``watchlist=book.watch_for(plate)``).

Storage: ``permits.json`` and ``watchlist.json`` in the data directory, each written to a temp
file, fsynced, renamed over the old one, and the directory fsynced
(:func:`agent.store.files.write_file_atomically`): a crash at any instant leaves either the old
list or the new one, never a mix or a partial file.

Entry formats (JSON objects; unknown keys are refused so a typo cannot drop a condition):

- permit: ``{"plate": "苏L12345", "valid_from": "2026-11-01", "valid_to": "2026-11-30",
  "max_gross_kg": 62000, "permit_id": "JS-2026-0001"}``; dates are whole days (inclusive) in the
  station's offset, or ISO times with a UTC offset;
- watch-list: ``{"plate": "苏L12345", "reason": "..."}`` or just ``"苏L12345"``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from agent.legal.facts import InvalidFactsError, Permit, WatchEntry, normalize_plate
from agent.store.files import write_file_atomically

__all__ = ["Permit", "PermitBook", "PermitListError", "PermitStoreError", "WatchEntry"]

PERMITS_FILE = "permits.json"
WATCHLIST_FILE = "watchlist.json"
PERMITS_SCHEMA = "roadside.permits.v1"
WATCHLIST_SCHEMA = "roadside.watchlist.v1"

_PERMIT_KEYS = {"plate", "valid_from", "valid_to", "max_gross_kg", "permit_id"}
_WATCH_KEYS = {"plate", "reason"}


class PermitListError(ValueError):
    """A pushed list was refused; the message names the entry and what is wrong with it."""


class PermitStoreError(OSError):
    """The stored lists cannot be read or written (names the file)."""


def _when(value: Any, where: str, key: str) -> date | datetime:
    if not isinstance(value, str):
        raise PermitListError(f"{where}: {key} must be an ISO date or time, got {value!r}")
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise PermitListError(f"{where}: {key} {value!r} is not an ISO date or time") from None
    if moment.tzinfo is None:
        raise PermitListError(f"{where}: {key} {value!r} needs a UTC offset, e.g. +08:00")
    return moment


def parse_permit(entry: Any, index: int = 0) -> Permit:
    """One permit from its JSON form; :class:`PermitListError` says what is wrong."""
    where = f"permit {index}"
    if not isinstance(entry, Mapping):
        raise PermitListError(f"{where}: expected an object, got {type(entry).__name__}")
    if isinstance(entry.get("plate"), str):
        where += f" ({entry['plate']})"
    unknown = sorted(set(entry) - _PERMIT_KEYS)
    if unknown:
        raise PermitListError(f"{where}: unknown key(s) {', '.join(unknown)}")
    missing = sorted(_PERMIT_KEYS - {"permit_id"} - set(entry))
    if missing:
        raise PermitListError(f"{where}: missing {', '.join(missing)}")
    plate, max_gross, permit_id = entry["plate"], entry["max_gross_kg"], entry.get("permit_id", "")
    if not isinstance(plate, str):
        raise PermitListError(f"{where}: plate must be text")
    if not isinstance(permit_id, str):
        raise PermitListError(f"{where}: permit_id must be text")
    if isinstance(max_gross, bool) or not isinstance(max_gross, int):
        raise PermitListError(f"{where}: max_gross_kg must be whole kg, got {max_gross!r}")
    try:
        return Permit(
            plate=plate,
            valid_from=_when(entry["valid_from"], where, "valid_from"),
            valid_to=_when(entry["valid_to"], where, "valid_to"),
            max_gross_kg=max_gross,
            permit_id=permit_id,
        )
    except InvalidFactsError as err:
        raise PermitListError(f"{where}: {str(err).removeprefix(f'permit {plate}: ')}") from err


def parse_watch(entry: Any, index: int = 0) -> WatchEntry:
    """One watch-list entry from its JSON form (an object or a bare plate)."""
    where = f"watch-list entry {index}"
    if isinstance(entry, str):
        entry = {"plate": entry}
    if not isinstance(entry, Mapping):
        raise PermitListError(f"{where}: expected an object or a plate, got {entry!r}")
    unknown = sorted(set(entry) - _WATCH_KEYS)
    if unknown:
        raise PermitListError(f"{where}: unknown key(s) {', '.join(unknown)}")
    plate, reason = entry.get("plate"), entry.get("reason", "")
    if not isinstance(plate, str) or not isinstance(reason, str):
        raise PermitListError(f"{where}: plate and reason must be text")
    try:
        return WatchEntry(plate, reason)
    except InvalidFactsError as err:
        raise PermitListError(f"{where}: {err}") from err


class PermitBook:
    """Permits and watch-list of one station, kept in ``data_dir``.

    Thread-safe: readers see either the old or the new list (an immutable snapshot is swapped
    in one assignment); writers are serialised. Raises :class:`PermitStoreError` when a stored
    file cannot be read (the daemon raises an alarm and keeps running without permits).
    """

    def __init__(self, data_dir: Path | str) -> None:
        self._dir = Path(data_dir)
        self._lock = threading.Lock()
        self._permits: dict[str, tuple[Permit, ...]] = {}
        self._watch: dict[str, WatchEntry] = {}
        self._permit_count = 0
        permits = self._load(PERMITS_FILE, PERMITS_SCHEMA)
        watch = self._load(WATCHLIST_FILE, WATCHLIST_SCHEMA)
        try:
            self._set_permits([parse_permit(e, i) for i, e in enumerate(permits)])
            self._set_watch([parse_watch(e, i) for i, e in enumerate(watch)])
        except PermitListError as err:
            raise PermitStoreError(f"{self._dir}: stored list is invalid: {err}") from err

    # --- reading ----------------------------------------------------------------------------

    def permits_for(self, plate: str | None) -> tuple[Permit, ...]:
        """Every permit of that plate (valid or not); the verdict picks the one that applies."""
        return self._permits.get(normalize_plate(plate), ()) if plate else ()

    def permit_for(
        self, plate: str | None, at: datetime, gross_kg: int, tolerance_kg: int = 0
    ) -> Permit | None:
        """The permit in force at ``at`` covering ``gross_kg`` (+ ``tolerance_kg``), if any;
        the one allowing the most when several do."""
        covering = [p for p in self.permits_for(plate) if p.covers(at, gross_kg, tolerance_kg)]
        return max(covering, key=lambda p: (p.max_gross_kg, p.permit_id), default=None)

    def watched(self, plate: str | None) -> WatchEntry | None:
        """The watch-list entry for that plate, or ``None``."""
        return self._watch.get(normalize_plate(plate)) if plate else None

    def watch_for(self, plate: str | None) -> tuple[WatchEntry, ...]:
        """``(entry,)`` when the plate is watched, else ``()``: for ``judge(watchlist=...)``."""
        entry = self.watched(plate)
        return (entry,) if entry is not None else ()

    @property
    def watchlist(self) -> tuple[WatchEntry, ...]:
        return tuple(self._watch.values())

    def counts(self) -> dict[str, int]:
        """For the heartbeat: how many permits and watched plates are in force."""
        return {"permits": self._permit_count, "watchlist": len(self._watch)}

    # --- replacing --------------------------------------------------------------------------

    def replace_permits(self, entries: Iterable[Any]) -> int:
        """Validate the whole list, store it atomically, then use it. Returns the count.

        Raises :class:`PermitListError` (nothing changed) or :class:`PermitStoreError`.
        """
        if isinstance(entries, (str, bytes, Mapping)):
            raise PermitListError("set-permits needs a list of permits")
        permits = [parse_permit(e, i) for i, e in enumerate(entries)]
        with self._lock:
            self._store(PERMITS_FILE, PERMITS_SCHEMA, [p.to_dict() for p in permits])
            self._set_permits(permits)
        return len(permits)

    def replace_watchlist(self, entries: Iterable[Any]) -> int:
        """Validate the whole list, store it atomically, then use it. Returns the count.

        Raises :class:`PermitListError` (nothing changed) or :class:`PermitStoreError`.
        """
        if isinstance(entries, (str, bytes, Mapping)):
            raise PermitListError("set-watchlist needs a list of plates")
        watch = [parse_watch(e, i) for i, e in enumerate(entries)]
        seen: dict[str, int] = {}
        for i, w in enumerate(watch):
            if w.key in seen:
                raise PermitListError(
                    f"watch-list entries {seen[w.key]} and {i} are the same plate ({w.plate})"
                )
            seen[w.key] = i
        with self._lock:
            self._store(WATCHLIST_FILE, WATCHLIST_SCHEMA, [w.to_dict() for w in watch])
            self._set_watch(watch)
        return len(watch)

    # --- internals --------------------------------------------------------------------------

    def _set_permits(self, permits: list[Permit]) -> None:
        index: dict[str, list[Permit]] = {}
        for p in permits:
            index.setdefault(p.key, []).append(p)
        self._permits = {k: tuple(v) for k, v in index.items()}  # one assignment: atomic swap
        self._permit_count = len(permits)

    def _set_watch(self, watch: list[WatchEntry]) -> None:
        self._watch = {w.key: w for w in watch}

    def _store(self, name: str, schema: str, entries: list[dict[str, Any]]) -> None:
        store_list_file(self._dir / name, {"schema": schema, "entries": entries})

    def _load(self, name: str, schema: str) -> list[Any]:
        data = read_list_file(self._dir / name, schema)
        return data["entries"] if data is not None else []


def store_list_file(path: Path, payload: dict[str, Any]) -> None:
    """A pushed list's file (``{"schema", "entries", ...}``), replaced atomically.

    Raises :class:`PermitStoreError` naming the file."""
    try:
        data = json.dumps(payload, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")
        write_file_atomically(path, data)
    except OSError as err:
        raise PermitStoreError(f"{path}: cannot store the list: {err}") from err


def read_list_file(path: Path, schema: str) -> dict[str, Any] | None:
    """A stored list's JSON object with its ``schema`` checked and ``entries`` a list; ``None``
    when there is no file yet. Raises :class:`PermitStoreError` naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise PermitStoreError(f"{path}: cannot read: {err}") from err
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise PermitStoreError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise PermitStoreError(f"{path}: expected schema {schema!r}")
    if not isinstance(data.get("entries"), list):
        raise PermitStoreError(f"{path}: 'entries' must be a list")
    return data
