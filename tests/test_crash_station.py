"""SIGKILL the real station (``python -m agent run`` with the demo config) under load.

Between kills the test reads what is committed; every record seen once must still be there,
unchanged, at the end; ``verify`` must hold and ``seq`` must run 1..N without a reuse.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.commands.verify import verify_data_dir

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "firmware_config" / "examples" / "demo.toml"
KILLS = 8


def committed(data_dir: Path) -> dict[str, str]:
    db = data_dir / "station.db"
    if not db.exists():
        return {}
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT event_id, hash FROM records").fetchall())
    except sqlite3.OperationalError:  # killed before the first migration committed
        return {}
    finally:
        conn.close()


def _wait_for_new_records(
    data_dir: Path, before: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0
) -> None:
    """Until the station has committed more than ``before`` records (bounded; fails if the
    station exited or stored nothing in ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while len(committed(data_dir)) <= before:
        assert proc.poll() is None, "the station exited before storing anything"
        assert time.monotonic() < deadline, f"nothing stored within {timeout_s} s"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_the_running_station(tmp_path: Path) -> None:
    if not DEMO.exists():
        pytest.skip("no demo config in this checkout")
    text = DEMO.read_text(encoding="utf-8")
    text = text.replace("vehicles_per_min = 60", "vehicles_per_min = 1200")
    # commit as soon as weighed: this test is about crashes, not about plate matching windows
    text = text.replace("window_after_s = 1.0", "window_after_s = 0.0")
    text = text.replace("settle_s = 1.0", "settle_s = 0.0")
    text = text.replace("ambiguity_margin_s = 0.3", "ambiguity_margin_s = 0.0")
    text = text.replace(
        '"../../../shared/fixtures/plates/full"',
        f'"{REPO.parent / "shared" / "fixtures" / "plates" / "full"}"',
    )
    cfg = tmp_path / "station.toml"
    cfg.write_text(text, encoding="utf-8")
    data_dir = tmp_path / "data"
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--config",
                str(cfg),
                "--data-dir",
                str(data_dir),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        # Kill while it is storing: once it has committed something new in this run (on a
        # busy machine start-up alone can take seconds), then at a random instant after that.
        _wait_for_new_records(data_dir, len(seen), proc)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        assert "Traceback" not in err, err
        now = committed(data_dir)
        for event_id, h in seen.items():
            assert now.get(event_id) == h, f"seed {seed}: {event_id} lost or changed after a kill"
        seen = now
    assert len(seen) > KILLS, f"seed {seed}: the station hardly stored anything"
    result = verify_data_dir(data_dir)
    # the station's next start runs recover(); verify already holds before it
    assert result["ok"], f"seed {seed}: {result['problems'][:5]}"
    conn = sqlite3.connect(data_dir / "station.db")
    seqs = [r[0] for r in conn.execute("SELECT seq FROM records ORDER BY seq")]
    conn.close()
    assert seqs == list(range(1, len(seqs) + 1)), f"seed {seed}"
