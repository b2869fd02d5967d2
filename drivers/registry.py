"""Backend registries: pick a driver class by the ``type`` named in the config.

Backends are listed as ``"module:Class"`` strings and imported only when chosen (python-can's
``can/interfaces/__init__.py`` pattern), so a missing vendor library (picamera2, LiteRT,
pymodbus) fails with a clear message for the one backend that needs it, never at start-up.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Generic, TypeVar

T = TypeVar("T")


class BackendError(Exception):
    """A backend cannot be used: unknown name or missing library."""


class Registry(Generic[T]):
    def __init__(self, kind: str, backends: dict[str, str]) -> None:
        self.kind = kind
        self._backends = dict(backends)
        self._cache: dict[str, type[T]] = {}

    def names(self) -> list[str]:
        return sorted(self._backends)

    def register(self, name: str, target: str) -> None:
        self._backends[name] = target
        self._cache.pop(name, None)

    def get(self, name: str) -> type[T]:
        """The backend class for ``name``.

        Raises :class:`BackendError` for an unknown name (with a suggestion) or when the
        backend's module cannot be imported (naming the missing package).
        """
        if name in self._cache:
            return self._cache[name]
        target = self._backends.get(name)
        if target is None:
            hint = difflib.get_close_matches(name, self._backends, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise BackendError(
                f"unknown {self.kind} type {name!r}{suggestion}; known: {', '.join(self.names())}"
            )
        module_name, _, class_name = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise BackendError(
                f"{self.kind} type {name!r} needs the Python package {err.name!r}, "
                f"which is not installed ({err})"
            ) from err
        cls: type[T] = getattr(module, class_name)
        self._cache[name] = cls
        return cls
