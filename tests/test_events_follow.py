"""``roadside-agent events --follow`` watches the database a running station writes: each new
record printed once, a database that appears later or is locked for a moment is waited for, and
Ctrl-C ends it cleanly."""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from .conftest import REPO, make_station

pytestmark = pytest.mark.timeout(90)

LINE_TIMEOUT_S = 20.0  # polls are 1 s apart; generous for a loaded 2-core machine


class Follower:
    """``events --follow --json`` in its own process, its output lines in queues."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "events",
                "--data-dir",
                str(data_dir),
                "--follow",
                "--json",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.err_lines: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, q in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, q), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str], q: queue.Queue[str]) -> None:
        for line in stream:
            q.put(line)

    def record(self) -> dict[str, object]:
        line = self.out.get(timeout=LINE_TIMEOUT_S)
        result: dict[str, object] = json.loads(line)
        return result

    def stderr_line(self) -> str:
        line = self.err.get(timeout=LINE_TIMEOUT_S)
        self.err_lines.append(line)
        return line

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=LINE_TIMEOUT_S)
        return code

    def rest(self) -> tuple[list[str], list[str]]:
        """Everything printed after the process ended (it must have ended)."""
        out, err = [], list(self.err_lines)
        while not self.out.empty():
            out.append(self.out.get())
        while not self.err.empty():
            err.append(self.err.get())
        return out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def follower_factory() -> Iterator[type[Follower]]:
    started: list[Follower] = []

    class Tracked(Follower):
        def __init__(self, data_dir: Path, *extra: str) -> None:
            super().__init__(data_dir, *extra)
            started.append(self)

    yield Tracked
    for f in started:
        f.kill()


def hold_exclusive_lock(db_path: Path) -> sqlite3.Connection:
    """Lock the database the way a checkpoint or a maintenance tool can: no reader gets in."""
    lock = sqlite3.connect(db_path, isolation_level=None)
    lock.execute("PRAGMA locking_mode=EXCLUSIVE")
    lock.execute("BEGIN EXCLUSIVE")
    lock.execute("SELECT count(*) FROM records").fetchone()
    return lock


def test_follow_waits_for_the_database_prints_each_record_once_and_ends_on_sigint(
    tmp_path: Path, follower_factory: type[Follower]
) -> None:
    data_dir = tmp_path / "station"
    data_dir.mkdir()
    follower = follower_factory(data_dir)
    assert "waiting for the station database" in follower.stderr_line()

    station = make_station(data_dir)  # the daemon starts: the database appears
    first = [station.commit().event_id, station.commit().event_id]
    got = [follower.record()["event_id"], follower.record()["event_id"]]
    assert got == first

    later = [station.commit().event_id for _ in range(3)]
    got += [follower.record()["event_id"] for _ in range(3)]
    assert got == first + later

    record = station.commit()
    line = follower.record()
    assert line["event_id"] == record.event_id
    assert set(line) >= {"lane", "measured_at", "plate", "gross_kg", "status", "delivered"}
    station.db.close()

    assert follower.interrupt() == 0
    out, err = follower.rest()
    assert out == []  # nothing printed twice, nothing half-printed
    assert not any("Traceback" in e or "KeyboardInterrupt" in e for e in err), err


def test_follow_outlasts_a_database_locked_for_a_moment(
    tmp_path: Path, follower_factory: type[Follower]
) -> None:
    """In WAL mode a writer never blocks readers, but recovery after a power cut or a tool
    holding an exclusive lock does: the follower must neither fail nor skip records."""
    station = make_station(tmp_path)
    ids = [station.commit().event_id for _ in range(2)]
    station.db.close()
    lock = hold_exclusive_lock(tmp_path / "station.db")
    try:
        follower = follower_factory(tmp_path)
        reader = sqlite3.connect(f"file:{tmp_path / 'station.db'}?mode=ro", uri=True, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            reader.execute("SELECT count(*) FROM records").fetchone()  # the lock is real
        reader.close()
        threading.Event().wait(2.5)  # the condition under test: locked across two polls
        assert follower.proc.poll() is None
        assert follower.out.empty()
    finally:
        lock.execute("COMMIT")
        lock.close()
    assert [follower.record()["event_id"] for _ in range(2)] == ids
    station = make_station(tmp_path)
    new = station.commit().event_id
    assert follower.record()["event_id"] == new
    station.db.close()
    assert follower.interrupt() == 0
    out, err = follower.rest()
    assert out == [] and err == []  # a brief lock is not worth a message


def test_follow_starts_with_the_last_records_oldest_first(
    tmp_path: Path, follower_factory: type[Follower]
) -> None:
    station = make_station(tmp_path)
    ids = [station.commit().event_id for _ in range(4)]
    follower = follower_factory(tmp_path, "--limit", "2")
    assert [follower.record()["event_id"] for _ in range(2)] == ids[2:]
    new = station.commit().event_id
    assert follower.record()["event_id"] == new
    station.db.close()
    assert follower.interrupt() == 0
    assert follower.rest()[0] == []


def test_follow_ends_cleanly_on_sigterm_too(
    tmp_path: Path, follower_factory: type[Follower]
) -> None:
    follower = follower_factory(tmp_path)
    assert "waiting for the station database" in follower.stderr_line()
    follower.proc.send_signal(signal.SIGTERM)
    assert follower.proc.wait(timeout=LINE_TIMEOUT_S) == 0
    assert not any("Traceback" in e for e in follower.rest()[1])
