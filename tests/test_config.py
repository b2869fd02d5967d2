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


# -- check-config catches what run would refuse (issue 16) ----------------------------------

MODBUS_LANE = """\
[[lanes]]
number = 3
vehicle_class = "VEHICLE_CLASS"
[lanes.scale]
type = "modbus_tcp"
id = "ind-3"
host = "127.0.0.1"
map = "MAP"
min_speed_kmh = MIN
max_speed_kmh = MAX
[[lanes.cameras]]
type = "CAMERA"
id = "cam-3"
role = "front"
"""


def _lane(**values: object) -> str:
    text = MODBUS_LANE
    defaults = {
        "VEHICLE_CLASS": "truck",
        "MAP": "generic",
        "MIN": 0,
        "MAX": 100,
        "CAMERA": "replay",
    }
    for key, default in defaults.items():
        text = text.replace(key, str(values.get(key, default)))
    return GOOD + text


def test_the_modbus_lane_is_valid_as_written() -> None:
    assert [lane.number for lane in parse_config(_lane()).lanes] == [1, 2, 3]


def test_misspelt_register_map_is_caught_with_the_known_names() -> None:
    lines = _problems(_lane(MAP="genric"))
    assert len(lines) == 1
    assert lines[0].startswith("station.toml:27  lanes[2].scale.map  'genric' → register map")
    assert "known: generic, generic_wim" in lines[0]


def test_a_wim_controller_map_without_a_record_section_is_caught() -> None:
    text = GOOD.replace('type = "simulated"\nid = "wim-2"', 'type = "wim_modbus"\nid = "wim-2"')
    text = text.replace("vehicles_per_min = 12", 'host = "127.0.0.1"\nmap = "generic"')
    lines = _problems(text)
    assert len(lines) == 1 and "lanes[1].scale.map  'generic'" in lines[0]
    assert "has no [record] section" in lines[0]


@pytest.mark.parametrize(
    ("low", "high", "key", "what"),
    [
        (-5, 100, "min_speed_kmh  -5", "min speed is negative"),
        (60, 5, "max_speed_kmh  5", "max speed 5.0 km/h is below min speed 60.0 km/h"),
    ],
)
def test_negative_or_inverted_speed_ranges_are_caught(
    low: int, high: int, key: str, what: str
) -> None:
    lines = _problems(_lane(MIN=low, MAX=high))
    assert len(lines) == 1
    assert f"lanes[2].scale.{key} →" in lines[0] and what in lines[0]


def test_every_kind_of_problem_is_reported_in_one_pass() -> None:
    lines = _problems(
        _lane(VEHICLE_CLASS="trcuk", MAP="genric", MIN=-1, CAMERA="replya").replace(
            "port = 1883", "port = 0"
        )
    )
    assert [line.split("  ")[1] for line in lines] == [
        "uplink.port",
        "lanes[2].vehicle_class",
        "lanes[2].scale.map",
        "lanes[2].scale.min_speed_kmh",
        "lanes[2].cameras[0].type",
    ]
    assert "did you mean 'replay'?" in lines[-1]


def test_messages_are_words_not_pydantic_texts() -> None:
    text = _lane(VEHICLE_CLASS="trcuk").replace('id = "JS-ZJ-0001"', 'id = "JS ZJ"')
    text = text.replace("vehicles_per_min = 12", 'vehicles_per_min = "many"')
    text = text.replace("[uplink]\n", "[uplink]\nkeepalive_s = 0\nmax_inflight = 1.5\n")
    text += '[legal]\ntolerance_policy = "percnt"\n'
    lines = _problems(text)
    by_key = {line.split("  ")[1]: line.rsplit(" → ", 1)[1] for line in lines}
    assert by_key == {
        "station.id": "not of the expected form (station id as registered with the platform, "
        "e.g. JS-ZJ-0001 (letters, digits, - and _; it prefixes every record id and MQTT topic))",
        "uplink.keepalive_s": "must be at least 1",
        "uplink.max_inflight": "must be a whole number",
        "lanes[1].scale.vehicles_per_min": "must be a number",
        "lanes[2].vehicle_class": "must be one of truck, combination, unknown "
        "(did you mean 'truck'?)",
        "legal.tolerance_policy": "must be one of none, percent, absolute, accuracy_class "
        "(did you mean 'percent'?)",
    }
    for line in lines:
        assert "should" not in line and "Value error" not in line, line


def test_missing_files_are_caught(tmp_path: Path) -> None:
    tls = '[uplink.tls]\nca_file = "CA"\ncert_file = "CERT"\nkey_file = "KEY"\n'
    text = GOOD.replace("port = 1883\n", "port = 1883\n" + tls)
    text = text.replace(
        'id = "wim-1"\n',
        'id = "wim-1"\n[[lanes.cameras]]\ntype = "replay"\nid = "c1"\nmode = "cycle"\n'
        'folder = "nowhere"\n',
        1,
    )
    text += '[legal]\nrules_dir = "rules"\n[plate]\ntype = "tflite"\nbundle = "models"\n'
    files = {name: tmp_path / f"{name.lower()}.pem" for name in ("CA", "CERT", "KEY")}
    for name, file in files.items():
        text = text.replace(f'"{name}"', f'"{file}"')
    path = tmp_path / "station.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = [p.format("station.toml") for p in info.value.problems]
    assert [line.split("  ")[1].split(" ")[0] for line in lines] == [
        "uplink.tls.ca_file",
        "uplink.tls.cert_file",
        "uplink.tls.key_file",
        "lanes[0].cameras[0].folder",
        "legal.rules_dir",
        "plate.bundle",
    ]
    assert f"file not found ({files['CA']})" in lines[0]
    assert lines[2].endswith("uplink.tls.key_file → file not found")  # a secret's path stays out
    assert str(tmp_path / "rules" / "limits.toml") in lines[4]


def test_tls_files_that_paho_cannot_load_are_caught(tmp_path: Path) -> None:
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text("not a PEM file\n")
    tls = (
        f'[uplink.tls]\nca_file = "{tmp_path}/ca.pem"\ncert_file = "{tmp_path}/cert.pem"\n'
        f'key_file = "{tmp_path}/key.pem"\n'
    )
    lines = _problems(GOOD.replace("port = 1883\n", "port = 1883\n" + tls))
    assert len(lines) == 1 and lines[0].startswith("station.toml:7  uplink.tls → uplink TLS:")


def test_credential_names_are_checked_where_systemd_hands_them_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = '[uplink.tls]\nca_file = "ca.pem"\ncert_file = "cert.pem"\nkey_file = "client-key"\n'
    text = GOOD.replace("port = 1883\n", "port = 1883\n" + tls)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    parse_config(text)  # a technician's shell does not see the unit's credentials
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    lines = _problems(text)
    assert len(lines) == 3
    assert f"file not found ({tmp_path / 'ca.pem'})" in lines[0]


def test_run_exits_78_on_a_misspelt_register_map(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(_lane(MAP="genric"))
    res = _cli("run", "--config", str(bad), "--data-dir", str(tmp_path / "data"))
    assert res.returncode == EX_CONFIG, res.stderr
    assert "lanes[2].scale.map  'genric' → register map 'genric' not found" in res.stderr
    assert not (tmp_path / "data").exists()


def test_a_config_caused_start_failure_exits_78_others_1() -> None:
    from agent.commands.run import start_failure_exit
    from agent.legal import InvalidFactsError, LegalRulesError
    from drivers.registry import BackendError
    from drivers.scale.base import ScaleConfigError

    for err in (
        ScaleConfigError("line loop:// is already read by a continuous-output scale"),
        LegalRulesError("limits.toml"),
        BackendError("unknown scale type"),
        InvalidFactsError("max speed below min speed"),
    ):
        assert start_failure_exit(err) == EX_CONFIG, err
    assert start_failure_exit(OSError("disk full")) == 1
