"""The evidence package (DESIGN §4a): where, with which verified device, what is missing.

An officer must tell from the sealed record alone where it was taken, by which verified device,
and whether the evidence is complete; the platform must never mistake an incomplete violation for
a chargeable case.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.commands._common import EX_CONFIG
from agent.config import ConfigError, parse_config
from agent.domain import Frame, PlateRead, VehicleEvent, VehicleWeighing, Verdict, VerdictStatus
from agent.provenance import metrology_facts, site_facts
from agent.station.supervisor import Station
from agent.store.completeness import Expected, assess
from agent.store.record import RecordContext, build_record

from .crash_writer import make_verdict

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 26, 10, 30, 15, tzinfo=CST)

BASE = """\
[station]
id = "JS-ZJ-0001"

[station.site]
name = "G312 丹徒段非现场治超点"
road = "G312"
stake = "K1234+500"
direction = "上行"
lat = 32.1543
lon = 119.4521
notice = "镇交执公告〔2026〕12号"

[uplink]
host = "127.0.0.1"
port = 1883

[[lanes]]
number = 1
[lanes.scale]
type = "simulated"
id = "wim-1"
certificate = "JJG907-2026-001"
certificate_valid_until = 2027-05-31
verified_by = "江苏省计量科学研究院"
verified_on = 2026-05-31
type_approval = "2019F123-32"
review_ref = "苏交审〔2026〕7号"
min_speed_kmh = 5
max_speed_kmh = 100
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("station.toml"))
    return [p.format("station.toml") for p in info.value.problems]


# -- site and metrology in the config ----------------------------------------------------------


def test_site_and_metrology_parse() -> None:
    cfg = parse_config(BASE)
    assert site_facts(cfg.station.site) == {
        "name": "G312 丹徒段非现场治超点",
        "road": "G312",
        "stake": "K1234+500",
        "direction": "上行",
        "lat": 32.1543,
        "lon": 119.4521,
        "notice": "镇交执公告〔2026〕12号",
    }
    assert metrology_facts(cfg.lanes[0].scale) == {
        "verified_by": "江苏省计量科学研究院",
        "verified_on": "2026-05-31",
        "type_approval": "2019F123-32",
        "approved_speed_kmh": [5.0, 100.0],
        "review_ref": "苏交审〔2026〕7号",
    }


@pytest.mark.parametrize("stake", ["K1234-500", "1234+500", "K1234+50", "k12+300", "K+300"])
def test_a_stake_not_in_k_plus_form_is_refused_at_its_line(stake: str) -> None:
    lines = _problems(BASE.replace('"K1234+500"', f'"{stake}"'))
    assert len(lines) == 1
    assert lines[0].startswith(f"station.toml:7  station.site.stake  {stake!r} →"), lines
    assert "e.g. K1234+500" in lines[0]


def test_coordinates_outside_china_are_refused_swapped_ones_too() -> None:
    swapped = BASE.replace("lat = 32.1543", "lat = 119.4521").replace(
        "lon = 119.4521", "lon = 32.1543"
    )
    lines = _problems(swapped)
    assert [line.split("  ")[1] for line in lines] == ["station.site.lat", "station.site.lon"]
    assert lines[0].startswith("station.toml:9")
    assert "outside China (3.8 to 53.6" in lines[0] and "73.4 to 135.1" in lines[1]
    assert "swapped" in lines[0]


def test_check_config_exits_78_on_a_bad_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    path = tmp_path / "station.toml"
    path.write_text(BASE.replace("K1234+500", "K1234"), encoding="utf-8")
    assert main(["check-config", str(path)]) == EX_CONFIG
    out = capsys.readouterr()
    assert "station.site.stake" in out.out + out.err


def test_an_unconfigured_site_and_metrology_are_null_never_guessed() -> None:
    cfg = parse_config(re.sub(r"\[station\.site\].*?\n\n", "", BASE, flags=re.S))
    assert site_facts(cfg.station.site) == dict.fromkeys(
        ("name", "road", "stake", "direction", "lat", "lon", "notice")
    )
    plain = parse_config(BASE.split("verified_by", maxsplit=1)[0])
    facts = metrology_facts(plain.lanes[0].scale)
    assert facts["verified_by"] is None and facts["verified_on"] is None
    assert facts["type_approval"] is None and facts["review_ref"] is None


# -- completeness --------------------------------------------------------------------------------


def _verdict(status: VerdictStatus = VerdictStatus.OVERLOADED) -> Verdict:
    return make_verdict(status)


def _event(roles: tuple[str, ...] = ("front", "rear"), plate: bool = True) -> VehicleEvent:
    loads = (7100, 9800, 9700, 11200, 11300, 11000)
    weighing = VehicleWeighing(
        lane=1, measured_at=T0, axle_loads_kg=loads, gross_kg=sum(loads), scale_id="wim-1"
    )
    frames = tuple(
        Frame(f"cam-{r}", r, 1, T0, b"\xff\xd8" + r.encode() + b"\xff\xd9") for r in roles
    )
    plates = (PlateRead(text="苏L12345", color="yellow", confidence=0.97),) if plate else ()
    return VehicleEvent(weighing=weighing, plates=plates, frames=frames)


FRONT_REAR = Expected(("front", "rear"), (("cam-front", "front"), ("cam-rear", "rear")))


def _record(
    event: VehicleEvent,
    verdict: Verdict | None = None,
    *,
    videos: tuple[str, ...] = ("front", "rear"),
    expected: Expected = FRONT_REAR,
    **ctx_overrides: object,
) -> dict[str, object]:
    ctx_args: dict[str, object] = {
        "station_id": "JS-ZJ-0001",
        "scale_id": "wim-1",
        "certificate": "JJG907-2026-001",
        "certificate_valid_until": "2027-05-31",
        "clock_synchronized": True,
        "expected": expected,
    }
    ctx_args.update(ctx_overrides)
    images = [
        {"name": f"{f.role}.jpg", "role": f.role, "sha256": "0" * 64, "bytes": 4}
        for f in event.frames
    ]
    vids = [{"name": f"{r}.mjpeg", "role": r, "camera_id": f"cam-{r}"} for r in videos]
    return build_record(
        event,
        verdict or _verdict(),
        RecordContext(**ctx_args),  # type: ignore[arg-type]
        event_id="JS-ZJ-0001-20261126103015-000001",
        seq=1,
        images=images,
        videos=vids,
    )


def test_a_complete_violation_is_chargeable_and_still_reviewed() -> None:
    rec = _record(_event())
    assert rec["evidence"] == {
        "complete": True,
        "missing": [],
        "required": [
            "plate",
            "front_image",
            "rear_image",
            "side_image",
            "video",
            "clock_sync",
            "certificate",
        ],
        "chargeable": True,
        "details": [],
    }
    assert rec["verdict"]["review_required"] is True  # type: ignore[index]


def test_an_overloaded_truck_without_plate_stays_overloaded_but_is_never_chargeable() -> None:
    rec = _record(_event(plate=False))
    assert rec["verdict"]["status"] == "overloaded"  # type: ignore[index]
    assert rec["verdict"]["over_kg"] == 11100  # type: ignore[index]
    ev = rec["evidence"]
    assert ev["complete"] is False and ev["chargeable"] is False  # type: ignore[index]
    assert ev["missing"] == ["plate"]  # type: ignore[index]


def test_side_image_is_required_only_where_a_side_camera_is_configured() -> None:
    with_side = Expected(("front", "rear", "side"), FRONT_REAR.clip_cameras)
    assert _record(_event(), expected=with_side)["evidence"]["missing"] == ["side_image"]  # type: ignore[index]
    assert _record(_event(("front", "rear", "side")), expected=with_side)["evidence"][  # type: ignore[index]
        "complete"
    ]


def test_missing_clip_unsynced_clock_and_expired_certificate_are_each_named() -> None:
    rec = _record(
        _event(("front",)),
        videos=("front",),
        clock_synchronized=False,
        certificate_valid_until="2026-11-25",
    )
    ev = rec["evidence"]
    assert ev["missing"] == ["rear_image", "video", "clock_sync", "certificate"]  # type: ignore[index]
    assert "no clip from camera cam-rear (rear)" in " ".join(ev["details"])  # type: ignore[index]
    assert "expired on 2026-11-25" in " ".join(ev["details"])  # type: ignore[index]


def test_no_certificate_configured_is_missing_not_assumed() -> None:
    rec = _record(_event(), certificate="", certificate_valid_until="")
    assert rec["evidence"]["missing"] == ["certificate"]  # type: ignore[index]


def test_required_list_narrows_what_is_checked_and_passages_are_not_chargeable() -> None:
    rec = _record(
        _event(("front",), plate=False),
        _verdict(VerdictStatus.WITHIN_LIMIT),
        required=("front_image",),
        videos=(),
    )
    assert rec["evidence"]["complete"] is True  # type: ignore[index]
    assert rec["evidence"]["chargeable"] is False  # type: ignore[index]


def test_assess_with_no_clip_camera_names_video() -> None:
    ev = assess(
        required=["video"],
        status="overloaded",
        plates=[],
        image_roles=[],
        video_cameras=[],
        expected=Expected(("front",), ()),
        clock_synchronized=True,
        certificate="c",
        certificate_valid_until="2027-01-01",
        measured_on=date(2026, 1, 1),
    )
    assert ev["missing"] == ["video"] and "no camera" in ev["details"][0]


def test_record_carries_site_and_device_metrology() -> None:
    cfg = parse_config(BASE)
    rec = _record(
        _event(),
        site=site_facts(cfg.station.site),
        metrology=metrology_facts(cfg.lanes[0].scale),
    )
    assert rec["site"]["stake"] == "K1234+500"  # type: ignore[index]
    device = rec["device"]
    assert device["verified_by"] == "江苏省计量科学研究院"  # type: ignore[index]
    assert device["approved_speed_kmh"] == [5.0, 100.0]  # type: ignore[index]
    assert device["certificate"] == "JJG907-2026-001"  # type: ignore[index]
    bare = _record(_event())
    assert bare["site"] == dict.fromkeys(
        ("name", "road", "stake", "direction", "lat", "lon", "notice")
    )
    assert bare["device"]["verified_by"] is None  # type: ignore[index]


# -- change control --------------------------------------------------------------------------------


def _start_stop(cfg_text: str, data_dir: Path) -> Station:
    st = Station(parse_config(cfg_text.replace("port = 1883", "port = 1")), data_dir=data_dir)
    st.start()
    st.stop(5.0)
    return st


def test_a_metrology_or_site_change_is_an_audited_parameter_change(tmp_path: Path) -> None:
    from agent.store.db import Database

    _start_stop(BASE, tmp_path)
    changed = BASE.replace("verified_on = 2026-05-31", "verified_on = 2026-06-01").replace(
        "K1234+500", "K1234+600"
    )
    _start_stop(changed, tmp_path)
    db = Database(tmp_path / "station.db")
    try:
        entries = [json.loads(e) for (e,) in db.read().execute("SELECT entry_json FROM audit_log")]
        alarms = [
            json.loads(payload)
            for (payload,) in db.read().execute(
                "SELECT payload FROM outbox WHERE kind = 'alarm' ORDER BY id"
            )
        ]
    finally:
        db.close()
    last = {e["key"]: e for e in entries}
    assert last["metrology.lane1.verified_on"]["old"] == "2026-05-31"
    assert last["metrology.lane1.verified_on"]["new"] == "2026-06-01"
    assert last["site.stake"]["new"] == "K1234+600"
    assert last["metrology.lane1.review_ref"]["new"] == "苏交审〔2026〕7号"
    changed_keys = {a["details"]["key"] for a in alarms if a["kind"] == "parameter_change"}
    assert {"metrology.lane1.verified_on", "site.stake"} <= changed_keys


def test_station_record_and_heartbeat_health_carry_the_site(tmp_path: Path) -> None:
    text = BASE.replace("port = 1883", "port = 1").replace(
        'id = "wim-1"', 'id = "wim-1"\nvehicles_per_min = 600\ncount = 1'
    )
    stored: list[dict[str, object]] = []
    st = Station(parse_config(text), data_dir=tmp_path, on_stored=lambda s: stored.append(s.record))
    st.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while not stored and datetime.now(UTC) < deadline:
            st.wait(0.1)
        health = st.health()
    finally:
        st.stop(5.0)
    assert stored, "no record stored within 30 s"
    rec = stored[0]
    assert rec["site"]["notice"] == "镇交执公告〔2026〕12号"  # type: ignore[index]
    assert rec["device"]["type_approval"] == "2019F123-32"  # type: ignore[index]
    assert rec["evidence"]["complete"] is False  # no camera in this config  # type: ignore[index]
    assert {"front_image", "video"} <= set(rec["evidence"]["missing"])  # type: ignore[index]
    assert health["site"]["stake"] == "K1234+500"


def test_unknown_site_and_metrology_add_no_null_audit_entries(tmp_path: Path) -> None:
    """A station upgraded to this version without site or metrology keys logs no changes for
    facts it does not know (no alarm flood of null → null)."""
    from agent.store.db import Database

    bare = re.sub(r"\[station\.site\].*?\n\n", "", BASE, flags=re.S).split("verified_by")[0]
    _start_stop(bare, tmp_path)
    db = Database(tmp_path / "station.db")
    try:
        keys = [
            json.loads(e)["key"] for (e,) in db.read().execute("SELECT entry_json FROM audit_log")
        ]
    finally:
        db.close()
    assert not [k for k in keys if k.startswith("site.")]
    assert [k for k in keys if k.startswith("metrology.")] == ["metrology.lane1.approved_speed_kmh"]
