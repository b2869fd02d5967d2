"""What a technician reads over SSH: `status` and `events` on a station that has run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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


# -- issue 16: the CLI never misleads ---------------------------------------------------------


def _events(data_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["events", "--data-dir", str(data_dir), "--json", "--limit", "100", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_events_since_reads_times_as_journalctl_does(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    everything = _events(data_dir, capsys)
    assert len(everything) >= 4
    assert _events(data_dir, capsys, "--since", "1 hour ago") == everything
    assert _events(data_dir, capsys, "--since", "yesterday") == everything
    assert _events(data_dir, capsys, "--since", "tomorrow") == []
    # the newest record's instant, written in UTC: the same instant, another offset
    newest = datetime.fromisoformat(everything[0]["measured_at"])
    utc = newest.astimezone(UTC).isoformat(timespec="milliseconds")
    since = _events(data_dir, capsys, "--since", utc)
    assert since and since == [
        r for r in everything if r["measured_at"] >= everything[0]["measured_at"]
    ]
    assert len(since) < len(everything)


def test_events_refuses_a_time_or_status_it_cannot_read(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["events", "--data-dir", str(data_dir), "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert "'last tuesday' is not a time" in err and '"1 hour ago"' in err
    with pytest.raises(SystemExit) as done:
        main(["events", "--data-dir", str(data_dir), "--status", "overlaoded"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "'overlaoded' is not a verdict status (did you mean 'overloaded'?)" in err
    with pytest.raises(SystemExit):
        main(["events", "--data-dir", str(data_dir), "--lane", "0"])
    assert "expected a whole number of 1 or more" in capsys.readouterr().err


def test_events_plate_filter_normalises_like_the_store(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [r for r in _events(data_dir, capsys) if r["plate"]]
    assert rows, "the demo station reads plates"
    plate = rows[0]["plate"]
    typed = f"{plate[:2].lower()} {plate[2:].lower()}"  # "苏l 12345" as a technician types it
    assert typed != plate
    found = _events(data_dir, capsys, "--plate", typed)
    assert found == [r for r in rows if r["plate"] == plate]


def test_status_of_a_stopped_daemon_says_so(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--data-dir", str(data_dir)]) == 0
    text = capsys.readouterr().out
    assert "NOT running (stopped; status.json written " in text
    assert "all beating" not in text
    assert "none beating: the daemon is not running" in text
    assert main(["status", "--data-dir", str(data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daemon_running"] is False


def test_daemon_state_from_status_json() -> None:
    from agent.commands.status import daemon_state

    now = datetime(2026, 5, 31, 14, 0, tzinfo=timezone(timedelta(hours=8)))
    fresh = {"running": True, "pid": 4242, "written_at": (now - timedelta(seconds=3)).isoformat()}
    assert daemon_state(fresh, now, None, True) == (
        True,
        "running (pid 4242, status.json written 3 s ago)",
    )
    killed = {**fresh, "written_at": (now - timedelta(hours=3, minutes=12)).isoformat()}
    assert daemon_state(killed, now, None, False) == (
        False,
        "NOT running (pid 4242 is gone; status.json written 3 h 12 min ago)",
    )
    assert daemon_state(killed, now, None, True)[1].startswith("NOT running or hung")
    assert daemon_state(fresh, now, "failed", None)[1].startswith("NOT running (systemd: failed;")
    assert daemon_state({}, now, None, None)[0] is False


def test_status_without_config_or_data_dir_says_there_is_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.commands import _common

    # a machine without /etc/roadside-agent and /var/lib/roadside-agent
    monkeypatch.setattr(_common, "DEFAULT_CONFIG", tmp_path / "etc" / "station.toml")
    monkeypatch.setattr(_common, "DEFAULT_DATA_DIR", tmp_path / "var")
    assert main(["status"]) == 66
    assert "no station database" in capsys.readouterr().err


def test_weights_print_one_way_in_status_events_and_judge(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.commands._common import format_kg

    assert (format_kg(49000), format_kg(1100, signed=True), format_kg(-300, signed=True)) == (
        "49 000 kg",
        "+1 100 kg",
        "-300 kg",
    )
    assert format_kg(None) == "—"
    row = _events(data_dir, capsys, "--limit", "1")[0]
    assert main(["events", "--data-dir", str(data_dir), "--limit", "1"]) == 0
    assert f"  {format_kg(row['gross_kg'])}  " in capsys.readouterr().out
    assert main(["status", "--data-dir", str(data_dir)]) == 0
    assert f"{format_kg(row['gross_kg'])}  " in capsys.readouterr().out
    assert main(["judge", "--axles", "7000,11000"]) == 0
    assert "limit        18 000 kg" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", "2026-05-31T14:00:00+08:00"),
        ("today", "2026-05-31T00:00:00+08:00"),
        ("yesterday", "2026-05-30T00:00:00+08:00"),
        ("1 hour ago", "2026-05-31T13:00:00+08:00"),
        ("90 min ago", "2026-05-31T12:30:00+08:00"),
        ("1h 30min ago", "2026-05-31T12:30:00+08:00"),
        ("-2d", "2026-05-29T14:00:00+08:00"),
        ("2026-05-30", "2026-05-30T00:00:00+08:00"),  # no offset: the station's
        ("2026-05-30 10:15", "2026-05-30T10:15:00+08:00"),
        ("2026-05-30T02:15:00Z", "2026-05-30T02:15:00+00:00"),
    ],
)
def test_parse_time_reads_journalctl_forms(text: str, expected: str) -> None:
    from agent.commands._common import parse_time

    now = datetime(2026, 5, 31, 14, 0, tzinfo=timezone(timedelta(hours=8)))
    assert parse_time(text, now).isoformat() == expected


@pytest.mark.parametrize("text", ["last tuesday", "1 hour", "5 parsecs ago", "", "2026-13-01"])
def test_parse_time_refuses_what_it_cannot_read(text: str) -> None:
    from agent.commands._common import parse_time

    with pytest.raises(ValueError, match="use ISO 8601"):
        parse_time(text, datetime.now().astimezone())
