"""The vehicle registry (``set-vehicles``): the store, and end to end through the platform.

The end-to-end test runs a real Mosquitto, the real station (demo config, simulated road) and
the platform simulator: the platform pushes the registry, and a truck whose registry facts
change its verdict arrives at the platform judged on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from platform_sim import PlatformSim

from agent.legal import VehicleFacts, judge, load_rules
from agent.legal.registry import VehicleListError
from agent.store.permits import PermitStoreError
from agent.store.vehicles import VEHICLES_FILE, VehicleRegistry

from .conftest import Mosquitto, wait_until
from .test_station_commands import STATION, simulated_station

TRUCK: dict[str, Any] = {"plate": "苏L12345", "axle_count": 6, "vehicle_class": "combination",
                         "tractor_drive_axles": 1, "articulated": True}  # fmt: skip


def test_a_list_replaces_the_old_one_and_survives_a_restart(tmp_path: Path) -> None:
    registry = VehicleRegistry(tmp_path)
    assert (registry.version, registry.count(), registry.vehicles_for("苏L12345")) == ("", 0, ())
    assert registry.replace([TRUCK], "v1") == 1
    (entry,) = registry.vehicles_for("苏l·12345")  # plates compare as the permit book's do
    assert entry.single_drive_axle is True
    again = VehicleRegistry(tmp_path)
    assert again.version == "v1" and again.vehicles_for("苏L12345") == (entry,)
    assert registry.replace([], "v2") == 0 and VehicleRegistry(tmp_path).count() == 0


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{**TRUCK, "axles": 6}], "unknown key(s) axles"),
        ([{"plate": "苏L12345"}], "missing axle_count, vehicle_class"),
        ([{**TRUCK, "vehicle_class": "bus"}], "vehicle_class must be truck or combination"),
        ([{**TRUCK, "vehicle_class": "truck"}], "a truck (货车) has no tractor"),
        ([{**TRUCK, "tractor_drive_axles": 6}], "tractor_drive_axles must be 1..5"),
        ([{**TRUCK, "air_suspension": "yes"}], "air_suspension must be true, false or null"),
        ([{**TRUCK, "category": "tractor"}], "needs rated_gross_kg"),
        ([{**TRUCK, "gb1589_special": "tanker"}], "gb1589_special 'tanker' is not one of"),
        ([TRUCK, {**TRUCK, "plate": "苏L 12345"}], "vehicles 0 and 1 are the same plate"),
        ({"vehicles": []}, "needs a list"),
    ],
)
def test_a_bad_list_changes_nothing_and_names_the_entry(
    tmp_path: Path, entries: Any, message: str
) -> None:
    registry = VehicleRegistry(tmp_path)
    registry.replace([TRUCK], "v1")
    before = (tmp_path / VEHICLES_FILE).read_bytes()
    with pytest.raises(VehicleListError) as err:
        registry.replace(entries, "v2")
    assert message in str(err.value)
    assert registry.version == "v1" and registry.count() == 1
    assert (tmp_path / VEHICLES_FILE).read_bytes() == before


def test_a_version_is_required(tmp_path: Path) -> None:
    with pytest.raises(VehicleListError, match="needs a version"):
        VehicleRegistry(tmp_path).replace([TRUCK], " ")


def test_a_damaged_stored_list_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / VEHICLES_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(PermitStoreError, match="not valid JSON"):
        VehicleRegistry(tmp_path)


def test_registry_version_and_facts_reach_the_verdict_and_art3_p2(tmp_path: Path) -> None:
    from datetime import timedelta, timezone

    at = datetime(2026, 11, 26, 10, 0, tzinfo=timezone(timedelta(hours=8)))
    rules = load_rules()
    registry = VehicleRegistry(tmp_path)
    registry.replace(
        [
            TRUCK,
            {"plate": "苏A00001", "axle_count": 2, "vehicle_class": "truck",
             "category": "low_speed_truck", "rated_gross_kg": 4500},
            {"plate": "苏A00002", "axle_count": 2, "vehicle_class": "truck",
             "gb1589_special": "refrigerated"},
        ],
        "2026-11-26.3",
    )  # fmt: skip

    def verdict(plate: str, loads: tuple[int, ...]) -> Any:
        facts = VehicleFacts(loads, sum(loads), plate=plate, class_source="unknown")
        return judge(facts, rules, at, vehicles=registry.vehicles_for(plate),
                     registry_version=registry.version)  # fmt: skip

    six = (7000, 9000, 9000, 9000, 9000, 6000)  # 49 000 kg
    v = verdict("苏L12345", six)
    assert (v.limit_kg, v.rule, v.facts_source) == (46000, "order62-art3-8", "registry")
    assert v.status.value == "overloaded"  # 49 000 > 46 000 + 2 300
    assert "version 2026-11-26.3" in v.explanation
    unregistered = verdict("苏L99999", six)
    assert (unregistered.limit_kg, unregistered.status.value) == (49000, "within_limit")
    # a registry entry for a different build (5 axles weighed) is not used, and the verdict says so
    five = verdict("苏L12345", (7000, 9000, 9000, 9000, 9000))
    assert five.limit_kg == 43000 and five.facts_source == "assumed"
    assert "6 axles, 5 weighed: its facts not used" in five.explanation
    # Art. 3 ¶2 (四): a low-speed truck is held to its 行驶证 mass
    low = verdict("苏A00001", (2000, 3000))
    assert (low.limit_kg, low.rule) == (4500, "order62-art3-p2-4")
    assert "第三条第二款第（四）项" in low.explanation_zh
    # Art. 3 ¶2 (五): a GB 1589-compliant refrigerated truck is not an over-limit vehicle
    cold = verdict("苏A00002", (8000, 13000))
    assert cold.status.value == "exempt" and cold.details["gb1589_special"] == "refrigerated"
    assert "不认定为超限运输车辆，待审核" in cold.explanation_zh


def test_set_vehicles_through_the_platform_changes_a_trucks_verdict(
    tmp_path: Path, broker: Mosquitto, make_sim: Callable[..., PlatformSim]
) -> None:
    st, sim, plates = simulated_station(tmp_path, broker, make_sim, trucks=10, per_min=30)
    # every plate the road can show: a 6-axle tractor with a single drive axle (46 t, not 49 t)
    vehicles = [{**TRUCK, "plate": p} for p in plates]
    st.start()
    try:
        wait_until(lambda: bool(st.uplink and st.uplink.connected), 20, "the station online")
        bad = sim.command(STATION, "set-vehicles", {"version": "v0", "vehicles": [{"plate": 1}]})
        assert bad["error"]["code"] == "invalid" and "vehicle 0" in bad["error"]["message"]
        reply = sim.command(STATION, "set-vehicles", {"version": "v1", "vehicles": vehicles})
        assert reply.get("result") == {"vehicles": len(plates)}, reply
        assert st.vehicles.version == "v1"

        def registry_records() -> list[dict[str, Any]]:
            rows = sim.query("SELECT record_json FROM records")
            return [r for (j,) in rows if (r := json.loads(j))["verdict"].get("facts_source")
                    == "registry"]  # fmt: skip

        wait_until(lambda: bool(registry_records()), 90, "a record judged on registry facts")
    finally:
        st.stop(10)
    record = registry_records()[0]
    verdict, vehicle = record["verdict"], record["vehicle"]
    assert (verdict["limit_kg"], verdict["rule"]) == (46000, "order62-art3-8")
    assert "facts from the vehicle registry, version v1" in verdict["explanation"]
    # the same truck without the registry: 49 000 kg (a single drive axle is not assumed)
    loads, spacings = tuple(vehicle["axle_loads_kg"]), tuple(vehicle["axle_spacings_mm"])
    facts = VehicleFacts(loads, vehicle["gross_kg"], spacings, speed_kmh=vehicle["speed_kmh"])
    without = judge(facts, st.rules, datetime.fromisoformat(record["measured_at"]))
    assert without.limit_kg == 49000
    assert not sim.count("SELECT count(*) FROM rejected")


def test_the_documented_example_and_the_schema_agree_with_the_store(tmp_path: Path) -> None:
    import re

    from platform_sim import load_schema, validate

    doc = (Path(__file__).resolve().parents[1] / "docs" / "uplink.md").read_text("utf-8")
    section = doc[doc.index("### `set-vehicles`") :]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block is not None
    example = json.loads(block.group(1))
    schema = load_schema("set-vehicles.v1")
    assert validate(example, schema) == []
    assert VehicleRegistry(tmp_path).replace(example["vehicles"], example["version"]) == 1
    typo = {**example, "vehicles": [{**example["vehicles"][0], "air_suspensoin": True}]}
    assert validate(typo, schema)  # the schema refuses an unknown key, and so does the station
    with pytest.raises(VehicleListError, match="air_suspensoin"):
        VehicleRegistry(tmp_path).replace(typo["vehicles"], "x")
