"""Clock steps in the running station: the record across a step says so, the platform gets a
``clock_step`` alarm and ``status`` shows it (issue 17 point 10)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agent.config import load_config
from agent.station.supervisor import Station
from drivers import traffic
from tests.crash_writer import cli as main
from tests.crash_writer import make_event

from .conftest import DEMO_CONFIG

CST = timezone(timedelta(hours=8))


class SteppableClock:
    """The real clock with a wall-time offset the test can step (monotonic is untouched)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now(self) -> datetime:
        return datetime.now(CST) + timedelta(seconds=self.offset_s)

    def monotonic(self) -> float:
        return time.monotonic()


def test_a_record_weighed_before_a_step_and_sealed_after_it_is_flagged(
    tmp_path: Path, capsys
) -> None:
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port = \d+$", "port = 1", text, count=1)  # no broker: records wait
    text = re.sub(r"(?m)^vehicles_per_min = .*$", "vehicles_per_min = 1\ncount = 0", text)
    text = text.replace('"../../../shared/fixtures/plates/full"', '""')
    path = tmp_path / "station.toml"
    path.write_text(text, encoding="utf-8")
    traffic.forget_roads()
    clock = SteppableClock()
    st = Station(load_config(path), data_dir=tmp_path / "data", clock=clock)
    st.start()
    try:
        lane = st.config.lanes[0]
        weighed = make_event(1, at=clock.now(), images=0)
        clock.offset_s -= 3600  # someone runs `date -s` an hour back
        stepped = st.process(lane, weighed)
        plain = st.process(lane, make_event(2, at=clock.now(), images=0))
        from agent.station import health

        health.write_status(st)
    finally:
        st.stop(10)
    assert stepped is not None and plain is not None
    assert abs(stepped.record["clock"]["stepped_s"] + 3600) < 1
    assert "stepped_s" not in plain.record["clock"]
    assert main(["status", "--data-dir", str(tmp_path / "data"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["daemon"]["clock"]["steps"] == 1
    assert main(["status", "--data-dir", str(tmp_path / "data")]) == 0
    assert "stepped by -3600" in capsys.readouterr().out
    import sqlite3

    conn = sqlite3.connect(tmp_path / "data" / "station.db")
    kinds = [
        json.loads(p)["kind"]
        for (p,) in conn.execute("SELECT payload FROM outbox WHERE kind = 'alarm'")
    ]
    assert "clock_step" in kinds
