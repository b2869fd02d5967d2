"""status.json is written when it changed, else every refresh_s (not on every 2 s tick: an idle
station wrote 0.3 GB a day to its SD card), without fsync; ``roadside-agent status`` still tells
a running daemon from a stopped or hung one by it."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.commands.status import daemon_state
from agent.config import parse_config
from agent.station import health
from agent.station.supervisor import Station
from drivers.clock import ManualClock

from .conftest import DEMO_CONFIG

T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def station(tmp_path: Path) -> Station:
    """A station object that is not started: what status.json reports of it is all here."""
    text = re.sub(r"(?m)^port = \d+$", "port = 1", DEMO_CONFIG.read_text(encoding="utf-8"))
    st = Station(parse_config(text, DEMO_CONFIG), data_dir=tmp_path, clock=ManualClock(T0))
    st.data_dir.mkdir(parents=True, exist_ok=True)
    return st


def test_written_on_change_or_every_refresh_not_on_every_tick(
    station: Station, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = station.clock
    assert isinstance(clock, ManualClock)
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    status = health.StatusFile(station.data_dir / health.STATUS_FILE, refresh_s=30.0)
    path = status.path
    assert status.write(station)
    first = json.loads(path.read_text(encoding="utf-8"))
    assert first["running"] is True and first["refresh_s"] == 30.0
    for _ in range(10):  # idle ticks: uptime and the time move, nothing else
        clock.advance(2.0)
        assert not status.write(station)
    assert status.writes == 1
    station.counters.stored += 1  # a vehicle stored: written at the next tick
    clock.advance(2.0)
    assert status.write(station)
    assert json.loads(path.read_text(encoding="utf-8"))["vehicles"]["stored"] == 1
    clock.advance(29.0)
    assert not status.write(station)
    clock.advance(1.0)
    assert status.write(station)  # the alive signal: refreshed though nothing changed
    assert status.writes == 3
    assert fsyncs == []  # not evidence: temp file and rename, no fsync
    assert not list(station.data_dir.glob(".status.json*"))  # no temp file left behind


def test_status_tells_running_from_hung_by_the_declared_refresh(station: Station) -> None:
    status = health.StatusFile(station.data_dir / health.STATUS_FILE)
    status.write(station)
    doc = json.loads(status.path.read_text(encoding="utf-8"))
    written = datetime.fromisoformat(doc["written_at"])
    pid = doc["pid"]
    # an idle daemon's file is up to refresh_s old (+ a tick): still running
    running, state = daemon_state(doc, written + timedelta(seconds=32), None, True)
    assert running, state
    running, state = daemon_state(doc, written + timedelta(seconds=100), None, True)
    assert not running and state.startswith("NOT running or hung"), state
    assert "expected every 30 s" in state
    # the file a stopping daemon writes last says so at once
    station.stop_event.set()
    assert status.write(station, force=True)
    doc = json.loads(status.path.read_text(encoding="utf-8"))
    running, state = daemon_state(doc, written, None, True)
    assert not running and state.startswith("NOT running (stopped"), state
    assert doc["pid"] == pid
