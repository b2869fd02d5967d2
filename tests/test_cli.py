"""Every technician command explains itself with --help (sqlite-utils' docs test idea)."""

from __future__ import annotations

import pytest

from agent.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("name", [c.replace("_", "-") for c in COMMANDS])
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: roadside-agent {name}" in out


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_command_list_matches_design_contract() -> None:
    names = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {
        "run",
        "check-config",
        "status",
        "events",
        "judge",
        "read-plate",
        "probe",
        "keygen",
        "verify",
        "export",
        "diag",
    } <= names
