"""Clock synchronisation (adjtimex) and the legal software id."""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path
from typing import Any

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


class SteppingClock:
    """A station clock whose wall time a test can step while monotonic time runs on, as
    ``date -s`` or an NTP ``makestep`` does to the real one (ManualClock moves both)."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def now(self):  # type: ignore[no-untyped-def]
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self.wall += timedelta(seconds=seconds)
        self.mono += seconds

    def step(self, seconds: float) -> None:
        from datetime import timedelta

        self.wall += timedelta(seconds=seconds)


def test_clock_steps_are_detected_alarmed_and_flag_the_records_across_them() -> None:
    """Issue 17 point 10: a −1 h and a +1 day step were sealed into records silently."""
    clock = SteppingClock()
    alarms: list[tuple[str, dict]] = []  # type: ignore[type-arg]
    mon = timesync.ClockMonitor(
        FakeClockSync(True),
        clock=clock,
        step_alarm=lambda msg, at, details: alarms.append((msg, details)),
    )
    mon.poll()
    for _ in range(5):  # an ordinary running clock is no step
        clock.advance(2.0)
        mon.poll()
    assert alarms == [] and mon.stepped_during(clock.now()) is None
    before = clock.now()  # a vehicle measured, then the clock goes back an hour
    clock.advance(1.0)
    clock.step(-3600)
    clock.advance(1.0)
    mon.poll()
    assert [d for _, d in alarms] == [{"step_s": -3600.0}]
    assert "stepped by -3600.000 s" in alarms[0][0]
    assert mon.stepped_during(before) == -3600.0  # measured before, sealed after: flagged
    clock.advance(10.0)
    after = clock.now()
    clock.advance(5.0)
    assert mon.stepped_during(after) is None  # measured and sealed after it: not flagged
    clock.step(86400)  # then a day forward, found at the next poll
    clock.advance(2.0)
    mon.poll()
    assert mon.stepped_during(before) == 82800.0
    assert mon.stepped_during(after) == 86400.0
    report = mon.report()
    assert report["steps"] == 2 and report["last_step"]["step_s"] == 86400.0


def test_a_stepped_record_carries_clock_stepped_s(tmp_path: Path) -> None:
    from tests.crash_writer import CTX, make_event, make_verdict, open_store

    _db, store = open_store(tmp_path)
    ctx = CTX.__class__(**{**CTX.__dict__, "clock_stepped_s": -3600.0})
    record = store.commit(make_event(1), make_verdict(), ctx).record
    assert record["clock"] == {"synchronized": True, "stepped_s": -3600.0}
    plain = store.commit(make_event(2), make_verdict(), CTX).record
    assert plain["clock"] == {"synchronized": True}
    # a time that may be an hour off is not a synchronised clock's time: not chargeable alone
    if "clock_sync" in record["evidence"]["required"]:
        assert "clock_sync" in record["evidence"]["missing"]
        assert any("stepped by -3600.000 s" in d for d in record["evidence"]["details"])
        assert "clock_sync" not in plain["evidence"]["missing"]


def test_a_step_during_the_passage_leaves_clock_sync_missing() -> None:
    from datetime import date

    from agent.store.completeness import Expected, assess

    def clock_sync(stepped: float | None) -> dict[str, Any]:
        return assess(
            required=["clock_sync"], status="compliant", plates=[], image_roles=[],
            video_cameras=[], expected=Expected(camera_roles=(), clip_cameras=()),
            clock_synchronized=True, certificate=None, certificate_valid_until=None,
            measured_on=date(2026, 12, 1), clock_stepped_s=stepped,
        )  # fmt: skip

    assert clock_sync(None)["missing"] == []
    stepped = clock_sync(86400.0)
    assert stepped["missing"] == ["clock_sync"] and not stepped["complete"]
    assert stepped["details"] == [
        "clock_sync: the clock was stepped by +86400.000 s during this passage; its times may "
        "be off by that much"
    ]


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
