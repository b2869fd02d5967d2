"""Properties the legal check must have for any vehicle (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.domain import VehicleClass, Verdict, VerdictStatus, WeighingFlag
from agent.legal import DeviceFacts, LegalConfig, Permit, Rules, VehicleFacts, judge, load_rules
from agent.legal.engine import classes_with_a_limit

AT = datetime(2026, 11, 26, 10, 0, tzinfo=timezone(timedelta(hours=8)))
S = VerdictStatus
#: How bad a verdict is for the driver. Undetermined accuses nobody (a rigid 货车 of 5+ axles,
#: for which the law has no row, is undetermined: for manual review).
SEVERITY = {S.UNDETERMINED: 0, S.WITHIN_LIMIT: 0, S.EXEMPT: 1, S.WARNING: 2, S.OVERLOADED: 3}

NO_TOLERANCE = load_rules(LegalConfig(tolerance_policy="none"))
WITH_TOLERANCE = [
    load_rules(LegalConfig()),
    load_rules(LegalConfig(tolerance_pct=2.5)),
    load_rules(LegalConfig(tolerance_policy="absolute", tolerance_kg=1)),
    load_rules(LegalConfig(tolerance_policy="absolute", tolerance_kg=1500)),
    load_rules(LegalConfig(tolerance_policy="accuracy_class")),
]
ALL_RULES = [NO_TOLERANCE, *WITH_TOLERANCE]
DEVICE = DeviceFacts(accuracy_class="10")
PLATE = "苏L12345"

maybe_bool = st.sampled_from([None, True, False])


@st.composite
def vehicles(draw: st.DrawFn, spacings: bool = True) -> VehicleFacts:
    axles = draw(st.integers(2, 8))
    gross = draw(st.integers(0, 120_000))
    loads = (gross // axles,) * (axles - 1) + (gross - gross // axles * (axles - 1),)
    spaced = spacings and draw(st.booleans())
    cls = draw(st.sampled_from(list(VehicleClass)))
    # a truck has no tractor or semi-trailer: those facts are only "no" or "not known" for it
    tractor = st.sampled_from([None, False]) if cls is VehicleClass.TRUCK else maybe_bool
    return VehicleFacts(
        axle_loads_kg=loads,
        gross_kg=gross,
        axle_spacings_mm=(
            tuple(draw(st.lists(st.integers(800, 9000), min_size=axles - 1, max_size=axles - 1)))
            if spaced
            else ()
        ),
        declared_class=cls,
        single_drive_axle=draw(tractor),
        single_tyre_non_drive_axles=draw(st.none() | st.integers(0, min(axles - 2, 3))),
        wide_tyres=draw(maybe_bool),
        dual_tyre_drive_axle=draw(maybe_bool),
        air_suspension=draw(maybe_bool),
        articulated=draw(tractor),
        plate=PLATE,
    )


permits = st.lists(
    st.builds(
        Permit,
        plate=st.just(PLATE),
        valid_from=st.just(date(2026, 11, 1)),
        valid_to=st.sampled_from([date(2026, 11, 25), date(2026, 11, 26)]),
        max_gross_kg=st.integers(1, 120_000),
    ),
    max_size=2,
)


def twin_steer(facts: VehicleFacts, rules: Rules) -> bool:
    spacings = facts.axle_spacings_mm
    return bool(spacings) and spacings[0] < rules.class_inference.twin_steer_below_mm


def severity(v: Verdict) -> int:
    return SEVERITY[v.status]


def run(facts: VehicleFacts, rules: Rules, plist: list[Permit] | None = None) -> Verdict:
    return judge(facts, rules, AT, device=DEVICE, permits=plist or ())


@settings(max_examples=300, deadline=None)
@given(vehicles(), st.integers(0, 30_000), st.sampled_from(ALL_RULES), permits)
def test_more_weight_never_improves_the_verdict(
    facts: VehicleFacts, extra_kg: int, rules: Rules, plist: list[Permit]
) -> None:
    lighter = run(facts, rules, plist)
    heavier = run(replace(facts, gross_kg=facts.gross_kg + extra_kg), rules, plist)
    assert heavier.limit_kg == lighter.limit_kg
    assert severity(heavier) >= severity(lighter)


@settings(max_examples=300, deadline=None)
@given(vehicles(spacings=False), st.sampled_from(ALL_RULES))
def test_unknown_class_is_never_harsher_than_the_more_lenient_known_class(
    facts: VehicleFacts, rules: Rules
) -> None:
    unknown = run(replace(facts, declared_class=VehicleClass.UNKNOWN), rules)
    # only the classes the law has a row for at this axle count (no 5+-axle 货车); a truck
    # reading is also impossible when a fact says there is a tractor
    classes = classes_with_a_limit(rules, facts.axle_count)
    if facts.single_drive_axle or facts.articulated:
        classes = (VehicleClass.COMBINATION,)
    known = [run(replace(facts, declared_class=c), rules) for c in classes]
    assert unknown.limit_kg == max(v.limit_kg or 0 for v in known)
    assert severity(unknown) == min(severity(v) for v in known)
    assert unknown.class_source == (
        "declared"
        if len(classes) == 1 and (facts.single_drive_axle or facts.articulated)
        else "unknown"
    )


@settings(max_examples=300, deadline=None)
@given(
    vehicles(),
    st.sampled_from(ALL_RULES),
    st.sampled_from(
        ["single_drive_axle", "wide_tyres", "dual_tyre_drive_axle", "air_suspension",
         "articulated"]
    ),
)  # fmt: skip
def test_an_unknown_fact_is_never_harsher_than_either_known_value(
    facts: VehicleFacts, rules: Rules, fact: str
) -> None:
    unknown = run(replace(facts, **{fact: None}), rules)
    truck = facts.declared_class is VehicleClass.TRUCK or twin_steer(facts, rules)
    for value in (True, False):
        if truck and value and fact in ("single_drive_axle", "articulated"):
            continue  # not a possible reading of a truck (or of twin steering axles)
        known = run(replace(facts, **{fact: value}), rules)
        assert (unknown.limit_kg or 0) >= (known.limit_kg or 0)
        assert severity(unknown) <= severity(known)


@settings(max_examples=300, deadline=None)
@given(vehicles(), st.sampled_from(WITH_TOLERANCE), permits)
def test_tolerance_never_turns_a_pass_into_a_fail(
    facts: VehicleFacts, rules: Rules, plist: list[Permit]
) -> None:
    without = run(facts, NO_TOLERANCE, plist)
    with_tol = run(facts, rules, plist)
    assert with_tol.limit_kg == without.limit_kg
    assert severity(with_tol) <= severity(without)
    if without.status is S.WITHIN_LIMIT:
        assert with_tol.status is S.WITHIN_LIMIT


@settings(max_examples=500, deadline=None)
@given(vehicles(), st.sampled_from(ALL_RULES), permits)
def test_status_follows_design_section_3(
    facts: VehicleFacts, rules: Rules, plist: list[Permit]
) -> None:
    v = run(facts, rules, plist)
    if rules.no_limit(facts.axle_count, v.vehicle_class) is not None:
        # Order 62 has no row for a rigid 货车 of 5+ axles: never judged on an invented one
        assert v.status is S.UNDETERMINED and v.limit_kg is None
        assert v.rule == "order62-art3-no-rigid-5plus"
        return
    assert v.limit_kg is not None and v.tolerance_kg is not None and v.over_kg is not None
    limit, tol, gross = v.limit_kg, v.tolerance_kg, facts.gross_kg
    assert tol >= 0 and v.over_kg == gross - limit
    exact = Decimal(v.over_kg) * 100 / Decimal(limit)
    assert abs(Decimal(str(v.over_pct)) - exact) <= Decimal("0.005")
    covered = any(p.covers(AT, gross, tol) for p in plist)
    if gross <= limit + tol:
        assert v.status is S.WITHIN_LIMIT
    elif covered:
        assert v.status is S.EXEMPT
    elif gross - limit <= 1000:
        assert v.status is S.WARNING
    else:
        assert v.status is S.OVERLOADED
    assert v.rule and v.explanation and v.explanation_zh and v.tolerance_policy


@settings(max_examples=300, deadline=None)
@given(vehicles(), st.sampled_from(ALL_RULES))
def test_class_inference_from_spacings_is_never_harsher_than_not_inferring(
    facts: VehicleFacts, rules: Rules
) -> None:
    # issue 12: a 4-axle tractor with a short semi-trailer was inferred a 31 t rigid truck
    unknown = replace(facts, declared_class=VehicleClass.UNKNOWN)
    if twin_steer(facts, rules):
        return  # two steering axles: the one pattern that rules a combination out (truck)
    inferred = run(unknown, rules)
    no_inference = replace(rules, class_inference=replace(rules.class_inference, enabled=False))
    blind = run(unknown, no_inference)  # same spacings, class not inferred from them
    assert (inferred.limit_kg or 0) >= (blind.limit_kg or 0) or inferred.limit_kg is None
    assert severity(inferred) <= severity(blind)


@settings(max_examples=200, deadline=None)
@given(vehicles(), st.sampled_from(list(WeighingFlag)), st.sampled_from(ALL_RULES), permits)
def test_a_flagged_weighing_is_never_judged(
    facts: VehicleFacts, flag: WeighingFlag, rules: Rules, plist: list[Permit]
) -> None:
    v = run(replace(facts, flags=frozenset({flag})), rules, plist)
    assert v.status is S.UNDETERMINED and v.over_kg is None
