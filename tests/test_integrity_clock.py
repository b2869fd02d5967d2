"""Clock synchronisation (adjtimex) and the legal software id."""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path

import pytest

from agent import legalid
from agent.station import timesync
from tests.crash_writer import T0


class FakeClockSync:
    """A sync source whose answer the test sets, like chrony gaining or losing its servers."""

    def __init__(self, synchronized: bool | None = True) -> None:
        self.synchronized = synchronized

    def __call__(self) -> bool | None:
        return self.synchronized


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux")
def test_adjtimex_reads_the_kernel_state() -> None:
    assert ctypes.sizeof(timesync.Timex) == (208 if ctypes.sizeof(ctypes.c_long) == 8 else 128)
    result = timesync.read_timex()
    assert result is not None
    state, tx = result
    assert 0 <= state <= timesync.TIME_ERROR
    expected = state != timesync.TIME_ERROR and not tx.status & timesync.STA_UNSYNC
    assert timesync.clock_synchronized() is expected


def test_unsynchronised_clock_raises_one_alarm_until_it_recovers() -> None:
    source = FakeClockSync(True)
    alarms: list[str] = []
    mon = timesync.ClockMonitor(source, alarm=lambda msg, at: alarms.append(msg))
    assert mon.poll(T0) is True
    source.synchronized = False
    assert mon.poll(T0) is False
    mon.poll(T0)
    assert len(alarms) == 1 and "STA_UNSYNC" in alarms[0]
    source.synchronized = True
    mon.poll(T0)
    source.synchronized = False
    mon.poll(T0)
    assert len(alarms) == 2


def test_outbox_alarm_is_queued(tmp_path: Path) -> None:
    from tests.crash_writer import open_store

    db, _store = open_store(tmp_path)
    mon = timesync.ClockMonitor(FakeClockSync(False), alarm=timesync.outbox_alarm(db, "JS-ZJ-0001"))
    mon.poll(T0)
    rows = db.read().execute("SELECT kind, priority, payload FROM outbox").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("alarm", 0)]
    assert '"kind":"clock_unsynchronized"' in rows[0][2]


def test_legal_id_changes_with_a_legally_relevant_file(tmp_path: Path) -> None:
    (tmp_path / "agent" / "legal").mkdir(parents=True)
    (tmp_path / "agent" / "uplink").mkdir()
    (tmp_path / "agent" / "legal" / "engine.py").write_text("LIMIT = 49000\n")
    (tmp_path / "agent" / "uplink" / "delivery.py").write_text("x = 1\n")
    (tmp_path / "firmware_config" / "legal").mkdir(parents=True)
    (tmp_path / "firmware_config" / "legal" / "limits.toml").write_text("a = 1\n")
    first = legalid.compute_legal_id(tmp_path)
    (tmp_path / "agent" / "uplink" / "delivery.py").write_text("x = 2\n")
    assert legalid.compute_legal_id(tmp_path) == first  # not legally relevant
    (tmp_path / "firmware_config" / "legal" / "limits.toml").write_text("a = 2\n")
    assert legalid.compute_legal_id(tmp_path) != first
    assert [r for r, _ in legalid.manifest(tmp_path)] == [
        "agent/legal/engine.py",
        "firmware_config/legal/limits.toml",
    ]


def test_legal_id_of_this_build_covers_exactly_the_legally_relevant_code() -> None:
    files = set(r for r, _ in legalid.manifest())
    # what decides a weight, a plate, a verdict, and what seals the record
    for must in (
        "agent/legal/engine.py",
        "agent/pipeline/weighing.py",
        "agent/pipeline/assemble.py",
        "agent/store/integrity.py",
        "drivers/scale/xk3190.py",
        "firmware_config/legal/limits.toml",
    ):
        assert must in files
    # transport, storage mechanics, the uplink and the CLI are not
    assert not any(
        f.startswith(("agent/commands/", "agent/uplink/", "agent/station/")) for f in files
    )
    assert "agent/store/evidence.py" not in files
    assert len(legalid.legal_software_id()) == 64


@pytest.mark.parametrize(("simulated", "level"), [(False, logging.ERROR), (True, logging.WARNING)])
def test_unsynchronised_clock_is_an_error_where_evidence_is_at_stake(
    simulated: bool, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    alarms: list[str] = []
    mon = timesync.ClockMonitor(
        FakeClockSync(False), alarm=lambda msg, at: alarms.append(msg), simulated=simulated
    )
    caplog.set_level(logging.DEBUG, logger="agent.station.timesync")
    for _ in range(3):
        mon.poll(T0)
    said = [r for r in caplog.records if "NTP" in r.getMessage()]
    assert [r.levelno for r in said] == [level]  # once, at that level
    assert len(alarms) == 1  # the platform hears of it either way
    if simulated:
        assert "an officer cannot rely on the time" in said[0].getMessage()
