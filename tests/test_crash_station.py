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


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_the_running_station(tmp_path: Path) -> None:
    if not DEMO.exists():
        pytest.skip("no demo config in this checkout")
    text = DEMO.read_text(encoding="utf-8")
    text = text.replace("vehicles_per_min = 60", "vehicles_per_min = 1200")
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
        time.sleep(rng.uniform(1.0, 2.5))
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
