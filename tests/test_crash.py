"""SIGKILL the evidence writer at random moments under load, then prove nothing was lost.

The writer (``tests/crash_writer.py``) prints ``committed <event_id> <seq>`` only after
``EvidenceStore.commit`` returned, so every printed record is one the station promised to keep.
After 20 kills: start-up recovery leaves no temp or orphan files, ``verify`` holds, every promised
record is there with its ``seq``, and ``seq`` runs 1..N without a gap or a reuse.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.commands.verify import verify_data_dir
from tests.crash_writer import open_store

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 20
IMAGE_BYTES = 100_000


def run_and_kill(data_dir: Path, rng: random.Random, wait_ready: bool) -> list[tuple[str, int]]:
    """Start the writer, SIGKILL it at a random moment; the records it promised."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), str(IMAGE_BYTES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    ready = threading.Event()
    committing = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line == b"ready\n":
                ready.set()
            elif line.startswith(b"committed "):
                committing.set()

    reader = threading.Thread(target=read, name="crash-reader", daemon=True)
    reader.start()
    if wait_ready:
        assert ready.wait(60), proc.stderr.read() if proc.stderr else b""
        # under load: once it commits (a busy machine may take a while to get there), then
        # at a random moment
        assert committing.wait(60), proc.stderr.read() if proc.stderr else b""
        time.sleep(rng.uniform(0.0, 0.4))
    else:
        time.sleep(rng.uniform(0.0, 0.6))  # maybe during imports, key load or recover()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    reader.join(10)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    assert "Traceback" not in err, err
    promised = []
    for line in lines:
        if line.startswith(b"committed ") and line.endswith(b"\n"):
            _, event_id, seq = line.decode().split()
            promised.append((event_id, int(seq)))
    return promised


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_under_load_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    promised: list[tuple[str, int]] = []
    for i in range(KILLS):
        promised += run_and_kill(tmp_path, rng, wait_ready=i % 4 != 3)
    assert len(promised) > KILLS, f"seed {seed}: the writer hardly committed anything"

    db, store = open_store(tmp_path)
    store.recover()
    leftovers = [p for p in (tmp_path / "images").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], f"seed {seed}"
    known = {r[0] for r in db.read().execute("SELECT path FROM images")}
    on_disk = {
        str(p.relative_to(tmp_path)) for p in (tmp_path / "images").rglob("*") if p.is_file()
    }
    assert on_disk == known, f"seed {seed}: orphan or missing image files"
    assert any(k.endswith(".mjpeg") for k in known), "the writer's records carry clips"

    result = verify_data_dir(tmp_path)
    assert result["ok"], f"seed {seed}: {result['problems'][:5]}"

    rows = dict(db.read().execute("SELECT event_id, seq FROM records").fetchall())
    for event_id, seq in promised:
        assert rows.get(event_id) == seq, f"seed {seed}: promised {event_id} lost"
    seqs = sorted(rows.values())
    assert seqs == list(range(1, len(seqs) + 1)), f"seed {seed}: seq gap or reuse"
    assert len({s for _, s in promised}) == len(promised), f"seed {seed}: seq printed twice"
    db.close()
