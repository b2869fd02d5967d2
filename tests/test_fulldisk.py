"""A really full disk (issue 17 point 2): records without photos go on being committed, the
watchdog is told the truth, and the station starts on a full disk. Real tmpfs mounts (root).

The attack's steps are ``scripts/fulldisk_check.py`` (fill, report, release), so the same check
runs under the real unit in the systemd box.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import fulldisk_check
import pytest

from agent.config import load_config
from agent.station import health, sdnotify
from agent.station.supervisor import Station
from agent.store.evidence import IMAGES_REFUSED, DiskFullError, EvidenceConfig
from agent.store.reserve import DiskReserve
from agent.store.retention import MB, Retention
from drivers import traffic
from drivers.clock import ManualClock
from tests.conftest import mount_tmpfs
from tests.crash_writer import CTX, T0, make_event, make_verdict, open_store

from .conftest import DEMO_CONFIG, wait_until

pytestmark = pytest.mark.root


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path, "8m")


def test_records_are_committed_on_a_really_full_disk(tmpfs: Path) -> None:
    """Before: 0 of 200 records committed once the file system was full."""
    data_dir = tmpfs / "data"
    db, store = open_store(data_dir)
    store.reserve = DiskReserve(data_dir, 1 * MB)
    assert store.reserve.fill() == MB
    config = EvidenceConfig(min_free_mb=1, reserve_free_mb=1, db_reserve_mb=1)
    retention = Retention(db, store, config, ManualClock(T0), station_id=CTX.station_id)
    for n in range(5):
        store.commit(make_event(n, image_bytes=100_000), make_verdict(), CTX)
    fulldisk_check.fill(data_dir)
    assert os.statvfs(data_dir).f_bavail == 0
    committed = 0
    for n in range(5, 205):
        stored = store.commit(make_event(n, image_bytes=100_000), make_verdict(), CTX)
        assert stored.record["storage_flags"] == [IMAGES_REFUSED]
        committed += 1
    assert committed == 200
    report = retention.check()
    assert "disk_reserve_released" in report.alarms
    figures = fulldisk_check.report(data_dir)
    assert figures["records"] == 205
    assert figures["records_without_images_disk_full"] == 200
    assert figures["verify_ok"], figures["verify_problems"]
    db.close()


def test_without_a_reserve_left_the_store_says_disk_full(tmpfs: Path) -> None:
    data_dir = tmpfs / "data"
    db, store = open_store(data_dir)
    store.commit(make_event(0), make_verdict(), CTX)
    fulldisk_check.fill(data_dir)
    with pytest.raises(DiskFullError, match="reserve is used up"):
        for n in range(1, 2000):  # the WAL's spare pages go first, then nothing
            store.commit(make_event(n, images=0), make_verdict(), CTX)
    db.close()


def _demo_config(tmp_path: Path, reserve_mb: int) -> Path:
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port = \d+$", "port = 1", text, count=1)  # no broker: all stays
    text = re.sub(r"(?m)^vehicles_per_min = .*$", "vehicles_per_min = 120", text)
    text = text.replace('"../../../shared/fixtures/plates/full"', '""')
    text = text.replace(
        "[evidence]",
        f"[evidence]\ndb_reserve_mb = {reserve_mb}\nreserve_free_mb = 1\nmin_free_mb = 1\n"
        "retention_interval_s = 0.5",
        1,
    )
    if "[evidence]" not in text:
        text += (
            f"\n[evidence]\ndb_reserve_mb = {reserve_mb}\nreserve_free_mb = 1\nmin_free_mb = 1\n"
            "retention_interval_s = 0.5\n"
        )
    path = tmp_path / "station.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _stored(st: Station) -> int:
    return st.counters.stored


def _started(path: Path, data_dir: Path) -> Station:
    """A station on ``path`` started on ``data_dir`` (its simulated road from the start)."""
    traffic.forget_roads()
    st = Station(load_config(path), data_dir=data_dir)
    st.start()
    return st


def _beats(st: Station) -> dict[str, float]:
    """The stages' last signs of life as the watchdog reads them (an idle stage is fresh)."""
    now = st.clock.monotonic()
    return {n: now - b.age(now) for n, b in st.beats.items()}


def test_the_station_records_through_a_full_disk_and_starts_on_one(
    tmp_path: Path, tmpfs: Path
) -> None:
    """The running station: disk filled under it, records keep coming (without photos), the
    watchdog stays fed, the platform gets the alarms; then a restart on the full disk."""
    path = _demo_config(tmp_path, reserve_mb=2)
    data_dir = tmpfs / "data"
    st = _started(path, data_dir)
    try:
        wait_until(lambda: _stored(st) >= 3, 30, "three records before the disk fills")
        reserve = data_dir / "db-reserve.bin"
        wait_until(reserve.exists, 10, "the reserve made")
        fulldisk_check.fill(data_dir)
        at_full = _stored(st)
        wait_until(lambda: _stored(st) >= at_full + 20, 60, "20 records on the full disk")
        assert not sdnotify.stale_stages(_beats(st), st.clock.monotonic(), 10.0)
    finally:
        st.stop(10)
    figures = fulldisk_check.report(data_dir)
    assert figures["records"] >= at_full + 20
    assert figures["records_without_images_disk_full"] >= 1
    assert "disk_reserve_released" in figures["alarms"] or figures["reserve_bytes"] < 2 * MB
    assert figures["verify_ok"], figures["verify_problems"]
    # start again on the full disk (before: "database or disk is full")
    fulldisk_check.fill(data_dir)
    again = _started(path, data_dir)
    try:
        before = figures["records"]
        wait_until(lambda: _stored(again) >= 3, 60, "records after a restart on a full disk")
    finally:
        again.stop(10)
    after = fulldisk_check.report(data_dir)
    assert after["records"] >= before + 3
    assert after["verify_ok"], after["verify_problems"]


def test_a_stage_blocked_on_the_disk_is_reported_not_hung(tmp_path: Path, tmpfs: Path) -> None:
    """No reserve at all: the pipeline cannot commit. It says so in STATUS= and keeps the
    watchdog fed (a restart does not empty a disk); once space returns nothing was lost."""
    path = _demo_config(tmp_path, reserve_mb=0)
    data_dir = tmpfs / "data"
    st = _started(path, data_dir)
    try:
        wait_until(lambda: _stored(st) >= 3, 30, "three records before the disk fills")
        fulldisk_check.fill(data_dir)
        wait_until(
            lambda: bool(st.beats["pipeline"].blocked), 60, "the pipeline blocked on the disk"
        )
        line = health.status_line(st, [], 0)
        assert "stage pipeline BLOCKED: disk full" in line, line
        for _ in range(3):  # several retry rounds: the stage beats all along
            st.stop_event.wait(2.0)
            assert not sdnotify.stale_stages(_beats(st), st.clock.monotonic(), 10.0)
        seen = st.counters.vehicles
        fulldisk_check.release(data_dir)
        wait_until(lambda: not st.beats["pipeline"].blocked, 60, "the pipeline unblocked")
        wait_until(lambda: _stored(st) >= seen, 30, "every vehicle seen stored")
    finally:
        st.stop(10)
    figures = fulldisk_check.report(data_dir)
    assert "stage_blocked" in figures["alarms"]
    assert figures["verify_ok"], figures["verify_problems"]
