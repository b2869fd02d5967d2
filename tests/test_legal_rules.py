"""The rule tables in firmware_config/legal: what the loader accepts and what it refuses."""

from __future__ import annotations

import re
import shutil
import tomllib
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.domain import VehicleClass, VerdictStatus
from agent.legal import (
    SHIPPED_RULES_DIR,
    LegalConfig,
    LegalRulesError,
    VehicleFacts,
    judge,
    load_rules,
)

AT = datetime(2026, 11, 26, 10, 0, tzinfo=timezone(timedelta(hours=8)))
LIMITS = SHIPPED_RULES_DIR / "limits.toml"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """A copy of the shipped tables that a test may edit."""
    shutil.copy(LIMITS, tmp_path / "limits.toml")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"test setup: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def load(rules_dir: Path) -> None:
    load_rules(LegalConfig(rules_dir=str(rules_dir)))


def test_shipped_tables_load_and_every_row_names_its_source() -> None:
    rules = load_rules()
    rows = [*rules.gross_limits, *rules.adjustments]
    assert {r.id for r in rows} >= {f"order62-art3-{n}" for n in range(1, 9)}
    for row in rows:
        assert "62号" in row.source or "124号" in row.source, row.id
    assert rules.warning_band.max_excess_kg == 1000
    assert "第四十三条" in rules.warning_band.source
    assert rules.axle_table is None  # shipped disabled until confirmed


def test_obsolete_2000_limits_appear_nowhere_in_the_rules() -> None:
    data = tomllib.loads(LIMITS.read_text(encoding="utf-8"))
    limits = {row["limit_kg"] for row in data["gross_limit"]}
    assert 40000 not in limits  # the 2000 rules' 40 t gross
    for path in SHIPPED_RULES_DIR.glob("*.toml"):
        values = re.findall(r"^\s*(?:id|source|title)\s*=.*$", path.read_text("utf-8"), re.M)
        for line in values:
            assert "2000年" not in line and "2000 年" not in line, (path.name, line)
    axle = tomllib.loads((SHIPPED_RULES_DIR / "axle_limits.toml").read_text(encoding="utf-8"))
    assert axle["enabled"] is False
    # Not even in a comment: the 2000 rules' 40 t gross must not be copied back by mistake.
    code = Path(__file__).resolve().parents[1] / "agent" / "legal"
    for path in [*SHIPPED_RULES_DIR.glob("*.toml"), *code.glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"40[ ,]?000|\b40 ?t\b", text), path.name


def test_a_gap_in_the_table_is_refused(rules_dir: Path) -> None:
    edit(rules_dir / "limits.toml", 'axles = 3\nclass = "truck"', 'axles = 3\nclass = "any"')
    with pytest.raises(LegalRulesError, match=r"more than one limit .* 3 axles"):
        load(rules_dir)


def test_a_missing_row_is_refused(rules_dir: Path) -> None:
    edit(
        rules_dir / "limits.toml", 'axles = 5\nclass = "combination"', 'axles = 5\nclass = "truck"'
    )
    with pytest.raises(LegalRulesError, match="5 axles, truck: both a limit and no_limit"):
        load(rules_dir)


def test_a_row_the_law_does_not_have_must_be_declared_absent(rules_dir: Path) -> None:
    # Without the no_limit row, the missing 5+-axle 货车 limit is a gap (never silently open).
    row = '[[no_limit]]\nid = "order62-art3-no-rigid-5plus"\nmin_axles = '
    edit(rules_dir / "limits.toml", row + "5", row + "9")
    with pytest.raises(LegalRulesError, match="no limit for 5 axles, truck"):
        load(rules_dir)


def test_six_or_more_must_be_covered(rules_dir: Path) -> None:
    edit(rules_dir / "limits.toml", 'min_axles = 6\nclass = "combination"\nlimit_kg = 49000',
         'axles = 7\nclass = "combination"\nlimit_kg = 49000')  # fmt: skip
    with pytest.raises(LegalRulesError, match="no limit for 6 or more axles"):
        load(rules_dir)


def test_a_row_without_source_is_refused(rules_dir: Path) -> None:
    path = rules_dir / "limits.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r'source = "交通运输部令2016年第62号 第三条第一款第（四）项[^"]*"',
                           'source = ""', text), encoding="utf-8")  # fmt: skip
    with pytest.raises(LegalRulesError, match=r"gross_limit\.0\.source"):
        load(rules_dir)


def test_a_duplicate_id_is_refused(rules_dir: Path) -> None:
    edit(rules_dir / "limits.toml", 'id = "order62-art3-6"', 'id = "order62-art3-5"')
    with pytest.raises(LegalRulesError, match="row id used twice: order62-art3-5"):
        load(rules_dir)


def test_an_unknown_fact_in_a_condition_is_refused(rules_dir: Path) -> None:
    edit(rules_dir / "limits.toml", "when = { single_drive_axle = true }",
         "when = { single_drive = true }")  # fmt: skip
    with pytest.raises(LegalRulesError, match=r"when\.single_drive"):
        load(rules_dir)


def test_an_unknown_key_is_refused(rules_dir: Path) -> None:
    edit(rules_dir / "limits.toml", "limit_kg = 43000", "limit_kg = 43000\nlimit_t = 43")
    with pytest.raises(LegalRulesError, match="limit_t"):
        load(rules_dir)


def test_bad_toml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LegalRulesError, match=r"limits\.toml: cannot read"):
        load(tmp_path)
    (tmp_path / "limits.toml").write_text("version = \n", encoding="utf-8")
    with pytest.raises(LegalRulesError, match=r"limits\.toml: not valid TOML"):
        load(tmp_path)


def test_a_law_change_is_a_data_change(rules_dir: Path) -> None:
    # Say the 2-axle limit became 18 500 kg: change the row, and the verdict follows.
    edit(rules_dir / "limits.toml", "limit_kg = 18000", "limit_kg = 18500")
    rules = load_rules(LegalConfig(rules_dir=str(rules_dir), tolerance_policy="none"))
    v = judge(VehicleFacts((7000, 11500), 18500), rules, AT)
    assert (v.status, v.limit_kg) == (VerdictStatus.WITHIN_LIMIT, 18500)


AXLE_TABLE = """
enabled = true
group_spacing_below_mm = 2000

[[axle_limit]]
id = "t-steer"
group_axles = 1
first_axle = true
limit_kg = 7000
confirmed = true
source = "test table, steer axle"

[[axle_limit]]
id = "t-single"
group_axles = 1
first_axle = false
limit_kg = 11500
confirmed = true
source = "test table, single axle"

[[axle_limit]]
id = "t-tridem"
group_axles = 3
min_spacing_mm = 1300
below_spacing_mm = 1401
limit_kg = 24000
confirmed = true
source = "test table, tridem"
"""


def test_enabled_axle_table_must_be_confirmed(rules_dir: Path) -> None:
    (rules_dir / "axle_limits.toml").write_text(
        AXLE_TABLE.replace("confirmed = true", "confirmed = false", 1), encoding="utf-8"
    )
    with pytest.raises(LegalRulesError, match="t-steer are not confirmed"):
        load(rules_dir)


def test_enabled_axle_table_caps_the_gross_limit(rules_dir: Path) -> None:
    (rules_dir / "axle_limits.toml").write_text(AXLE_TABLE, encoding="utf-8")
    rules = load_rules(LegalConfig(rules_dir=str(rules_dir), tolerance_policy="none"))
    assert rules.axle_table is not None
    # 4x2 tractor + tridem semi-trailer: 7 000 + 11 500 + 24 000 = 42 500 kg < 43 000 kg.
    loads = (7000, 11500, 8000, 8000, 8000)
    facts = VehicleFacts(loads, 42500, (3600, 7000, 1310, 1310))
    v = judge(facts, rules, AT)
    assert v.limit_kg == 42500 and v.rule == "order62-art3-6"
    assert v.status is VerdictStatus.WITHIN_LIMIT
    assert v.details["adjustments"][-1]["delta_kg"] == -500
    assert [g["limit_kg"] for g in v.details["axle_groups"]] == [7000, 11500, 24000]
    assert judge(VehicleFacts(loads, 42501, (3600, 7000, 1310, 1310)), rules, AT).status is (
        VerdictStatus.WARNING
    )
    # No row for a tridem at 1 450 mm: no cap (never accuse on ambiguity).
    wide = judge(VehicleFacts(loads, 42500, (3600, 7000, 1450, 1450)), rules, AT)
    assert wide.limit_kg == 43000 and "axle_sum_note" in wide.details
    # No spacings: no cap.
    assert judge(VehicleFacts(loads, 42500), rules, AT).limit_kg == 43000


def test_the_limit_is_the_same_for_any_class_of_2_axles() -> None:
    rules = load_rules()
    for cls in VehicleClass:
        facts = VehicleFacts((7000, 11000), 18000, declared_class=cls)
        assert judge(facts, rules, AT).limit_kg == 18000


@pytest.mark.parametrize("axles", [5, 6, 7])
def test_no_rigid_truck_row_for_5_and_more_axles(axles: int) -> None:
    # Order 62 Art. 3 ¶1 (七), (八) name only 汽车列车: a rigid 货车 of 5+ axles is not judged
    # on an invented row (it was 43 t / 49 t "truck" before issue 12).
    rules = load_rules()
    facts = VehicleFacts((9000,) * axles, 9000 * axles, declared_class=VehicleClass.TRUCK)
    v = judge(facts, rules, AT)
    assert (v.status, v.limit_kg, v.rule) == (
        VerdictStatus.UNDETERMINED,
        None,
        "order62-art3-no-rigid-5plus",
    )
    assert "待人工审核" in v.explanation_zh and "manual review" in v.explanation
    unknown = judge(VehicleFacts((9000,) * axles, 9000 * axles), rules, AT)
    assert unknown.limit_kg == (43000 if axles == 5 else 49000)
    assert "按货车计" not in unknown.explanation_zh
    assert "only row for" in unknown.explanation


@pytest.fixture
def shipped_axle_table_enabled(rules_dir: Path) -> Path:
    """The shipped GB 1589 axle table, as if every row had been confirmed (it is not)."""
    text = (SHIPPED_RULES_DIR / "axle_limits.toml").read_text(encoding="utf-8")
    text = text.replace("confirmed = false", "confirmed = true")
    (rules_dir / "axle_limits.toml").write_text(
        text.replace("enabled = false", "enabled = true"), encoding="utf-8"
    )
    return rules_dir


def test_axle_table_tandem_with_air_suspension_keeps_the_124_bonus(
    shipped_axle_table_enabled: Path,
) -> None:
    # 6x4 rigid truck, drive tandem 1 350 mm, dual tyres + air suspension: 124号 gives
    # 25 000 + 1 000 kg; the axle sum 7 000 + 19 000 (GB 1589 tandem 1 300–1 800 mm, drive axles
    # dual-tyred and air-suspended) must not take the 1 000 kg back (it was 18 000: 25 000 kg).
    rules = load_rules(LegalConfig(rules_dir=str(shipped_axle_table_enabled)))
    air = {"air_suspension": True, "dual_tyre_drive_axle": True}
    facts = VehicleFacts(
        (7000, 9500, 9500), 26000, (3800, 1350), declared_class=VehicleClass.TRUCK, **air
    )
    v = judge(facts, rules, AT)
    assert v.limit_kg == 26000
    assert [g["limit_kg"] for g in v.details["axle_groups"]] == [7000, 19000]
    no_air = replace(facts, air_suspension=False)
    assert judge(no_air, rules, AT).limit_kg == 25000  # 7 000 + 18 000


def test_axle_table_close_tandem_is_11500(shipped_axle_table_enabled: Path) -> None:
    rules = load_rules(LegalConfig(rules_dir=str(shipped_axle_table_enabled)))
    facts = VehicleFacts((7000, 6000, 5000), 18000, (3800, 900), declared_class=VehicleClass.TRUCK)
    v = judge(facts, rules, AT)
    assert v.limit_kg == 7000 + 11500  # was 7 000 + 11 000
    assert v.details["adjustments"][-1]["id"] == "order62-art3-p2-3-axle-sum"


def test_axle_table_twin_steer_is_two_single_axles(shipped_axle_table_enabled: Path) -> None:
    # 8x4 (前四后八): steering axles 1 950 mm apart are two single 7 000 kg axles, not a tandem.
    rules = load_rules(LegalConfig(rules_dir=str(shipped_axle_table_enabled)))
    facts = VehicleFacts((6500, 6500, 9500, 9500), 32000, (1950, 3500, 1350))
    v = judge(facts, rules, AT)
    assert v.vehicle_class is VehicleClass.TRUCK
    assert [g["axles"] for g in v.details["axle_groups"]] == [[1], [2], [3, 4]]
    assert [g["limit_kg"] for g in v.details["axle_groups"]] == [7000, 7000, 19000]
