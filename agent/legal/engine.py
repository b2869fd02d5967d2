"""The verdict: is this vehicle over the limit? (Order 62 Art. 3 and Art. 43)

Pure: no I/O, no clock reads; the measurement time is passed in. The steps, in order:

1. **Can it be judged?** Fewer than 2 axles, any weighing flag (scale fault, out of range,
   straddling...), a speed outside the scale's approved range, or an expired verification
   certificate make the verdict ``undetermined``.
2. **Class**: from the lane (or a person), else inferred from the axle spacings, else unknown.
3. **Limit**: the row of the table for the axle count and class, a replacing row when its
   conditions hold (46 t single-drive tractor, 37 t air-suspended 4-axle articulated), plus the
   adjustments (single tyres −3 000 kg per axle, air suspension +1 000 kg). Every fact the station
   does not know (the class included) is read the way that gives the **higher** limit: the engine
   tries each reading and keeps the highest, and the verdict names the assumptions that mattered.
4. **Tolerance** by the configured policy, rounded **up** to the whole kg (the lenient side).
5. **Status**: ``within_limit`` when gross ≤ limit + tolerance; else ``exempt`` when a valid
   permit covers the gross; else ``warning`` when gross − limit ≤ 1 000 kg (Art. 43); else
   ``overloaded``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

from agent.domain import VehicleClass, Verdict, VerdictStatus, WeighingFlag
from agent.legal.facts import (
    DeviceFacts,
    InvalidFactsError,
    Permit,
    VehicleFacts,
    WatchEntry,
    normalize_plate,
)
from agent.legal.registry import GB1589_SPECIAL, RegisteredVehicle
from agent.legal.rules import (
    BUILD_FACTS,
    Adjustment,
    AxleLimitRow,
    AxleTable,
    LimitRow,
    NoLimitRow,
    Rules,
)

#: Assumption key for a semi-trailer axle spacing the station did not measure.
SEMI_TRAILER_SPACING = "semi_trailer_axle_spacing"
CLASS = "vehicle_class"
AXLE_SUM_SOURCE = (
    "交通运输部令2016年第62号 第三条第二款第（三）项："
    "车辆最大允许总质量不应当超过各车轴最大允许轴荷之和"
)

_LABELS: dict[str, tuple[str, str]] = {
    "single_drive_axle": ("single drive axle", "牵引车单驱动轴"),
    "air_suspension": ("air suspension", "空气悬架"),
    "dual_tyre_drive_axle": ("dual-tyre drive axle", "驱动轴双轮胎"),
    "articulated": ("semi-trailer (articulated)", "铰接列车"),
    "wide_tyres": ("approved wide tyres", "加宽轮胎"),
    SEMI_TRAILER_SPACING: ("semi-trailer axle spacing ≥ limit", "半挂车两轴距离达标"),
}

_CLASS_WORDS: dict[VehicleClass, tuple[str, str]] = {
    VehicleClass.TRUCK: ("truck", "货车"),
    VehicleClass.COMBINATION: ("combination", "汽车列车"),
    VehicleClass.UNKNOWN: ("vehicle, class not known", "车辆，车型未知"),
}

_FLAG_WORDS: dict[WeighingFlag, tuple[str, str]] = {
    WeighingFlag.SCALE_FAULT: ("scale fault", "衡器故障"),
    WeighingFlag.OUT_OF_RANGE: ("reading out of the scale's range", "读数超出衡器量程"),
    WeighingFlag.SPEED_OUT_OF_RANGE: ("speed outside the scale's range", "车速超出衡器允许范围"),
    WeighingFlag.STRADDLING: ("vehicle straddled the lanes", "车辆跨道行驶"),
    WeighingFlag.INCOMPLETE: ("incomplete weighing", "称重不完整"),
    WeighingFlag.INCONSISTENT: ("gross and axle loads disagree", "总重与轴重不一致"),
    WeighingFlag.CALIBRATION_EXPIRED: ("calibration expired", "检定过期"),
    WeighingFlag.MOTION: ("no stable weight", "未获得稳定读数"),
    WeighingFlag.NET_WEIGHT: ("net weight read, not the gross", "读数为净重，非毛重"),
}

Text = tuple[str, str]  # (English, Chinese)

_WHO: dict[str, Text] = {
    "lane": ("set for the lane", "车道配置"),
    "declared": ("declared", "人工指定"),
    "registry": ("vehicle registry", "车辆登记库"),
}

#: How the explanation names Order 62 (its title, as an officer cites it).
ORDER62 = "交通运输部令2016年第62号"
ORDER62_NAME = "《超限运输车辆行驶公路管理规定》"
_ZH_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}


def _number(zh: str) -> str:
    """一 … 九十九 as digits (what article and item numbers need); anything else unchanged."""
    tens, ten, ones = zh.partition("十")
    if not ten:
        return str(_ZH_DIGITS[zh]) if zh in _ZH_DIGITS else zh
    if (tens and tens not in _ZH_DIGITS) or (ones and ones not in _ZH_DIGITS):
        return zh
    return str((_ZH_DIGITS[tens] if tens else 1) * 10 + (_ZH_DIGITS[ones] if ones else 0))


_ARTICLE = re.compile(
    r"第([一二三四五六七八九十]+)条(?:第([一二三四五六七八九十]+)款)?(?:第（([一二三四五六七八九十]+)）项)?"
)


def cite(source: str) -> Text:
    """The article and item a row's ``source`` names, as (English, Chinese) citations.

    ``"交通运输部令2016年第62号 第三条第一款第（八）项：…"`` gives
    ``("Order 62 Art. 3 ¶1 item (8)", "《超限运输车辆行驶公路管理规定》第三条第一款第（八）项")``;
    other sources (124号, GB 1589) are cited by what stands before the colon.
    """
    head = source.split("：", 1)[0].strip()
    if not head.startswith(ORDER62):
        return head, head
    where = head.removeprefix(ORDER62).strip()
    found = _ARTICLE.match(where)
    if found is None:
        return f"Order 62 {where}", f"{ORDER62_NAME}{where}"
    article, paragraph, item = found.groups()
    en = f"Order 62 Art. {_number(article)}"
    en += f" ¶{_number(paragraph)}" if paragraph else ""
    en += f" item ({_number(item)})" if item else ""
    return en, f"{ORDER62_NAME}{where}"


# --- class -----------------------------------------------------------------------------------


def classify(facts: VehicleFacts, rules: Rules) -> tuple[VehicleClass, str, Text]:
    """The vehicle class, where it came from (lane | declared | spacings | unknown), and why."""
    if facts.declared_class is not VehicleClass.UNKNOWN:
        src = facts.class_source if facts.class_source != "unknown" else "declared"
        return facts.declared_class, src, _WHO[src]
    if facts.single_drive_axle or facts.articulated:
        return (
            VehicleClass.COMBINATION,
            "declared",
            ("it has a tractor: a combination", "有牵引车，为汽车列车"),
        )
    inference = rules.class_inference
    spacings = facts.axle_spacings_mm
    if not inference.enabled:
        return VehicleClass.UNKNOWN, "unknown", ("not inferred (switched off)", "未启用轴距判定")
    if not spacings:
        return VehicleClass.UNKNOWN, "unknown", ("no axle spacings", "无轴距数据")
    gap = inference.trailer_gap_above_mm
    for i, mm in enumerate(spacings[1:], start=2):
        if mm > gap:
            return (
                VehicleClass.COMBINATION,
                "spacings",
                (f"spacing {i} is {mm} mm > {gap} mm", f"第{i}轴距{mm}毫米>{gap}毫米"),
            )
    twin = inference.twin_steer_below_mm
    if spacings[0] < twin:
        # Two steering axles: the one spacing pattern that rules a combination out.
        return (
            VehicleClass.TRUCK,
            "spacings",
            (
                f"first spacing {spacings[0]} mm < {twin} mm: twin steer",
                f"第1轴距{spacings[0]}毫米<{twin}毫米，双转向",
            ),
        )
    # No trailer gap is not proof of a rigid truck: a short semi-trailer has none either.
    return (
        VehicleClass.UNKNOWN,
        "unknown",
        (
            f"no spacing after the first > {gap} mm, but that does not rule out a combination "
            "with a short semi-trailer",
            f"第1轴距之后无>{gap}毫米的轴距，但不能排除短半挂车的汽车列车",
        ),
    )


# --- limit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """The limit in one reading of the facts."""

    limit_kg: int
    row: LimitRow
    base: LimitRow
    adjustments: tuple[tuple[Adjustment, int], ...]  # (adjustment, kg applied)
    world: Mapping[str, Any]


def _semi_trailer_spacings(facts: VehicleFacts, rules: Rules) -> tuple[int, ...] | None:
    """Spacings between the semi-trailer's axles, or ``None`` when the station cannot tell."""
    spacings = facts.axle_spacings_mm
    gap = rules.class_inference.trailer_gap_above_mm
    last_gap = max((i for i, mm in enumerate(spacings) if i >= 1 and mm > gap), default=None)
    if last_gap is None:
        return None
    return spacings[last_gap + 1 :]


def _holds(when: Iterable[tuple[str, bool]], world: Mapping[str, Any]) -> bool:
    return all(world[name] == value for name, value in when)


def _row_applies(row: LimitRow, world: Mapping[str, Any], trailer: tuple[int, ...] | None) -> bool:
    if not _holds(row.when, world):
        return False
    need = row.min_semi_trailer_axle_spacing_mm
    if need is None:
        return True
    if trailer is None:
        return bool(world[SEMI_TRAILER_SPACING])
    # The rule speaks of "the semi-trailer's two axles": one spacing, at least `need`.
    return len(trailer) == 1 and trailer[0] >= need


def _limit_in(
    rules: Rules, facts: VehicleFacts, world: Mapping[str, Any], trailer: tuple[int, ...] | None
) -> Limit:
    axles = facts.axle_count
    cls: VehicleClass = world[CLASS]
    base = next(r for r in rules.gross_limits if r.replaces is None and r.matches(axles, cls))
    row = next(
        (
            r
            for r in rules.gross_limits
            if r.replaces == base.id and r.matches(axles, cls) and _row_applies(r, world, trailer)
        ),
        base,
    )
    applied: list[tuple[Adjustment, int]] = []
    for adj in rules.adjustments:
        if not adj.matches(axles, cls) or not _holds(adj.when, world):
            continue
        times = 1 if adj.per == "vehicle" else facts.single_tyre_non_drive_axles or 0
        if times:
            applied.append((adj, adj.delta_kg * times))
    total = row.limit_kg + sum(kg for _, kg in applied)
    return Limit(total, row, base, tuple(applied), dict(world))


def classes_with_a_limit(rules: Rules, axles: int) -> tuple[VehicleClass, ...]:
    """The classes the law gives a limit for at this axle count (5+ axles: combinations only)."""
    return tuple(
        c
        for c in (VehicleClass.TRUCK, VehicleClass.COMBINATION)
        if any(r.replaces is None and r.matches(axles, c) for r in rules.gross_limits)
    )


def _unknowns(
    facts: VehicleFacts, classes: tuple[VehicleClass, ...], rules: Rules
) -> dict[str, tuple[Any, ...]]:
    """Each fact the station does not know, with the readings to try."""
    out: dict[str, tuple[Any, ...]] = {}
    if len(classes) > 1:
        out[CLASS] = classes
    # Only facts that a row or adjustment for this vehicle depends on: fewer readings to try.
    axles = facts.axle_count
    rows = [r for r in rules.gross_limits if any(r.matches(axles, c) for c in classes)]
    adjustments = [
        a
        for a in rules.adjustments
        if any(a.matches(axles, c) for c in classes)
        and (a.per == "vehicle" or facts.single_tyre_non_drive_axles)
    ]
    referenced = {name for r in rows for name, _ in r.when}
    referenced |= {name for a in adjustments for name, _ in a.when}
    for name in sorted(referenced):
        if getattr(facts, name) is None:
            out[name] = (False, True)
    needs_trailer = any(r.min_semi_trailer_axle_spacing_mm for r in rows)
    if needs_trailer and _semi_trailer_spacings(facts, rules) is None:
        out[SEMI_TRAILER_SPACING] = (False, True)
    return out


def gross_limit(
    facts: VehicleFacts, rules: Rules, cls: VehicleClass
) -> tuple[Limit, dict[str, Any]]:
    """The highest limit over every reading of the unknown facts, and the assumptions that
    decided it (each one, read the other way, would give a lower limit)."""
    trailer = _semi_trailer_spacings(facts, rules)
    classes = (
        (cls,) if cls is not VehicleClass.UNKNOWN else classes_with_a_limit(rules, facts.axle_count)
    )
    unknown = _unknowns(facts, classes, rules)
    known: dict[str, Any] = {name: getattr(facts, name) for name in BUILD_FACTS}
    known[CLASS] = classes[0]
    names = list(unknown)
    best: Limit | None = None
    for values in itertools.product(*(unknown[n] for n in names)):
        world = {**known, **dict(zip(names, values, strict=True))}
        candidate = _limit_in(rules, facts, world, trailer)
        if best is None or candidate.limit_kg > best.limit_kg:
            best = candidate
    assert best is not None  # product() of no factors yields one empty reading
    decisive: dict[str, Any] = {}
    for name in names:
        flipped = dict(best.world)
        alternatives = [v for v in unknown[name] if v != best.world[name]]
        lower = False
        for alt in alternatives:
            flipped[name] = alt
            lower |= _limit_in(rules, facts, flipped, trailer).limit_kg < best.limit_kg
        if lower:
            value = best.world[name]
            decisive[name] = value.value if isinstance(value, VehicleClass) else value
    return best, decisive


def _axle_groups(
    spacings: tuple[int, ...], table: AxleTable, twin_steer_below_mm: int
) -> tuple[list[list[int]], int]:
    """Axle indexes grouped (tandem, tridem) and how many leading groups are steering axles.

    The front axle is a single steering axle; with a first spacing below the twin-steer
    threshold the second one is too (twin steer is two single axles, never a tandem).
    """
    groups: list[list[int]] = [[0]]
    steer = 1
    for i, mm in enumerate(spacings, start=1):
        if mm < table.group_spacing_below_mm and i > steer:
            groups[-1].append(i)
        elif i == 1 and mm < twin_steer_below_mm:
            groups.append([i])
            steer = 2
        else:
            groups.append([i])
    return groups, steer


def _axle_row_fits(
    r: AxleLimitRow, group: list[int], steer: bool, widest: int | None, facts: VehicleFacts
) -> bool:
    return (
        r.group_axles == len(group)
        and (r.first_axle is None or r.first_axle == steer)
        and (widest is None or r.min_spacing_mm is None or widest >= r.min_spacing_mm)
        and (widest is None or r.below_spacing_mm is None or widest < r.below_spacing_mm)
        # a fact not known may hold (lenient); a fact known otherwise excludes the row
        and all(getattr(facts, name) in (None, value) for name, value in r.when)
    )


def _axle_sum_cap(
    facts: VehicleFacts, table: AxleTable, twin_steer_below_mm: int
) -> tuple[int | None, list[dict[str, Any]], Text | None]:
    """Sum of the axle / axle-group limits (Order 62 Art. 3 para. 2 (3)) and the groups.

    Axles closer than ``group_spacing_below_mm`` form a group (not the steering axles). Where
    several rows fit a group (tyres, drive axle not known) the highest limit is used. ``None``
    when it cannot be computed.
    """
    spacings = facts.axle_spacings_mm
    if not spacings:
        return None, [], ("axle-sum cap not applied: no spacings", "无轴距，未按轴荷之和核定")
    groups, steer_groups = _axle_groups(spacings, table, twin_steer_below_mm)
    total = 0
    described: list[dict[str, Any]] = []
    for index, group in enumerate(groups):
        inner = [spacings[i - 1] for i in group[1:]]
        widest = max(inner, default=None)
        fits = [
            r for r in table.rows if _axle_row_fits(r, group, index < steer_groups, widest, facts)
        ]
        if not fits:
            return (
                None,
                [],
                (
                    f"axle-sum cap not applied: no row for axles {[a + 1 for a in group]}",
                    "轴组无对应限值，未按轴荷之和核定",
                ),
            )
        row = max(fits, key=lambda r: r.limit_kg)
        load = sum(facts.axle_loads_kg[a] for a in group)
        total += row.limit_kg
        described.append(
            {
                "axles": [a + 1 for a in group],
                "load_kg": load,
                "limit_kg": row.limit_kg,
                "rule": row.id,
            }
        )
    return total, described, None


# --- tolerance -------------------------------------------------------------------------------


def _pct_of(limit_kg: int, pct: Decimal) -> int:
    return int((Decimal(limit_kg) * pct / 100).to_integral_value(rounding=ROUND_CEILING))


def tolerance(
    limit_kg: int, rules: Rules, device: DeviceFacts | None
) -> tuple[int | None, str, Text | None]:
    """(tolerance kg or ``None``, policy as recorded, why it cannot be computed)."""
    policy = rules.tolerance
    if policy.kind == "none":
        return 0, "none", None
    if policy.kind == "percent":
        assert policy.pct is not None
        return _pct_of(limit_kg, policy.pct), f"percent:{policy.pct.normalize():f}", None
    if policy.kind == "absolute":
        assert policy.kg is not None
        return policy.kg, f"absolute:{policy.kg}", None
    cls = device.accuracy_class if device else None
    if cls is None:
        return (
            None,
            "accuracy_class:?",
            (
                "the scale's accuracy class is not known (tolerance policy accuracy_class)",
                "衡器准确度等级未知，无法确定允差",
            ),
        )
    mpe = rules.accuracy_mpe_pct.get(cls.strip())
    if mpe is None:
        return (
            None,
            f"accuracy_class:{cls}",
            (
                f"accuracy class {cls!r} has no MPE in the rule table",
                f"准确度等级{cls}在规则表中无最大允许误差",
            ),
        )
    return _pct_of(limit_kg, mpe), f"accuracy_class:{cls.strip()}={mpe.normalize():f}%", None


def check_device(rules: Rules, device: DeviceFacts) -> list[str]:
    """What is missing or wrong in a scale's facts for these rules (for start-up and
    ``check-config``); empty when the verdicts of this scale can be complete."""
    name = f"scale {device.scale_id!r}" if device.scale_id else "scale"
    problems: list[str] = []
    if rules.tolerance.kind == "accuracy_class":
        known = ", ".join(sorted(rules.accuracy_mpe_pct, key=Decimal))
        if device.accuracy_class is None:
            problems.append(
                f"{name}: no accuracy class, but [legal] tolerance_policy = 'accuracy_class' "
                f"needs one ({known})"
            )
        elif device.accuracy_class.strip() not in rules.accuracy_mpe_pct:
            problems.append(
                f"{name}: accuracy class {device.accuracy_class!r} is not in the rule table "
                f"(known: {known})"
            )
    if device.certificate_valid_until is None:
        problems.append(f"{name}: no verification certificate expiry date; it cannot be checked")
    return problems


def _pct_words(value: str) -> str:
    """A percentage with two decimals ("5" → "5.00"); more only when the value has more."""
    number = Decimal(value.rstrip("%"))
    exact = number.quantize(Decimal("0.01"))
    return f"{exact:f}" if exact == number else f"{number.normalize():f}"


def _policy_words(policy: str) -> Text:
    kind, _, value = policy.partition(":")
    if kind == "none":
        return "no tolerance", "无允差"
    if kind == "percent":
        return f"{_pct_words(value)} % of the limit", f"限值的{_pct_words(value)}%"
    if kind == "absolute":
        return f"fixed {value} kg", f"固定{value}千克"
    cls, _, pct = value.partition("=")
    return (
        f"accuracy class {cls}: {_pct_words(pct)} % of the limit",
        f"准确度等级{cls}：限值的{_pct_words(pct)}%",
    )


# --- the verdict -----------------------------------------------------------------------------


def _undetermined_causes(
    facts: VehicleFacts, at: datetime, device: DeviceFacts | None
) -> list[Text]:
    causes: list[Text] = []
    if facts.axle_count < 2:
        causes.append((f"only {facts.axle_count} axle(s) weighed", f"仅称得{facts.axle_count}个轴"))
    causes.extend(_FLAG_WORDS.get(f, (f.value, f.value)) for f in sorted(facts.flags))
    if device is not None:
        lo, hi = device.min_speed_kmh, device.max_speed_kmh
        if lo is not None or hi is not None:
            span = f"{lo if lo is not None else 0:g}–{hi if hi is not None else '∞'}"
            speed = facts.speed_kmh
            if speed is None:
                causes.append(
                    (
                        f"speed not measured; the scale is approved for {span} km/h",
                        f"无车速，衡器允许车速{span}km/h",
                    )
                )
            elif (lo is not None and speed < lo) or (hi is not None and speed > hi):
                causes.append(
                    (
                        f"speed {speed:g} km/h outside the scale's approved {span} km/h",
                        f"车速{speed:g}km/h超出衡器允许范围{span}km/h",
                    )
                )
        until = device.certificate_valid_until
        if until is not None and at.date() > until:
            causes.append(
                (
                    f"verification certificate expired on {until.isoformat()}",
                    f"检定证书已于{until.isoformat()}到期",
                )
            )
    return causes


def _over_pct(over_kg: int, limit_kg: int) -> float:
    pct = (Decimal(over_kg) * 100 / Decimal(limit_kg)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP
    )
    return float(pct)


def _assumption_text(decisive: Mapping[str, Any]) -> Text:
    en: list[str] = []
    zh: list[str] = []
    for name, value in decisive.items():
        if name == CLASS:
            cls = VehicleClass(value)
            en.append(f"class not known, assumed {_CLASS_WORDS[cls][0]}")
            zh.append(f"车型未知，按{_CLASS_WORDS[cls][1]}计")
        else:
            label_en, label_zh = _LABELS[name]
            en.append(f"{label_en} not known, assumed {'yes' if value else 'no'}")
            zh.append(f"{label_zh}未知，按{'是' if value else '否'}计")
    if not en:
        return "", ""
    return (
        "; " + "; ".join(en) + " (the higher limit: never accuse on ambiguity)",
        "；" + "；".join(zh) + "（取较高限值，存疑不认定）",
    )


def _pct(value: float) -> str:
    return f"{value:.2f}"


def _within_words(over: int, pct: str) -> Text:
    """The words of a ``within_limit`` verdict."""
    if over < 0:
        return f"{-over} kg under the limit: within the limit", "未超限"
    if over == 0:
        return "at the limit: within the limit", "恰为限值，未超限"
    return (
        f"{over} kg ({pct} %) over the limit, within the tolerance: not found over the limit "
        "for now",
        f"超出限值{over}千克（{pct}%），在允差内，暂不认定超限",
    )


def _exemption(
    over_text: Text,
    gross: int,
    tol: int,
    rules: Rules,
    permits: list[Permit],
    at: datetime,
    details: dict[str, Any],
) -> Text | None:
    """The words of an ``exempt`` verdict (a covering permit, or a registry-marked Art. 3 ¶2 (五)
    vehicle), recorded in ``details``; ``None`` when nothing exempts it."""
    over_en, over_zh = over_text
    covering = [p for p in permits if p.covers(at, gross, tol)]
    permit = max(covering, key=lambda p: (p.max_gross_kg, p.permit_id), default=None)
    if permit is not None:
        details["permit"] = permit.to_dict()
        pid = permit.permit_id or permit.plate
        return (
            f"{over_en}, covered by permit {pid} (max {permit.max_gross_kg} kg): exempt",
            f"{over_zh}，持有效超限运输许可{pid}（最大{permit.max_gross_kg}千克），免于认定",
        )
    special = details.get("gb1589_special")
    if special is None:
        return None
    en_kind, zh_kind = GB1589_SPECIAL[special]
    art_en, art_zh = cite(rules.registry_rules.gb1589_special_source)
    details["exempt_rule"] = rules.registry_rules.gb1589_special_id
    return (
        f"{over_en}; registered as a GB 1589-compliant {en_kind}: not an over-limit "
        f"transport vehicle ({art_en}), for review",
        f"{over_zh}；登记为符合GB1589的{zh_kind}，依{art_zh}不认定为超限运输车辆，待审核",
    )


def _decide(
    gross: int,
    limit: int,
    tol: int,
    rules: Rules,
    *,
    permits: list[Permit],
    at: datetime,
    details: dict[str, Any],
) -> tuple[VerdictStatus, Text]:
    """Step 5: the status (DESIGN §3) and its words; records the permit used in ``details``.

    The station does not decide (认定) a violation nor impose a 警告: an outcome above the
    tolerance is a preliminary finding for the reviewing officer (行政处罚法 Art. 41).
    """
    over = gross - limit
    pct = _pct(_over_pct(over, limit))
    if gross <= limit + tol:
        return VerdictStatus.WITHIN_LIMIT, _within_words(over, pct)
    beyond = gross - limit - tol
    over_en = f"{over} kg ({pct} %) over the limit, {beyond} kg beyond limit + tolerance"
    over_zh = f"超出限值{over}千克（{pct}%），超出限值与允差之和{beyond}千克"
    exempt = _exemption((over_en, over_zh), gross, tol, rules, permits, at, details)
    if exempt is not None:
        return VerdictStatus.EXEMPT, exempt
    band = rules.warning_band.max_excess_kg
    if over <= band:
        status = VerdictStatus.WARNING
        art_en, art_zh = cite(rules.warning_band.source)
        out_en = (
            f"{over_en}, not more than {band} kg: preliminary finding: a warning case of "
            f"{art_en} ({rules.warning_band.id}), for review"
        )
        out_zh = (
            f"{over_zh}，未超过{band}千克：属{art_zh.removeprefix(ORDER62_NAME)}警告情形，待审核"
        )
    else:
        status = VerdictStatus.OVERLOADED
        out_en = f"{over_en}: preliminary finding: over the limit, for review"
        out_zh = f"{over_zh}：初判超限，待审核"
    valid = [p for p in permits if p.valid_at(at)]
    if valid:
        top = max(p.max_gross_kg for p in valid)
        details["permit_not_covering"] = [p.to_dict() for p in valid]
        out_en += f" (a permit is in force but allows only {top} kg)"
        out_zh += f"（许可有效但最大仅{top}千克）"
    return status, (out_en, out_zh)


@dataclass(frozen=True)
class _Vehicle:
    """What every verdict on one vehicle says and records, whatever its status."""

    cls: VehicleClass
    class_source: str
    head: Text  # "3-axle truck (why), gross N kg"
    watch: Text  # the watch-list note; ("", "") when the plate is not on it
    watch_hit: bool
    details: dict[str, Any]
    facts_source: str  # registry | lane | declared | assumed
    facts_note: Text  # where the facts came from; ("", "") when nothing to say


@dataclass(frozen=True)
class _Limits:
    """Steps 3 and 4 for a vehicle of 2 axles or more."""

    found: Limit
    decisive: dict[str, Any]
    limit_kg: int  # after the axle-sum cap
    tolerance_kg: int | None
    policy: str


def judge(
    facts: VehicleFacts,
    rules: Rules,
    at: datetime,
    *,
    device: DeviceFacts | None = None,
    permits: Iterable[Permit] = (),
    watchlist: Iterable[WatchEntry] = (),
    vehicles: Iterable[RegisteredVehicle] = (),
    registry_version: str = "",
) -> Verdict:
    """The verdict for one vehicle.

    ``at``: the (timezone-aware) measurement time; permits and the certificate are checked
    against it. ``device``: the scale that weighed it (speed range, certificate, accuracy class);
    ``None`` skips those checks (the ``judge`` command). ``permits`` / ``watchlist`` /
    ``vehicles`` (the vehicle registry, of version ``registry_version``): entries for any plates
    (the stores' lists, or only this plate's); matched on :func:`normalize_plate` of
    ``facts.plate``. A registry entry's facts replace the lenient assumptions.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidFactsError(f"measurement time {at.isoformat()} has no UTC offset")
    plate_key = normalize_plate(facts.plate) if facts.plate else None
    entry = next((v for v in vehicles if plate_key and v.key == plate_key), None)
    facts, source, note = _with_registry(facts, entry, registry_version)
    vehicle = _vehicle(facts, rules, plate_key, watchlist, source, note)
    if entry is not None and source == "registry" and entry.gb1589_special:
        vehicle.details["gb1589_special"] = entry.gb1589_special
    causes = _undetermined_causes(facts, at, device)
    lawless = rules.no_limit(facts.axle_count, vehicle.cls)
    if lawless is not None:
        causes.append(_no_limit_cause(facts.axle_count, vehicle.cls, lawless))
    limits = None
    if facts.axle_count >= 2 and lawless is None:
        licence = entry if source == "registry" and entry and entry.category else None
        limits = _limits(facts, rules, vehicle, device, causes, licence)
    if causes or limits is None or limits.tolerance_kg is None:
        policy = tolerance(0, rules, device)[1] if limits is None else limits.policy
        rule = lawless.id if lawless is not None else None
        return _undetermined(vehicle, rules, limits, policy, causes, rule)
    mine = [p for p in permits if plate_key and p.key == plate_key]
    return _judged(facts.gross_kg, vehicle, rules, limits, mine, at)


def _with_registry(
    facts: VehicleFacts, entry: RegisteredVehicle | None, version: str
) -> tuple[VehicleFacts, str, Text]:
    """The facts with the registry entry's build facts, where it has one that fits the weighing;
    the facts source (registry | lane | declared | assumed) and what the verdict says of it."""
    if entry is None or entry.axle_count != facts.axle_count:
        source = "assumed"
        if facts.declared_class is not VehicleClass.UNKNOWN:
            source = facts.class_source if facts.class_source in _WHO else "declared"
        elif facts.class_source == "declared" and any(
            getattr(facts, name) is not None
            for name in (*BUILD_FACTS, "single_tyre_non_drive_axles")
        ):
            source = "declared"
        if entry is None:
            return facts, source, ("", "")
        return (
            facts,
            source,
            (
                f"; the vehicle registry (version {version}) lists {entry.plate} with "
                f"{entry.axle_count} axles, {facts.axle_count} weighed: its facts not used",
                f"；车辆登记库（版本{version}）中{entry.plate}为{entry.axle_count}轴，"
                f"实测{facts.axle_count}轴，未采用登记参数",
            ),
        )
    merged = replace(facts, **entry.build_facts())
    return (
        merged,
        "registry",
        (
            f"; facts from the vehicle registry, version {version}",
            f"；车辆参数来自车辆登记库，版本{version}",
        ),
    )


def _no_limit_cause(axles: int, cls: VehicleClass, row: NoLimitRow) -> Text:
    """Why a vehicle the law has no limit for is not judged (never invent a row)."""
    en_cls, zh_cls = _CLASS_WORDS[cls]
    return (
        f"Order 62 Art. 3 ¶1 gives no limit for a {axles}-axle {en_cls} ({row.id}; items (7) "
        "and (8) are for combinations only): for manual review",
        f"{ORDER62_NAME}第三条第一款未规定{axles}轴{zh_cls}的限定标准（第（七）、（八）项仅适用于"
        "汽车列车），待人工审核",
    )


def _vehicle(
    facts: VehicleFacts,
    rules: Rules,
    plate_key: str | None,
    watchlist: Iterable[WatchEntry],
    facts_source: str,
    facts_note: Text,
) -> _Vehicle:
    """Step 2 (the class) and the watch-list, both recorded in the details."""
    watch = next((w for w in watchlist if plate_key and w.key == plate_key), None)
    details: dict[str, Any] = {}
    watch_text: Text = ("", "")
    if watch is not None:
        details["watchlist"] = watch.to_dict()
        watch_text = (
            f"; plate {facts.plate} is on the watch-list",
            f"；车牌{facts.plate}在布控名单中",
        )
    cls, class_source, class_why = classify(facts, rules)
    details["class_reason"] = class_why[0]
    axles, gross = facts.axle_count, facts.gross_kg
    only = classes_with_a_limit(rules, axles)
    if cls is VehicleClass.UNKNOWN and len(only) == 1:
        en_only, zh_only = _CLASS_WORDS[only[0]]
        class_why = (
            f"{class_why[0]}; the law's only row for {axles} axles is a {en_only}",
            f"{class_why[1]}；法规对{axles}轴仅规定{zh_only}",
        )
    head = (
        f"{axles}-axle {_CLASS_WORDS[cls][0]} ({class_why[0]}), gross {gross} kg",
        f"{axles}轴{_CLASS_WORDS[cls][1]}（{class_why[1]}），总质量{gross}千克",
    )
    return _Vehicle(
        cls, class_source, head, watch_text, watch is not None, details, facts_source, facts_note
    )


def _licence_limit(rules: Rules, entry: RegisteredVehicle) -> Limit:
    """Art. 3 ¶2 (四): a tractor, agricultural vehicle or low-speed truck is held to its
    行驶证 mass instead of the table."""
    reg = rules.registry_rules
    assert entry.rated_gross_kg is not None  # the registry refuses a category without it
    row = LimitRow(
        id=reg.licence_mass_id,
        min_axles=entry.axle_count,
        max_axles=entry.axle_count,
        vehicle_class="any",
        limit_kg=entry.rated_gross_kg,
        source=reg.licence_mass_source,
    )
    return Limit(entry.rated_gross_kg, row, row, (), {})


def _limits(
    facts: VehicleFacts,
    rules: Rules,
    vehicle: _Vehicle,
    device: DeviceFacts | None,
    causes: list[Text],
    licence: RegisteredVehicle | None = None,
) -> _Limits:
    """Steps 3 and 4: the limit (with the axle-sum cap) and the tolerance, recorded in the
    details; what makes them unusable is added to ``causes``."""
    details = vehicle.details
    if licence is not None:
        found, decisive = _licence_limit(rules, licence), dict[str, Any]()
        details["category"] = licence.category
    else:
        found, decisive = gross_limit(facts, rules, vehicle.cls)
    details["source"] = found.row.source
    details["cite"] = cite(found.row.source)[1]
    if found.row is not found.base:
        details["replaces"] = found.base.id
    details["adjustments"] = [
        {"id": a.id, "delta_kg": kg, "source": a.source} for a, kg in found.adjustments
    ]
    if decisive:
        details["assumed"] = dict(decisive)
    limit = found.limit_kg
    if rules.axle_table is not None and licence is None:
        twin = rules.class_inference.twin_steer_below_mm
        limit = _apply_axle_sum_cap(facts, rules.axle_table, twin, limit, details)
    if limit <= 0:
        causes.append(("the adjusted limit is not positive", "核定限值不为正"))
    tol, policy, tol_problem = tolerance(limit, rules, device)
    if tol_problem:
        causes.append(tol_problem)
    return _Limits(found, decisive, limit, tol, policy)


def _apply_axle_sum_cap(
    facts: VehicleFacts, table: AxleTable, twin: int, limit_kg: int, details: dict[str, Any]
) -> int:
    """The limit lowered to the sum of the axle limits where that is lower (recorded as an
    adjustment); the axle groups and why the cap was not applied go into ``details``."""
    cap, groups, cap_note = _axle_sum_cap(facts, table, twin)
    details["axle_groups"] = groups
    if cap_note:
        details["axle_sum_note"] = cap_note[0]
    if cap is None or cap >= limit_kg:
        return limit_kg
    details["adjustments"].append(
        {
            "id": "order62-art3-p2-3-axle-sum",
            "delta_kg": cap - limit_kg,
            "source": AXLE_SUM_SOURCE,
        }
    )
    return cap


def _undetermined(
    vehicle: _Vehicle,
    rules: Rules,
    limits: _Limits | None,
    policy: str,
    causes: list[Text],
    rule_id: str | None = None,
) -> Verdict:
    """The verdict when the vehicle cannot be judged (step 1, a class the law has no limit
    for, or no usable limit/tolerance)."""
    limit = limits.limit_kg if limits is not None else None
    tol = limits.tolerance_kg if limits is not None else None
    rule = rule_id or (limits.found.row.id if limits is not None else "undetermined")
    cause_en = "; ".join(c[0] for c in causes)
    cause_zh = "；".join(c[1] for c in causes)
    vehicle.details["undetermined_causes"] = [c[0] for c in causes]
    limit_en = f", limit {limit} kg ({rule})" if limit else ""
    limit_zh = f"，限值{limit}千克（{rule}）" if limit else ""
    head_en, head_zh = vehicle.head
    return _verdict(
        VerdictStatus.UNDETERMINED,
        vehicle,
        rules,
        limit_kg=limit,
        tolerance_kg=tol,
        rule=rule,
        policy=policy,
        text=(
            f"{head_en}{limit_en}: not judged: {cause_en}",
            f"{head_zh}{limit_zh}：不予认定：{cause_zh}",
        ),
    )


def _judged(
    gross: int,
    vehicle: _Vehicle,
    rules: Rules,
    limits: _Limits,
    permits: list[Permit],
    at: datetime,
) -> Verdict:
    """Step 5 and the verdict's words: limit and the item it comes from, adjustments,
    tolerance, outcome, assumptions."""
    limit, rule, policy = limits.limit_kg, limits.found.row.id, limits.policy
    tol = limits.tolerance_kg
    assert tol is not None
    details = vehicle.details
    adj_en = "".join(f" {a['delta_kg']:+d} kg {a['id']}" for a in details["adjustments"])
    adj_zh = "".join(f" {a['delta_kg']:+d}千克 {a['id']}" for a in details["adjustments"])
    pol_en, pol_zh = _policy_words(policy)
    art_en, art_zh = cite(limits.found.row.source)
    head_en, head_zh = vehicle.head
    body_en = (
        f"{head_en}, limit {limit} kg ({art_en}, {rule}{adj_en}), tolerance {tol} kg ({pol_en})"
    )
    body_zh = f"{head_zh}，限值{limit}千克（{art_zh}，{rule}{adj_zh}），允差{tol}千克（{pol_zh}）"
    status, (out_en, out_zh) = _decide(
        gross, limit, tol, rules, permits=permits, at=at, details=details
    )
    assume_en, assume_zh = _assumption_text(limits.decisive)
    over = gross - limit
    return _verdict(
        status,
        vehicle,
        rules,
        limit_kg=limit,
        tolerance_kg=tol,
        over_kg=over,
        over_pct=_over_pct(over, limit),
        rule=rule,
        policy=policy,
        text=(f"{body_en}: {out_en}{assume_en}", f"{body_zh}：{out_zh}{assume_zh}"),
    )


def _verdict(
    status: VerdictStatus,
    vehicle: _Vehicle,
    rules: Rules,
    *,
    limit_kg: int | None,
    tolerance_kg: int | None,
    rule: str,
    policy: str,
    text: Text,
    over_kg: int | None = None,
    over_pct: float | None = None,
) -> Verdict:
    """The verdict with what every status records alike (class, details, facts source,
    watch-list); ``text`` is (English, Chinese) before the facts and watch-list notes. No
    ``over_kg`` / ``over_pct``: undetermined."""
    return Verdict(
        status,
        limit_kg=limit_kg,
        tolerance_kg=tolerance_kg,
        over_kg=over_kg,
        over_pct=over_pct,
        rule=rule,
        explanation=f"{text[0]}{vehicle.facts_note[0]}{vehicle.watch[0]}",
        explanation_zh=f"{text[1]}{vehicle.facts_note[1]}{vehicle.watch[1]}",
        tolerance_policy=policy,
        vehicle_class=vehicle.cls,
        class_source=vehicle.class_source,
        details=vehicle.details,
        watchlist_hit=vehicle.watch_hit,
        rules_version=rules.version,
        facts_source=vehicle.facts_source,
    )
