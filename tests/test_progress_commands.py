"""``verify`` and ``export`` show their progress on a technician's terminal, and nothing extra in
the journal, a pipe or their --json output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.commands.progress import Progress

from .conftest import REPO, make_station

pytestmark = pytest.mark.timeout(120)

RECORDS = 6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("station")
    station = make_station(path)
    for _ in range(RECORDS):
        station.commit()
    station.db.close()
    return path


def run_cli(argv: list[str], *, stderr_tty: bool) -> tuple[int, str, str]:
    """Run ``python -m agent ARGV`` with stdout a pipe and stderr a pipe or a terminal (pty).
    Returns the exit code, stdout and what stderr showed."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm"}
    cmd = [sys.executable, "-m", "agent", *argv]
    if not stderr_tty:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
        return p.returncode, p.stdout, p.stderr
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        slave = -1
        out, _ = proc.communicate(timeout=60)
        chunks = []
        while True:  # what the terminal got, until the closed slave side gives EIO
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return proc.returncode, out.decode(), b"".join(chunks).decode()


def test_verify_is_silent_when_stderr_is_not_a_terminal(data_dir: Path) -> None:
    code, out, err = run_cli(["verify", "--data-dir", str(data_dir), "--json"], stderr_tty=False)
    assert code == 0, err
    assert err == ""
    assert json.loads(out)["records"] == RECORDS
    code, out, err = run_cli(["verify", "--data-dir", str(data_dir)], stderr_tty=False)
    assert code == 0 and err == "" and "\r" not in out


def test_verify_shows_records_checked_of_total_on_a_terminal(data_dir: Path) -> None:
    # --full: the tests above sealed a checkpoint, after which only new records are checked
    argv = ["verify", "--data-dir", str(data_dir), "--json", "--full"]
    code, out, shown = run_cli(argv, stderr_tty=True)
    assert code == 0
    assert json.loads(out)["ok"] is True  # stdout (a pipe) stays pure JSON
    assert "\r" in shown
    assert f"verify  {RECORDS}/{RECORDS} records  100.0%" in shown
    assert shown.rstrip(" ").endswith("\n")  # the prompt starts on a clean line


def test_export_progress_only_on_a_terminal(data_dir: Path, tmp_path: Path) -> None:
    from agent.store.db import Database

    db = Database(data_dir / "station.db")
    try:
        ids = [r[0] for r in db.read().execute("SELECT event_id FROM records ORDER BY seq")]
    finally:
        db.close()
    argv = ["export", *ids[:3], "--out", str(tmp_path / "a"), "--data-dir", str(data_dir)]
    code, out, err = run_cli([*argv, "--json"], stderr_tty=False)
    assert code == 0 and err == ""
    assert len(json.loads(out)["packages"]) == 3
    argv[argv.index("--out") + 1] = str(tmp_path / "b")
    code, out, shown = run_cli(argv, stderr_tty=True)
    assert code == 0
    assert "export  3/3 packages  100.0%" in shown
    assert "\r" not in out and out.count("(verified)") == 3


def test_no_progress_line_before_an_error(tmp_path: Path) -> None:
    code, _, shown = run_cli(["verify", "--data-dir", str(tmp_path)], stderr_tty=True)
    assert code == 66
    assert shown.replace("\r\n", "\n") == (
        f"roadside-agent verify: no station database at {tmp_path / 'station.db'}"
        " (has the station run yet?)\n"
    )


def test_failure_before_any_progress_leaves_no_line() -> None:
    import io

    out = io.StringIO()
    with pytest.raises(FileNotFoundError), Progress("verify", stream=out, enabled=True):
        raise FileNotFoundError("no station database")
    assert out.getvalue() == ""
