"""docs/uplink.md is the platform team's contract: it must say what the code does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from platform_sim import load_schema, validate

from agent.uplink.client import UplinkConfig
from agent.uplink.commands import KNOWN_COMMANDS

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "uplink.md").read_text(encoding="utf-8")


def _json_blocks() -> list[object]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOC, re.S) if "\n{" not in b]


def _table_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in DOC.splitlines():
        m = re.match(r"\| `([a-z_-]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_every_config_key_is_documented_with_its_default() -> None:
    rows = _table_rows()
    for name, field in UplinkConfig.model_fields.items():
        assert name in rows, f"[uplink] {name} is not in docs/uplink.md §6"
        default = field.default
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert float(rows[name][0]) == float(default), f"{name}: doc says {rows[name][0]}"


def test_every_command_is_documented() -> None:
    rows = _table_rows()
    for name in KNOWN_COMMANDS:
        assert name in rows, f"command {name} is not in docs/uplink.md §5"


def test_every_error_code_is_documented() -> None:
    sources = "".join(p.read_text() for p in sorted((ROOT / "agent" / "uplink").glob("*.py")))
    codes = set(re.findall(r'CommandError\(\s*"([a-z-]+)"', sources))
    codes |= set(re.findall(r'"code": "([a-z-]+)"', sources))
    assert codes
    for code in codes:
        assert f"`{code}`" in DOC, f"error code {code} is not in docs/uplink.md"


@pytest.mark.parametrize(
    ("schema_name", "key"),
    [
        ("vehicle-event.v1", "event_id"),
        ("alarm.v1", "alarm_id"),
        ("heartbeat.v1", "queue"),
        ("ack.v1", "proofs"),
        ("ack-receipt.v1", "refused_count"),
    ],
)
def test_examples_match_the_schemas(schema_name: str, key: str) -> None:
    examples = [b for b in _json_blocks() if isinstance(b, dict) and key in b]
    assert examples, f"no example with {key!r}"
    for example in examples:
        assert validate(example, load_schema(schema_name)) == []


def test_ack_example_is_what_the_station_parses() -> None:
    from agent.uplink.messages import parse_ack

    acks = [b for b in _json_blocks() if isinstance(b, dict) and "alarm_ids" in b]
    assert acks and set(acks[0]) == {"event_ids", "proofs", "alarm_ids", "alarm_proofs"}
    claims = parse_ack(json.dumps(acks[0]).encode())
    assert [c.kind for c in claims] == ["event", "alarm"]
    assert all(c.proof is not None for c in claims)  # the example proves what it acks
