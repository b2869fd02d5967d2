"""Shared fixtures: repository paths and the shared fixtures folder (when present)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DEMO_CONFIG = REPO / "firmware_config" / "examples" / "demo.toml"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED}")
    return SHARED
