"""scripts/bench/growth runs end to end on tiny stores (the interfaces it measures still exist)
and prints DESIGN §8's JSON line with every query's factor and verify's peak memory. The
figures themselves are the bench's business, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUERIES = {
    "verify",
    "status",
    "events --plate",
    "events --undelivered",
    "events --status",
    "due",
    "retention-passage-photos",
    "retention-passages",
    "retention-old-violations",
}


def test_growth_bench_measures_every_query_on_real_stores(tmp_path: Path) -> None:
    argv = [sys.executable, str(ROOT / "scripts" / "bench" / "growth")]
    argv += ["--small", "30", "--large", "90", "--new", "3", "--runs", "1", "--live-photos"]
    argv += ["40", "--pending", "5", "--cache-dir", str(tmp_path / "cache"), "--dir"]
    argv += [str(tmp_path / "work")]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["bench"] == "growth" and doc["unit"] == "ms"
    assert set(doc["queries"]) == QUERIES
    assert doc["ratio"] == max(q["factor"] for q in doc["queries"].values())
    assert doc["cache"] == {"small": "built", "large": "built"}
    assert set(doc["verify_peak_rss_mb"]) == {"small", "large"}
    assert "cache built" in out.stdout
