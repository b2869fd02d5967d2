"""The legal check against cases worked out by hand from the legal text.

Each limit below is read off Order 62 Art. 3 / 交公路发〔2016〕124号 by hand (see docs/legal.md),
not computed from the rule table: a wrong row in ``firmware_config/legal/limits.toml`` fails here.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from agent.domain import VehicleClass, VerdictStatus, WeighingFlag
from agent.legal import (
    DeviceFacts,
    LegalConfig,
    Permit,
    Rules,
    VehicleFacts,
    WatchEntry,
    check_device,
    judge,
    load_rules,
)

CST = timezone(timedelta(hours=8))
AT = datetime(2026, 11, 26, 10, 30, 15, tzinfo=CST)
T, C, U = VehicleClass.TRUCK, VehicleClass.COMBINATION, VehicleClass.UNKNOWN
S = VerdictStatus


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


@pytest.fixture(scope="module")
def strict_rules() -> Rules:
    return load_rules(LegalConfig(tolerance_policy="none"))


def vehicle(axles: int, gross_kg: int, cls: VehicleClass = U, **facts: Any) -> VehicleFacts:
    """``axles`` axles carrying ``gross_kg`` between them (the split does not matter)."""
    each = gross_kg // axles
    loads = (each,) * (axles - 1) + (gross_kg - each * (axles - 1),)
    return VehicleFacts(loads, gross_kg, declared_class=cls, **facts)


# Facts that are fully known, so no lenient assumption can move the limit.
NO_AIR = {"air_suspension": False}
AIR = {"air_suspension": True, "dual_tyre_drive_axle": True}
ARTIC_AIR = {**AIR, "articulated": True}

# (case, axles, class, facts, limit kg, rule id, the item of Order 62 / the 124号 it applies)
# -- worked out by hand from the quoted text (docs/legal.md), not from the rule table.
# Art. 3 ¶1: (四) 2 axles 18 t; (五) 3 axles truck 25 t / combination 27 t; (六) 4 axles 31 t /
# 36 t; (七) 5-axle 汽车列车 43 t; (八) 6+-axle 汽车列车 49 t, 46 t with a single drive axle.
P1 = "第三条第一款"
N124 = "124号"
Case = tuple[str, int, VehicleClass, dict[str, Any], int, str, str]
LIMITS: list[Case] = [
    ("2-axle truck", 2, T, {}, 18000, "order62-art3-1", P1 + "第（四）项"),
    ("2-axle, class unknown", 2, U, {}, 18000, "order62-art3-1", P1 + "第（四）项"),
    ("3-axle truck", 3, T, NO_AIR, 25000, "order62-art3-2", P1 + "第（五）项"),
    ("3-axle truck, air suspension", 3, T, AIR, 26000, "order62-art3-2", P1 + "第（五）项"),
    ("3-axle truck, air but single-tyre drive", 3, T, {**AIR, "dual_tyre_drive_axle": False},
     25000, "order62-art3-2", P1 + "第（五）项"),
    ("3-axle truck, suspension unknown", 3, T, {}, 26000, "order62-art3-2", P1 + "第（五）项"),
    ("3-axle combination", 3, C, NO_AIR, 27000, "order62-art3-3", P1 + "第（五）项"),
    ("3-axle combination, air (no bonus)", 3, C, AIR, 27000, "order62-art3-3", P1 + "第（五）项"),
    ("3-axle, class unknown", 3, U, {}, 27000, "order62-art3-3", P1 + "第（五）项"),
    ("4-axle truck", 4, T, NO_AIR, 31000, "order62-art3-4", P1 + "第（六）项"),
    ("4-axle truck, air suspension", 4, T, AIR, 32000, "order62-art3-4", P1 + "第（六）项"),
    ("4-axle combination", 4, C, NO_AIR, 36000, "order62-art3-5", P1 + "第（六）项"),
    ("4-axle combination, drawbar trailer, air", 4, C, {**AIR, "articulated": False},
     36000, "order62-art3-5", P1 + "第（六）项"),
    ("4-axle articulated, air, trailer spacing unknown", 4, C, ARTIC_AIR,
     37000, "jgl2016-124-air-4axle-artic", N124),
    ("4-axle, class unknown, no air", 4, U, NO_AIR, 36000, "order62-art3-5", P1 + "第（六）项"),
    ("4-axle, nothing known", 4, U, {}, 37000, "jgl2016-124-air-4axle-artic", N124),
    ("5-axle combination", 5, C, {}, 43000, "order62-art3-6", P1 + "第（七）项"),
    ("5-axle, class unknown: only 汽车列车 have a 5-axle row", 5, U, {}, 43000, "order62-art3-6",
     P1 + "第（七）项"),
    ("6-axle combination", 6, C, {"single_drive_axle": False}, 49000, "order62-art3-7",
     P1 + "第（八）项"),
    ("6-axle combination, drive axle count unknown", 6, C, {}, 49000, "order62-art3-7",
     P1 + "第（八）项"),
    ("6-axle combination, single drive axle", 6, C, {"single_drive_axle": True},
     46000, "order62-art3-8", P1 + "第（八）项"),
    ("6-axle, class unknown, single drive axle: a tractor, so a combination", 6, U,
     {"single_drive_axle": True}, 46000, "order62-art3-8", P1 + "第（八）项"),
    ("6-axle, class unknown", 6, U, {}, 49000, "order62-art3-7", P1 + "第（八）项"),
    ("7-axle combination", 7, C, {}, 49000, "order62-art3-7", P1 + "第（八）项"),
    ("8-axle combination, single drive axle", 8, C, {"single_drive_axle": True},
     46000, "order62-art3-8", P1 + "第（八）项"),
    ("3-axle combination, 1 single-tyre axle", 3, C,
     {"single_tyre_non_drive_axles": 1, "wide_tyres": False}, 24000, "order62-art3-3",
     P1 + "第（五）项"),
    ("4-axle truck, 1 single-tyre axle", 4, T,
     {**NO_AIR, "single_tyre_non_drive_axles": 1, "wide_tyres": False}, 28000, "order62-art3-4",
     P1 + "第（六）项"),
    ("6-axle combination, 2 single-tyre axles", 6, C,
     {"single_drive_axle": False, "single_tyre_non_drive_axles": 2, "wide_tyres": False},
     43000, "order62-art3-7", P1 + "第（八）项"),
    ("6-axle single drive, 3 single-tyre axles", 6, C,
     {"single_drive_axle": True, "single_tyre_non_drive_axles": 3, "wide_tyres": False},
     37000, "order62-art3-8", P1 + "第（八）项"),
    ("6-axle combination, single tyres, wide tyres", 6, C,
     {"single_drive_axle": False, "single_tyre_non_drive_axles": 2, "wide_tyres": True},
     49000, "order62-art3-7", P1 + "第（八）项"),
    ("6-axle combination, single tyres, tyre width unknown", 6, C,
     {"single_drive_axle": False, "single_tyre_non_drive_axles": 2}, 49000, "order62-art3-7",
     P1 + "第（八）项"),
]  # fmt: skip


def expected_class(cls: VehicleClass, facts: dict[str, Any]) -> VehicleClass:
    """A vehicle with a tractor is a combination (汽车列车), whatever else is not known."""
    return C if cls is U and facts.get("single_drive_axle") else cls


# Tolerance at 5 %, rounded up, worked out by hand for each limit above.
TOLERANCE_5PCT = {
    18000: 900, 24000: 1200, 25000: 1250, 26000: 1300, 27000: 1350, 28000: 1400,
    31000: 1550, 32000: 1600, 36000: 1800, 37000: 1850, 43000: 2150, 46000: 2300, 49000: 2450,
}  # fmt: skip


@pytest.mark.parametrize("case", LIMITS, ids=[c[0] for c in LIMITS])
def test_limit_table(rules: Rules, case: Case) -> None:
    _, axles, cls, facts, limit, rule, item = case
    v = judge(vehicle(axles, limit, cls, **facts), rules, AT)
    assert (v.limit_kg, v.rule) == (limit, rule)
    assert v.tolerance_kg == TOLERANCE_5PCT[limit]
    assert v.tolerance_policy == "percent:5"
    assert v.vehicle_class is expected_class(cls, facts)
    assert v.explanation and v.explanation_zh
    assert "\n" not in v.explanation + v.explanation_zh
    # the item cited is the one the law has for this axle count and class
    assert item in v.details["source"] and item in v.details["cite"]
    assert item in v.explanation_zh
    if item.startswith(P1):
        assert f"《超限运输车辆行驶公路管理规定》{item}" in v.explanation_zh
    # never a class the law does not have (no 5+-axle 货车)
    if axles >= 5:
        assert "按货车计" not in v.explanation_zh and "assumed truck" not in v.explanation


def test_every_row_of_the_shipped_table_has_a_hand_worked_case(rules: Rules) -> None:
    rows: set[str] = set()
    adjustments: set[str] = set()
    for _, axles, cls, facts, limit, _rule, _item in LIMITS:
        v = judge(vehicle(axles, limit, cls, **facts), rules, AT)
        rows.add(v.rule)
        adjustments |= {a["id"] for a in v.details["adjustments"]}
    assert rows == {r.id for r in rules.gross_limits}
    assert adjustments == {a.id for a in rules.adjustments}


@pytest.mark.parametrize("case", LIMITS, ids=[c[0] for c in LIMITS])
def test_edges_without_tolerance(strict_rules: Rules, case: Case) -> None:
    _, axles, cls, facts, limit, rule, _item = case

    def status(gross: int) -> VerdictStatus:
        v = judge(vehicle(axles, gross, cls, **facts), strict_rules, AT)
        assert (v.limit_kg, v.rule, v.tolerance_kg) == (limit, rule, 0)
        assert v.over_kg == gross - limit
        return v.status

    assert status(limit - 1) is S.WITHIN_LIMIT
    assert status(limit) is S.WITHIN_LIMIT
    assert status(limit + 1) is S.WARNING
    assert status(limit + 999) is S.WARNING
    assert status(limit + 1000) is S.WARNING
    assert status(limit + 1001) is S.OVERLOADED


@pytest.mark.parametrize("case", LIMITS, ids=[c[0] for c in LIMITS])
def test_edges_with_5pct_tolerance(rules: Rules, case: Case) -> None:
    _, axles, cls, facts, limit, _rule, _item = case
    tol = TOLERANCE_5PCT[limit]

    def status(gross: int) -> VerdictStatus:
        return judge(vehicle(axles, gross, cls, **facts), rules, AT).status

    assert status(limit + tol - 1) is S.WITHIN_LIMIT
    assert status(limit + tol) is S.WITHIN_LIMIT
    # Above the tolerance: a warning only while the raw excess is at most 1 000 kg (Art. 43).
    expected = S.WARNING if tol + 1 <= 1000 else S.OVERLOADED
    assert status(limit + tol + 1) is expected
    assert status(limit + max(tol, 1000) + 1) is S.OVERLOADED


def test_warning_band_inside_the_5pct_tolerance_of_the_2_axle_limit(rules: Rules) -> None:
    # 18 000 kg + 900 kg tolerance: 18 901 .. 19 000 kg is a warning, 19 001 kg a penalty.
    assert judge(vehicle(2, 18900, T), rules, AT).status is S.WITHIN_LIMIT
    assert judge(vehicle(2, 18901, T), rules, AT).status is S.WARNING
    assert judge(vehicle(2, 19000, T), rules, AT).status is S.WARNING
    assert judge(vehicle(2, 19001, T), rules, AT).status is S.OVERLOADED


def test_design_example_six_axle_tractor(rules: Rules) -> None:
    facts = VehicleFacts(
        (7100, 9800, 9700, 11200, 11300, 11000), 60100, (3400, 1350, 7100, 1310, 1310)
    )
    v = judge(facts, rules, AT)
    assert v.to_dict() | {"explanation": "", "explanation_zh": "", "details": {}} == {
        "status": "overloaded",
        "review_required": True,  # the station flags, an officer decides (DESIGN §4a)
        "limit_kg": 49000,
        "tolerance_kg": 2450,
        "over_kg": 11100,
        "over_pct": 22.65,
        "rule": "order62-art3-7",
        "explanation": "",
        "explanation_zh": "",
        "tolerance_policy": "percent:5",
        "vehicle_class": "combination",
        "class_source": "spacings",
        "watchlist_hit": False,
        "rules_version": rules.version,
        "facts_source": "assumed",
        "details": {},
    }
    assert "49000 kg" in v.explanation and "over the limit, for review" in v.explanation
    assert "第三条第一款第（八）项" in v.explanation_zh
    assert "初判超限，待审核" in v.explanation_zh and "认定超限" not in v.explanation_zh
    assert "超出限值与允差之和8650千克" in v.explanation_zh  # 60 100 − 49 000 − 2 450
    assert "single drive axle not known" in v.explanation


def test_over_pct_is_rounded_half_up_to_two_decimals(strict_rules: Rules) -> None:
    # 1 / 18 000 = 0.00556 % -> 0.01; 2 750 / 18 000 = 15.2777 % -> 15.28
    assert judge(vehicle(2, 18001, T), strict_rules, AT).over_pct == 0.01
    assert judge(vehicle(2, 20750, T), strict_rules, AT).over_pct == 15.28
    # 1 / 32 000 = 0.003125 % -> 0.00 ; 80 / 32 000 = 0.25 % exactly
    assert judge(vehicle(4, 32080, T, **AIR), strict_rules, AT).over_pct == 0.25
    assert judge(vehicle(2, 17000, T), strict_rules, AT).over_pct == -5.56


# --- class -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spacings", "cls", "source"),
    [
        ((1900, 3500, 1350), T, "spacings"),  # 8x4 twin steer
        ((3600, 7000, 1350), C, "spacings"),  # 4x2 tractor + tandem semi-trailer
        ((3600, 5501, 1350), C, "spacings"),  # just above the 5 500 mm gap
        # at the gap: not a gap, but no gap does not rule out a short semi-trailer (issue 12:
        # 4x2 tractor + tandem semi-trailer was taken for a 31 t rigid truck)
        ((3600, 5500, 1350), U, "unknown"),
        ((3600, 4200, 1310), U, "unknown"),
        ((2499, 3000, 1350), T, "spacings"),
        ((7000, 3000, 1350), U, "unknown"),  # a long first spacing is the wheelbase, not a gap
    ],
)
def test_class_from_spacings_4_axles(
    rules: Rules, spacings: tuple[int, ...], cls: VehicleClass, source: str
) -> None:
    v = judge(VehicleFacts((7000, 9000, 10000, 10000), 36000, spacings), rules, AT)
    assert (v.vehicle_class, v.class_source) == (cls, source)
    inference = rules.class_inference
    thresholds = (inference.trailer_gap_above_mm, inference.twin_steer_below_mm)
    assert any(f"{mm} mm" in v.explanation for mm in thresholds)  # the rule is named


def test_twin_steer_threshold_edge_on_5_axles(rules: Rules) -> None:
    # 5 axles are not in rigid_axle_counts: only the twin-steer rule can say "truck".
    def cls(first: int) -> VehicleClass:
        facts = VehicleFacts((7000,) * 5, 35000, (first, 3000, 1350, 1350))
        return judge(facts, rules, AT).vehicle_class

    assert cls(2499) is T
    assert cls(2500) is U


def test_class_thresholds_are_configurable() -> None:
    rules = load_rules(LegalConfig(trailer_gap_above_mm=6000, twin_steer_below_mm=2000))
    facts = VehicleFacts((7000, 9000, 10000), 26000, (3600, 5800))
    assert judge(facts, rules, AT).vehicle_class is U  # no gap above 6 000 mm: not told
    assert "6000 mm" in judge(facts, rules, AT).explanation
    assert (
        judge(VehicleFacts((7000, 9000, 10000), 26000, (3600, 6001)), rules, AT).vehicle_class is C
    )
    facts5 = VehicleFacts((7000,) * 5, 35000, (2100, 3000, 1350, 1350))
    assert judge(facts5, rules, AT).vehicle_class is U


def test_inference_can_be_switched_off() -> None:
    rules = load_rules(LegalConfig(infer_class_from_spacings=False))
    v = judge(VehicleFacts((7000, 9000, 10000), 26000, (1900, 1350)), rules, AT)
    assert (v.vehicle_class, v.class_source, v.limit_kg) == (U, "unknown", 27000)


def test_lane_class_overrides_spacings(rules: Rules) -> None:
    facts = VehicleFacts(
        (7000, 9000, 10000), 26000, (3600, 7000), declared_class=T, class_source="lane",
        air_suspension=False,
    )  # fmt: skip
    v = judge(facts, rules, AT)
    assert (v.vehicle_class, v.class_source, v.limit_kg) == (T, "lane", 25000)


def test_unknown_class_is_said_and_the_higher_limit_applied(rules: Rules) -> None:
    v = judge(vehicle(3, 26000), rules, AT)
    assert (v.limit_kg, v.class_source, v.vehicle_class) == (27000, "unknown", U)
    assert "class not known" in v.explanation and "车型未知" in v.explanation_zh
    assert v.details["assumed"] == {"vehicle_class": "combination"}


def test_semi_trailer_axle_spacing_edge_for_37t(rules: Rules) -> None:
    def limit(trailer_mm: int) -> int | None:
        facts = VehicleFacts(
            (7000, 10000, 10000, 10000), 37000, (3600, 7000, trailer_mm), **ARTIC_AIR
        )
        return judge(facts, rules, AT).limit_kg

    assert limit(1799) == 36000
    assert limit(1800) == 37000
    assert limit(1801) == 37000


def test_single_axle_semi_trailer_does_not_get_37t(rules: Rules) -> None:
    # 6x4 tractor + 1-axle semi-trailer: no "two axles of the semi-trailer".
    facts = VehicleFacts((7000, 10000, 10000, 10000), 37000, (3400, 1350, 7000), **ARTIC_AIR)
    assert judge(facts, rules, AT).limit_kg == 36000


def test_assumptions_are_named_in_the_explanation(rules: Rules) -> None:
    v = judge(vehicle(4, 30000, T), rules, AT)
    assert v.limit_kg == 32000
    assert v.details["assumed"] == {"air_suspension": True, "dual_tyre_drive_axle": True}
    assert "air suspension not known, assumed yes" in v.explanation
    assert "空气悬架未知" in v.explanation_zh
    v_known = judge(vehicle(4, 30000, T, **NO_AIR), rules, AT)
    assert "assumed" not in v_known.details and "not known" not in v_known.explanation


def test_adjustments_are_recorded(rules: Rules) -> None:
    v = judge(vehicle(4, 30000, T, **AIR, single_tyre_non_drive_axles=1, wide_tyres=False),
              rules, AT)  # fmt: skip
    assert v.limit_kg == 29000
    assert [(a["id"], a["delta_kg"]) for a in v.details["adjustments"]] == [
        ("order62-art3-2-single-tyre", -3000),
        ("jgl2016-124-air-truck", 1000),
    ]
    assert all(a["source"] for a in v.details["adjustments"])


# --- tolerance policies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "device", "tolerance", "policy"),
    [
        (LegalConfig(tolerance_policy="none"), None, 0, "none"),
        (LegalConfig(), None, 2450, "percent:5"),
        (LegalConfig(tolerance_pct=3.301), None, 1618, "percent:3.301"),  # 1617.49 rounded up
        (LegalConfig(tolerance_pct=0), None, 0, "percent:0"),
        (LegalConfig(tolerance_policy="absolute", tolerance_kg=500), None, 500, "absolute:500"),
        (LegalConfig(tolerance_policy="accuracy_class"), DeviceFacts(accuracy_class="5"),
         2450, "accuracy_class:5=5%"),
        (LegalConfig(tolerance_policy="accuracy_class"), DeviceFacts(accuracy_class="10"),
         4900, "accuracy_class:10=10%"),
        (LegalConfig(tolerance_policy="accuracy_class"), DeviceFacts(accuracy_class="0.5"),
         245, "accuracy_class:0.5=0.5%"),
        (LegalConfig(tolerance_policy="accuracy_class"), DeviceFacts(accuracy_class="2"),
         980, "accuracy_class:2=2%"),
    ],
)  # fmt: skip
def test_tolerance_policies(
    config: LegalConfig, device: DeviceFacts | None, tolerance: int, policy: str
) -> None:
    v = judge(vehicle(6, 50000, C, single_drive_axle=False), load_rules(config), AT, device=device)
    assert (v.tolerance_kg, v.tolerance_policy) == (tolerance, policy)
    assert v.status is (S.WITHIN_LIMIT if tolerance >= 1000 else S.WARNING)


def test_absolute_tolerance_edges() -> None:
    rules = load_rules(LegalConfig(tolerance_policy="absolute", tolerance_kg=500))
    assert judge(vehicle(2, 18500, T), rules, AT).status is S.WITHIN_LIMIT
    assert judge(vehicle(2, 18501, T), rules, AT).status is S.WARNING


@pytest.mark.parametrize("accuracy_class", [None, "7", "III"])
def test_accuracy_class_unknown_is_undetermined(accuracy_class: str | None) -> None:
    rules = load_rules(LegalConfig(tolerance_policy="accuracy_class"))
    v = judge(vehicle(2, 30000, T), rules, AT, device=DeviceFacts(accuracy_class=accuracy_class))
    assert v.status is S.UNDETERMINED
    assert v.over_kg is None and v.tolerance_kg is None
    assert "accuracy class" in v.explanation


def test_config_refuses_a_value_for_a_policy_not_selected() -> None:
    with pytest.raises(ValueError, match="tolerance_kg is only used"):
        LegalConfig(tolerance_kg=500)
    with pytest.raises(ValueError, match="tolerance_pct is only used"):
        LegalConfig(tolerance_policy="none", tolerance_pct=5)
    with pytest.raises(ValueError, match="Extra inputs"):
        LegalConfig.model_validate({"tolerance": 5})


def test_check_device_names_what_is_missing() -> None:
    rules = load_rules(LegalConfig(tolerance_policy="accuracy_class"))
    good = DeviceFacts(accuracy_class="5", certificate_valid_until=date(2027, 5, 31))
    assert check_device(rules, good) == []
    (problem,) = check_device(rules, replace(good, accuracy_class="7", scale_id="wim-1"))
    assert problem == "scale 'wim-1': accuracy class '7' is not in the rule table " \
        "(known: 0.2, 0.5, 1, 2, 5, 10)"  # fmt: skip
    assert "needs one" in check_device(rules, replace(good, accuracy_class=None))[0]
    assert "certificate" in check_device(rules, replace(good, certificate_valid_until=None))[0]
    assert check_device(load_rules(), replace(good, accuracy_class=None)) == []


# --- undetermined ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag", list(WeighingFlag))
def test_any_weighing_flag_is_undetermined(rules: Rules, flag: WeighingFlag) -> None:
    v = judge(vehicle(6, 70000, C, flags=frozenset({flag})), rules, AT)
    assert v.status is S.UNDETERMINED
    assert v.over_kg is None and v.over_pct is None
    assert "not judged" in v.explanation and "不予认定" in v.explanation_zh


@pytest.mark.parametrize("axles", [0, 1])
def test_fewer_than_two_axles_is_undetermined(rules: Rules, axles: int) -> None:
    v = judge(VehicleFacts((9000,) * axles, 9000 * axles), rules, AT)
    assert (v.status, v.limit_kg, v.rule) == (S.UNDETERMINED, None, "undetermined")


def test_speed_range_edges(rules: Rules) -> None:
    device = DeviceFacts(min_speed_kmh=5, max_speed_kmh=80)

    def status(speed: float | None) -> VerdictStatus:
        return judge(vehicle(2, 30000, T, speed_kmh=speed), rules, AT, device=device).status

    assert status(4.9) is S.UNDETERMINED
    assert status(5) is S.OVERLOADED
    assert status(80) is S.OVERLOADED
    assert status(80.1) is S.UNDETERMINED
    assert status(None) is S.UNDETERMINED  # the scale's range cannot be checked
    # a static weighbridge has no speed range: no speed is fine
    assert judge(vehicle(2, 30000, T), rules, AT, device=DeviceFacts()).status is S.OVERLOADED


def test_certificate_expiry_edges(rules: Rules) -> None:
    def status(valid_until: date) -> VerdictStatus:
        device = DeviceFacts(certificate_valid_until=valid_until)
        return judge(vehicle(2, 30000, T), rules, AT, device=device).status

    assert status(date(2026, 11, 26)) is S.OVERLOADED  # valid through its last day
    assert status(date(2026, 11, 25)) is S.UNDETERMINED
    v = judge(vehicle(2, 30000, T), rules, AT,
              device=DeviceFacts(certificate_valid_until=date(2026, 11, 25)))  # fmt: skip
    assert "expired on 2026-11-25" in v.explanation


def test_certificate_day_is_the_local_day_of_the_measurement(rules: Rules) -> None:
    # 2026-11-26 23:30 UTC is 2026-11-27 07:30 in China: the certificate of the 26th has expired.
    at = datetime(2026, 11, 26, 23, 30, tzinfo=UTC).astimezone(CST)
    device = DeviceFacts(certificate_valid_until=date(2026, 11, 26))
    assert judge(vehicle(2, 30000, T), rules, at, device=device).status is S.UNDETERMINED


def test_all_undetermined_causes_are_listed(rules: Rules) -> None:
    device = DeviceFacts(
        certificate_valid_until=date(2025, 1, 1), min_speed_kmh=5, max_speed_kmh=80
    )
    facts = vehicle(2, 30000, T, speed_kmh=100.0, flags=frozenset({WeighingFlag.STRADDLING}))
    v = judge(facts, rules, AT, device=device)
    assert len(v.details["undetermined_causes"]) == 3
    assert v.limit_kg == 18000  # still shown, for the technician


# --- permits and watch-list ------------------------------------------------------------------


def permit(max_gross_kg: int, **kw: Any) -> Permit:
    base: dict[str, Any] = {
        "plate": "苏L12345", "valid_from": date(2026, 11, 1), "valid_to": date(2026, 11, 30),
        "max_gross_kg": max_gross_kg, "permit_id": "P-1",
    }  # fmt: skip
    return Permit(**(base | kw))


def test_permit_covering_the_gross_exempts(rules: Rules) -> None:
    facts = vehicle(6, 60000, C, single_drive_axle=False, plate="苏L·12345")
    v = judge(facts, rules, AT, permits=[permit(62000)])
    assert v.status is S.EXEMPT
    assert (v.limit_kg, v.over_kg) == (49000, 11000)
    assert v.details["permit"]["permit_id"] == "P-1"
    assert "P-1" in v.explanation


def test_permit_edges(strict_rules: Rules) -> None:
    facts = vehicle(6, 60000, C, single_drive_axle=False, plate="苏L12345")

    def status(p: Permit, at: datetime = AT) -> VerdictStatus:
        return judge(facts, strict_rules, at, permits=[p]).status

    assert status(permit(60000)) is S.EXEMPT
    assert status(permit(59999)) is S.OVERLOADED
    assert status(permit(60000, valid_to=date(2026, 11, 26))) is S.EXEMPT
    assert status(permit(60000, valid_to=date(2026, 11, 25))) is S.OVERLOADED
    assert status(permit(60000, valid_from=date(2026, 11, 27))) is S.OVERLOADED
    assert status(permit(60000, plate="苏L12346")) is S.OVERLOADED
    v = judge(facts, strict_rules, AT, permits=[permit(55000)])
    assert "allows only 55000 kg" in v.explanation


def test_permit_gets_the_same_tolerance_as_the_limit(rules: Rules) -> None:
    # 5 % of 49 000 = 2 450 kg: the scale's error counts for the permit's limit too.
    facts = vehicle(6, 62450, C, single_drive_axle=False, plate="苏L12345")
    assert judge(facts, rules, AT, permits=[permit(60000)]).status is S.EXEMPT
    facts = replace(facts, gross_kg=62451)
    assert judge(facts, rules, AT, permits=[permit(60000)]).status is S.OVERLOADED


def test_permit_never_hides_undetermined_and_within_is_within(rules: Rules) -> None:
    p = [permit(99000)]
    v = judge(vehicle(2, 18000, T, plate="苏L12345"), rules, AT, permits=p)
    assert v.status is S.WITHIN_LIMIT
    flagged = vehicle(2, 30000, T, plate="苏L12345", flags=frozenset({WeighingFlag.SCALE_FAULT}))
    assert judge(flagged, rules, AT, permits=p).status is S.UNDETERMINED


def test_permit_with_exact_times(strict_rules: Rules) -> None:
    facts = vehicle(2, 20000, T, plate="苏L12345")
    p = permit(20000, valid_from=AT, valid_to=AT + timedelta(hours=1))
    assert judge(facts, strict_rules, AT, permits=[p]).status is S.EXEMPT
    later = AT + timedelta(hours=1, microseconds=1)
    assert judge(facts, strict_rules, later, permits=[p]).status is S.OVERLOADED


def test_watchlist_hit_is_flagged_whatever_the_status(rules: Rules) -> None:
    watch = [WatchEntry("苏L 12345", reason="stolen trailer")]
    for gross in (10000, 30000):
        v = judge(vehicle(2, gross, T, plate="苏l12345"), rules, AT, watchlist=watch)
        assert v.watchlist_hit
        assert v.details["watchlist"]["reason"] == "stolen trailer"
        assert "watch-list" in v.explanation and "布控" in v.explanation_zh
    assert not judge(
        vehicle(2, 10000, T, plate="苏L54321"), rules, AT, watchlist=watch
    ).watchlist_hit
    assert not judge(vehicle(2, 10000, T), rules, AT, watchlist=watch).watchlist_hit


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"axle_loads_kg": (7000, -1), "gross_kg": 6999}, "axle 2 load is negative"),
        ({"axle_loads_kg": (7000, 11000), "gross_kg": -1}, "gross is negative"),
        ({"axle_loads_kg": (7000, 11000), "gross_kg": 18000, "axle_spacings_mm": (1, 2)},
         "2 axles need 1 spacings"),
        ({"axle_loads_kg": (7000, 11000), "gross_kg": 18000, "axle_spacings_mm": (0,)},
         "spacing 1 must be a positive"),
        ({"axle_loads_kg": (7000, 11000), "gross_kg": 18000, "single_tyre_non_drive_axles": 1},
         "single_tyre_non_drive_axles must be 0..0"),
        ({"axle_loads_kg": (7000,) * 6, "gross_kg": 42000, "single_tyre_non_drive_axles": 5},
         "single_tyre_non_drive_axles must be 0..4"),
        ({"axle_loads_kg": (7000, 11000.5), "gross_kg": 18000}, "whole kg"),
        ({"axle_loads_kg": (7000, 11000), "gross_kg": 18000, "class_source": "guess"},
         "class_source"),
    ],
)  # fmt: skip
def test_impossible_facts_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VehicleFacts(**kwargs)


def test_the_verdict_is_a_preliminary_finding_in_one_terminology(rules: Rules) -> None:
    # issue 12: the station decides (认定) nothing and imposes no 警告; one term (允差) for the
    # tolerance; percentages with two decimals; the excess beyond limit + tolerance stated.
    warning = judge(vehicle(2, 18901, T), rules, AT)
    assert warning.status is S.WARNING
    assert "超出限值与允差之和1千克，未超过1000千克：属第四十三条第一款第（二）项警告情形，待审核" \
        in warning.explanation_zh  # fmt: skip
    assert "a warning case of Order 62 Art. 43 ¶1 item (2)" in warning.explanation
    within = judge(vehicle(2, 18900, T), rules, AT)
    assert "超出限值900千克（5.00%），在允差内，暂不认定超限" in within.explanation_zh
    over = judge(vehicle(2, 19001, T), rules, AT)
    assert "允差900千克（限值的5.00%）" in over.explanation_zh
    assert "tolerance 900 kg (5.00 % of the limit)" in over.explanation
    assert "1001 kg (5.56 %) over the limit, 101 kg beyond limit + tolerance" in over.explanation
    for v in (warning, within, over):
        assert "容差" not in v.explanation_zh and "认定超限运输" not in v.explanation_zh
        assert "予以警告" not in v.explanation_zh
