"""Paths in config files resolve against the config file's folder, not the working directory.

A technician's ``photos = "fixtures/plates"`` means the same thing whether the daemon runs from
systemd (working directory ``/``) or from a shell. Use :data:`ConfigPath` for every path field;
:func:`agent.config.parse_config` passes the folder as validation context ``base_dir``.
Empty strings stay empty (meaning "not set").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo


def _resolve(value: str, info: ValidationInfo) -> str:
    if not value or "://" in value or value.isdigit():  # URLs and camera indexes stay as written
        return value
    expanded = os.path.expanduser(value)
    base = (info.context or {}).get("base_dir") if info.context else None
    if base is None or os.path.isabs(expanded):
        return expanded
    return os.path.normpath(Path(base) / expanded)


ConfigPath = Annotated[str, AfterValidator(_resolve)]
