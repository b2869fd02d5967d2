"""``roadside-agent judge``: the daemon's own verdict, for a technician at the roadside."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from agent.commands import judge as judge_command
from agent.legal import LegalConfig, VehicleFacts, judge, load_rules

ROOT = Path(__file__).resolve().parents[1]
AT = "2026-11-26T10:30:15+08:00"
SIX_AXLE = ["--axles", "7100,9800,9700,11200,11300,11000", "--spacings-mm",
            "3400,1350,7100,1310,1310"]  # fmt: skip
FIELDS = {"status", "limit_kg", "tolerance_kg", "over_kg", "over_pct", "rule", "explanation",
          "explanation_zh", "tolerance_policy", "vehicle_class", "class_source",
          "facts_source"}  # fmt: skip


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``roadside-agent judge ARGV`` in-process through the command's own parser."""
    parser = argparse.ArgumentParser(prog="roadside-agent")
    judge_command.add_parser(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(["judge", *argv])
        code = args.func(args)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_prints_the_verdict_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli([*SIX_AXLE, "--at", AT, "--json"], capsys)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert set(data) >= FIELDS
    assert (data["status"], data["limit_kg"], data["tolerance_kg"]) == ("overloaded", 49000, 2450)
    assert (data["over_kg"], data["over_pct"], data["rule"]) == (11100, 22.65, "order62-art3-7")
    assert data["tolerance_policy"] == "percent:5"


def test_json_is_exactly_what_the_daemon_computes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli([*SIX_AXLE, "--at", AT, "--json", "--plate", "苏L12345"], capsys)
    facts = VehicleFacts(
        (7100, 9800, 9700, 11200, 11300, 11000), 60100, (3400, 1350, 7100, 1310, 1310),
        plate="苏L12345", class_source="unknown",
    )  # fmt: skip
    expected = judge(facts, load_rules(), datetime.fromisoformat(AT)).to_dict()
    assert code == 0 and json.loads(out) == expected


def test_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["--axles", "7000,11000", "--vehicle-class", "truck"], capsys)
    assert code == 0
    assert out.splitlines()[0].split() == ["status", "within_limit"]
    assert "18000 kg" in out and "说明" in out


def test_facts_options_reach_the_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*SIX_AXLE, "--single-drive-axle", "--single-tyre-axles", "1", "--no-wide-tyres",
            "--json"]  # fmt: skip
    code, out, _ = cli(args, capsys)
    data = json.loads(out)
    assert (code, data["limit_kg"], data["rule"]) == (0, 43000, "order62-art3-8")
    code, out, _ = cli(["--axles", "7000,9000,9000,9000", "--vehicle-class", "truck",
                        "--no-air-suspension", "--json"], capsys)  # fmt: skip
    assert json.loads(out)["limit_kg"] == 31000
    assert json.loads(out)["class_source"] == "declared"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--axles", ""], "at least one axle"),
        (["--axles", ","], "not a number"),
        (["--axles", "7000,-5"], "axle load 2 -5 is negative"),
        (["--axles=-7000"], "axle load 1 -7000 is negative"),
        (["--axles", "7000,abc"], "axle load 2 'abc' is not a number"),
        (["--axles", "7000,11000.5"], "must be a whole number"),
        (["--axles", "7000,11000", "--spacings-mm", "3000,2000"], "2 axles need 1 spacings"),
        (["--axles", "7000,11000", "--spacings-mm", "0"], "must be greater than 0"),
        (["--axles", "7000,11000", "--gross-kg", "x"], "gross 'x' is not a number"),
        (["--axles", "7000,11000", "--speed-kmh", "fast"], "speed 'fast' is not a number"),
        (["--axles", "7000,11000", "--at", "2026-11-26T10:00"], "needs a UTC offset"),
        (["--axles", "7000,11000", "--vehicle-class", "bus"], "invalid choice"),
        ([], "required: --axles"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(argv, capsys)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("roadside-agent judge")


def test_config_legal_table_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "station.toml"
    config.write_text(
        '[station]\nid = "JS-ZJ-0001"\n\n[legal]\ntolerance_policy = "none"\n', encoding="utf-8"
    )
    argv = ["--axles", "7000,11001", "--config", str(config), "--json", "--at", AT]
    code, out, _ = cli(argv, capsys)
    data = json.loads(out)
    assert (code, data["status"], data["tolerance_kg"]) == (0, "warning", 0)
    assert data == judge(VehicleFacts((7000, 11001), 18001, class_source="unknown"),
                         load_rules(LegalConfig(tolerance_policy="none")),
                         datetime.fromisoformat(AT)).to_dict()  # fmt: skip


def test_config_without_legal_table_uses_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "station.toml"
    config.write_text('[station]\nid = "x"\n', encoding="utf-8")
    code, out, _ = cli(["--axles", "7000,11001", "--config", str(config), "--json"], capsys)
    assert (code, json.loads(out)["tolerance_kg"]) == (0, 900)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[legal]\ntolerance = 5\n", "legal.tolerance: Extra inputs are not permitted"),
        ("[legal]\ntolerance_policy = 'percent'\ntolerance_kg = 5\n", "tolerance_kg is only"),
        ("[legal\n", "Expected ']'"),
        ("[legal]\nrules_dir = '/nonexistent'\n", "cannot read the legal rule table"),
    ],
)
def test_bad_config_exits_78(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "station.toml"
    config.write_text(text, encoding="utf-8")
    code, out, err = cli(["--axles", "7000,11000", "--config", str(config)], capsys)
    assert (code, out) == (78, "")
    assert message in err and str(config) in err
    assert len(err.strip().splitlines()) == 1


def test_accuracy_class_policy_needs_a_known_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "station.toml"
    config.write_text('[legal]\ntolerance_policy = "accuracy_class"\n', encoding="utf-8")
    base = ["--axles", "7000,11000", "--config", str(config)]
    code, _, err = cli(base, capsys)
    assert code == 2 and "give --accuracy-class (0.2, 0.5, 1, 2, 5, 10)" in err
    code, _, err = cli([*base, "--accuracy-class", "7"], capsys)
    assert code == 2 and "accuracy class '7' is not in the rule table" in err
    code, out, _ = cli([*base, "--accuracy-class", "10", "--json"], capsys)
    data = json.loads(out)
    assert (code, data["tolerance_kg"], data["tolerance_policy"]) == (
        0,
        1800,
        "accuracy_class:10=10%",
    )


def test_undetermined_prints_dashes_not_none(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["--axles", "9000"], capsys)
    assert code == 0 and "undetermined" in out and "None" not in out
    assert "(percent:5)" in out


def test_missing_config_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["--axles", "7000,11000", "--config", str(tmp_path / "no.toml")], capsys)
    assert code == 78 and "No such file" in err


@pytest.mark.skipif(
    importlib.util.find_spec("agent.commands.run") is None,
    reason="agent.cli needs every command module (this branch has only some)",
)
def test_the_installed_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "judge", *SIX_AXLE, "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "overloaded"
    bad = subprocess.run(
        [sys.executable, "-m", "agent", "judge", "--axles", "7000,-1"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_config_rules_dir_resolves_against_the_config_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A station config with its own rule tables: judge uses them as the daemon would."""
    import shutil

    from agent.legal import SHIPPED_RULES_DIR

    etc = tmp_path / "etc"
    shutil.copytree(SHIPPED_RULES_DIR, etc / "rules")
    limits = etc / "rules" / "limits.toml"
    limits.write_text(limits.read_text(encoding="utf-8").replace("18000", "17000", 1))
    cfg = etc / "station.toml"
    cfg.write_text("[legal]\nrules_dir = 'rules'\n", encoding="utf-8")
    from agent.cli import main

    assert main(["judge", "--axles", "6000,11500", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["limit_kg"] == 17000


def test_six_axles_with_a_single_drive_axle_is_a_46t_combination(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # issue 12: a tractor with one drive axle makes the vehicle a combination (Art. 3 ¶1 (八),
    # 46 000 kg), not a 49 000 kg "assumed truck". 48 301 − 46 000 = 2 301 kg over;
    # 5 % tolerance 2 300 kg, so 1 kg beyond limit + tolerance.
    argv = ["--axles", "7000,11000,7000,7800,7800,7701", "--single-drive-axle", "--at", AT]
    code, out, _ = cli([*argv, "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert (data["status"], data["limit_kg"], data["over_kg"]) == ("overloaded", 46000, 2301)
    assert (data["rule"], data["vehicle_class"]) == ("order62-art3-8", "combination")
    assert "按货车计" not in data["explanation_zh"]
    assert "第三条第一款第（八）项" in data["explanation_zh"]
    assert "超出限值与允差之和1千克：初判超限，待审核" in data["explanation_zh"]
    code, out, _ = cli(argv, capsys)
    assert "over         2 301 kg  (5.00 %)" in out
    assert "允差2300千克（限值的5.00%）" in out and "容差" not in out


def registry_station(tmp_path: Path) -> Path:
    """A station config whose data directory holds a vehicle registry of one truck."""
    from agent.store.vehicles import VehicleRegistry

    data = tmp_path / "data"
    data.mkdir()
    VehicleRegistry(data).replace(
        [
            {
                "plate": "苏L12345",
                "axle_count": 4,
                "vehicle_class": "truck",
                "air_suspension": False,
                "dual_tyre_drive_axle": True,
                "registration": "行驶证 320000-1",
            }
        ],
        "2026-11-26.1",
    )
    config = tmp_path / "station.toml"
    config.write_text(f'[station]\nid = "JS-ZJ-0001"\ndata_dir = "{data}"\n', encoding="utf-8")
    return config


def test_plate_with_config_uses_the_station_vehicle_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = registry_station(tmp_path)
    # 4 axles, no trailer gap: the class is not told by spacings, so 37 t without the registry
    argv = ["--axles", "7000,7000,9500,9500", "--spacings-mm", "3600,1800,1350", "--at", AT]
    code, out, _ = cli([*argv, "--json"], capsys)
    assert (code, json.loads(out)["limit_kg"], json.loads(out)["status"]) == (
        0, 37000, "within_limit"
    )  # fmt: skip
    code, out, _ = cli([*argv, "--plate", "苏L·12345", "--config", str(config), "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    # the registry says: rigid truck, no air suspension: 31 000 kg (Art. 3 ¶1 (六))
    assert (data["limit_kg"], data["rule"], data["status"]) == (31000, "order62-art3-4",
                                                                 "overloaded")  # fmt: skip
    assert (data["facts_source"], data["class_source"]) == ("registry", "registry")
    assert "facts from the vehicle registry, version 2026-11-26.1" in data["explanation"]
    assert "车辆参数来自车辆登记库，版本2026-11-26.1" in data["explanation_zh"]
    code, out, _ = cli([*argv, "--plate", "苏L12345", "--config", str(config)], capsys)
    assert "facts        registry  (vehicle registry version 2026-11-26.1: 苏L12345 registered)" \
        in out  # fmt: skip
    code, out, _ = cli([*argv, "--plate", "苏A99999", "--config", str(config)], capsys)
    assert "苏A99999 not registered" in out and "limit        37 000 kg" in out
