"""What a technician reads over SSH: `status` and `events` on a station that has run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main

from .conftest import DEMO_CONFIG, REPO


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo station, run until it stored 4 vehicles (no broker: they wait undelivered)."""
    d = tmp_path_factory.mktemp("station")
    res = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(DEMO_CONFIG),
         "--data-dir", str(d), "--max-vehicles", "4"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=90, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return d


def test_status_shows_devices_queue_and_last_vehicles(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--data-dir", str(data_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["daemon"]["station_id"] == "JS-ZJ-0001"
    assert doc["daemon"]["running"] is False
    assert {"wim-1", "cam-front-1", "plate-reader"} <= set(doc["daemon"]["devices"])
    stored = sum(doc["records"].values())
    assert stored >= 4
    assert doc["queue"]["pending"] >= stored  # nothing acknowledged without a broker
    assert len(doc["last_vehicles"]) == min(stored, 10)
    assert main(["status", "--data-dir", str(data_dir)]) == 0
    text = capsys.readouterr().out
    assert "wim-1" in text and "waiting for platform ack" in text and "last vehicles:" in text


def test_events_filters_and_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--data-dir", str(data_dir), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) >= 4 and all(not r["delivered"] for r in rows)
    status = rows[0]["status"]
    assert main(["events", "--data-dir", str(data_dir), "--json", "--status", status]) == 0
    only = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert only and all(r["status"] == status for r in only)
    assert main(["events", "--data-dir", str(data_dir), "--json", "--full", "--limit", "1"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["schema"] == "roadside.vehicle-event.v1" and full["integrity"]["signature"]


def test_status_without_a_station_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--data-dir", str(tmp_path)]) == 66
    assert "no station database" in capsys.readouterr().err
