"""A technician's config mistakes get one precise line each, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.commands._common import EX_CONFIG
from agent.config import ConfigError, load_config, locate, parse_config

from .conftest import DEMO_CONFIG, REPO

GOOD = """\
[station]
id = "JS-ZJ-0001"

[uplink]
host = "127.0.0.1"
port = 1883

[[lanes]]
number = 1
[lanes.scale]
type = "simulated"
id = "wim-1"

[[lanes]]
number = 2
[lanes.scale]
type = "simulated"
id = "wim-2"
vehicles_per_min = 12
"""


def test_demo_config_is_valid() -> None:
    cfg = load_config(DEMO_CONFIG)
    assert cfg.station.id == "JS-ZJ-0001"
    assert cfg.uplink.prefix == "roadside/v1"
    assert [lane.number for lane in cfg.lanes] == [1]


def test_fixed_keys_and_defaults() -> None:
    cfg = parse_config(GOOD)
    assert (cfg.uplink.host, cfg.uplink.port, cfg.uplink.prefix) == (
        "127.0.0.1",
        1883,
        "roadside/v1",
    )
    assert cfg.lanes[1].scale.id == "wim-2"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("station.toml"))
    return [p.format("station.toml") for p in info.value.problems]


def test_misspelt_key_points_at_its_line_with_a_suggestion() -> None:
    lines = _problems(GOOD.replace("port = 1883", "prot = 1883"))
    assert lines == ["station.toml:6  uplink.prot  1883 → unknown key (did you mean 'port'?)"]


def test_problem_in_second_lane_scale_names_that_lane_and_line() -> None:
    lines = _problems(GOOD.replace("vehicles_per_min = 12", "vehicles_per_minute = 12"))
    assert len(lines) == 1
    assert lines[0].startswith("station.toml:19  lanes[1].scale.vehicles_per_minute  12 →")
    assert "did you mean 'vehicles_per_min'?" in lines[0]


def test_unknown_backend_type_suggests_the_close_one() -> None:
    lines = _problems(
        GOOD.replace('type = "simulated"\nid = "wim-1"', 'type = "simulatd"\nid = "wim-1"')
    )
    assert lines[0].startswith("station.toml:11  lanes[0].scale.type  'simulatd' →")
    assert "did you mean 'simulated'?" in lines[0]


def test_all_problems_reported_at_once() -> None:
    bad = GOOD.replace('id = "JS-ZJ-0001"', 'id = "JS ZJ/0001"').replace("port = 1883", "port = 0")
    lines = _problems(bad)
    assert len(lines) == 2
    assert any(line.startswith("station.toml:2  station.id") for line in lines)
    assert any(line.startswith("station.toml:6  uplink.port  0 →") for line in lines)


def test_missing_required_section_and_bad_toml() -> None:
    lines = _problems(GOOD.replace('[uplink]\nhost = "127.0.0.1"\nport = 1883\n', ""))
    assert lines == ["station.toml  uplink → required key is missing"]
    lines = _problems(GOOD + "\n[broken\n")
    assert len(lines) == 1 and "not valid TOML" in lines[0] and lines[0].startswith("station.toml:")


def test_duplicate_lane_numbers_rejected() -> None:
    lines = _problems(GOOD.replace("number = 2", "number = 1"))
    assert lines == ["station.toml:15  lanes[1].number  1 → lane number used twice"]


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "station.toml"
    path.write_text(GOOD.replace('id = "wim-1"', 'id = "wim-1"\nphotos = "photos"'))
    cfg = load_config(path)
    assert cfg.lanes[0].scale.photos == str(tmp_path / "etc" / "photos")  # type: ignore[attr-defined]


def test_locate_handles_arrays_of_tables_and_dotted_keys() -> None:
    text = "[a]\nx = 1\n[[lanes]]\nn = 1\n[[lanes]]\nn = 2\nscale.type = 'x'\n"
    assert locate(text, ("a", "x")) == 2
    assert locate(text, ("lanes", 1, "n")) == 6
    assert locate(text, ("lanes", 1, "scale", "type")) == 7
    assert locate(text, ("lanes", 0, "missing")) == 3


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = _cli("check-config", str(DEMO_CONFIG))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("port = 1883", "prot = 1883"))
    res = _cli("check-config", str(bad))
    assert res.returncode == EX_CONFIG
    assert f"{bad}:6  uplink.prot  1883 → unknown key (did you mean 'port'?)" in res.stderr
    assert "Traceback" not in res.stderr
    missing = _cli("check-config", str(tmp_path / "nope.toml"))
    assert missing.returncode == EX_CONFIG and "cannot read the file" in missing.stderr


def test_run_refuses_a_bad_config_with_ex_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("[[lanes]]\nnumber = 1", "[[lanes]]\nnumbr = 1"))
    res = _cli("run", "--config", str(bad), "--data-dir", str(tmp_path / "data"))
    assert res.returncode == EX_CONFIG
    assert "lanes[0].numbr" in res.stderr and "did you mean 'number'?" in res.stderr
    assert not (tmp_path / "data").exists()


def test_camera_source_file_resolves_but_urls_and_indexes_stay(tmp_path: Path) -> None:
    base = GOOD.replace(
        'id = "wim-1"\n', 'id = "wim-1"\n[[lanes.cameras]]\ntype = "opencv"\nsource = "SOURCE"\n', 1
    )
    path = tmp_path / "station.toml"
    for source, expected in [
        ("clips/truck.mp4", str(tmp_path / "clips" / "truck.mp4")),
        ("rtsp://192.0.2.1/stream1", "rtsp://192.0.2.1/stream1"),
        ("0", "0"),
        ("/dev/video0", "/dev/video0"),
    ]:
        path.write_text(base.replace("SOURCE", source))
        cam = load_config(path).lanes[0].cameras[0]
        assert cam.source == expected  # type: ignore[attr-defined]
