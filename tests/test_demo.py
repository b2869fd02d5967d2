"""The demo a newcomer runs first keeps working: Mosquitto, platform, station, trucks, verify."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_demo_passes_trucks_end_to_end_and_exits_by_itself() -> None:
    res = subprocess.run(
        [sys.executable, "scripts/demo_station.py", "--trucks", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    trucks = [line for line in lines if line.startswith("JS-ZJ-0001-")]
    assert len(trucks) == 4 and all(line.endswith("delivered") for line in trucks)
    assert any(line.startswith("summary    4/4 trucks") for line in lines)
    assert any("chain, signatures, photos and audit log hold" in line for line in lines)
    # the simulated station on a machine without NTP: one WARNING that says what it means
    clock = [line for line in res.stderr.splitlines() if "NTP-synchronised" in line]
    assert len(clock) <= 1 and all(line.startswith("  [WARNING] timesync:") for line in clock)
    assert "[ERROR]" not in res.stderr, res.stderr
