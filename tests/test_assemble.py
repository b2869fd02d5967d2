"""Matching plate reads and photos to weighings: every way it can go wrong is flagged."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from agent.domain import Frame, PlateRead, VehicleWeighing
from agent.pipeline.assemble import (
    AMBIGUOUS_PLATE,
    FRONT_REAR_DIFFER,
    NO_IMAGE,
    NO_PLATE,
    PLATE_WITHOUT_WEIGHING,
    AssembleConfig,
    Assembler,
)

T0 = datetime(2026, 11, 26, 10, 30, 0, tzinfo=timezone(timedelta(hours=8)))
CONFIG = AssembleConfig(window_before_s=3, window_after_s=3, settle_s=5, ambiguity_margin_s=0.5)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def weighing(seconds: float, lane: int = 1, gross_kg: int = 49000) -> VehicleWeighing:
    return VehicleWeighing(lane, at(seconds), (7000, 42000), gross_kg, "wim-1")


def read(text: str, seconds: float, position: str = "front", conf: float = 0.95) -> PlateRead:
    return PlateRead(text, "yellow", conf, position=position, read_at=at(seconds), camera_id="c")


def frame(seconds: float, role: str = "front") -> Frame:
    return Frame(f"cam-{role}", role, 1, at(seconds), b"\xff\xd8jpeg")


def test_front_and_rear_plates_and_photos_join_their_weighing() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_reads(1, [read("苏L12345", -0.4), read("苏L12345", -0.2)], [frame(-0.4), frame(-0.2)])
    a.add_reads(1, [read("苏L6789挂", 1.5, "rear")], [frame(1.5, "rear")])
    assert a.ready(at(7.9)) == []  # window + settle not over yet
    (event,) = a.ready(at(8.0))
    assert [(p.position, p.text) for p in event.plates] == [
        ("front", "苏L12345"),
        ("rear", "苏L6789挂"),
    ]
    assert [f.captured_at for f in event.frames] == [at(-0.4), at(-0.2), at(1.5)]
    assert event.match_flags == frozenset()
    assert a.pending == 0


def test_truck_without_readable_plate_is_flagged_not_stopped() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_reads(1, [], [frame(0.1)])  # photo taken, reader found nothing
    (event,) = a.ready(at(10))
    assert event.plates == () and event.match_flags == {NO_PLATE}
    assert len(event.frames) == 1


def test_missing_camera_gives_no_plate_and_no_image() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    (event,) = a.ready(at(10))
    assert event.match_flags == {NO_PLATE, NO_IMAGE}


def test_two_trucks_close_together_each_get_their_own_plate() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_weighing(weighing(2.0))
    a.add_reads(1, [read("苏L11111", -0.1), read("苏L22222", 2.1)], [frame(-0.1), frame(2.1)])
    first, second = a.ready(at(20))
    assert [p.text for p in first.plates] == ["苏L11111"]
    assert [p.text for p in second.plates] == ["苏L22222"]
    assert [f.captured_at for f in first.frames] == [at(-0.1)]
    assert not first.match_flags and not second.match_flags


def test_read_between_two_trucks_goes_to_neither_and_both_are_flagged() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_weighing(weighing(2.0))
    a.add_reads(1, [read("苏L33333", 1.0)], [frame(1.0)])  # 1.0 s from each
    first, second = a.ready(at(20))
    for event in (first, second):
        assert event.plates == () and event.frames == ()
        assert AMBIGUOUS_PLATE in event.match_flags and NO_PLATE in event.match_flags


def test_disagreeing_reads_leave_the_plate_unread() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_reads(1, [read("皖A67168", 0.0, conf=0.8), read("皖A67169", 0.2, conf=0.8)])
    (event,) = a.ready(at(10))
    assert event.plates == ()
    assert event.match_flags >= {AMBIGUOUS_PLATE, NO_PLATE}


def test_majority_of_frames_wins_the_vote() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_reads(1, [read("皖A67168", 0.0), read("皖A67168", 0.1), read("皖A67169", 0.2, conf=0.5)])
    (event,) = a.ready(at(10))
    assert [p.text for p in event.plates] == ["皖A67168"]
    assert event.match_flags == {NO_IMAGE}


def test_lanes_are_never_mixed() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0, lane=1))
    a.add_reads(2, [read("苏L44444", 0.0)])
    (event,) = a.ready(at(10))
    assert event.match_flags >= {NO_PLATE}
    (passage,) = a.take_unmatched(at(10))
    assert passage.lane == 2 and [p.text for p in passage.plates] == ["苏L44444"]
    assert passage.match_flags == {PLATE_WITHOUT_WEIGHING}


def test_plate_without_weighing_is_reported_once_its_window_has_passed() -> None:
    a = Assembler(CONFIG)
    a.add_reads(1, [read("苏L55555", 0.0), read("苏L55555", 0.3)], [frame(0.1)])
    assert a.take_unmatched(at(7.9)) == []  # a weighing measured up to 3 s later may still come
    (passage,) = a.take_unmatched(at(8.3))
    assert [p.text for p in passage.plates] == ["苏L55555"]
    assert len(passage.frames) == 1
    assert a.take_unmatched(at(100)) == []


def test_late_weighing_still_claims_earlier_reads() -> None:
    a = Assembler(CONFIG)
    a.add_reads(1, [read("苏L66666", 0.0)])
    assert a.take_unmatched(at(4)) == []
    a.add_weighing(weighing(2.5))  # the controller reported the truck late
    (event,) = a.ready(at(11))
    assert [p.text for p in event.plates] == ["苏L66666"]


def test_flush_completes_everything_pending() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_weighing(weighing(30))
    a.add_reads(1, [read("苏L77777", 30.2)])
    events = a.flush()
    assert [e.weighing.measured_at for e in events] == [at(0), at(30)]
    assert [p.text for p in events[1].plates] == ["苏L77777"]


def test_read_without_time_is_refused() -> None:
    a = Assembler(CONFIG)
    with pytest.raises(ValueError, match="no read_at"):
        a.add_reads(1, [PlateRead("苏L12345", "blue", 0.9)])


def test_reads_take_the_lane_they_were_added_for() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0, lane=3))
    a.add_reads(3, [read("苏L88888", 0.0)])  # the read itself carries lane 0
    (event,) = a.ready(at(10))
    assert event.plates[0].lane == 3


# -- front and rear, cameras (issue 14) ---------------------------------------------------------


def test_front_and_rear_plates_that_differ_are_both_kept_and_flagged() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_reads(1, [read("苏L12345", -0.2), read("苏L12346", 1.5, "rear")])
    (event,) = a.ready(at(10))
    assert [(p.position, p.text) for p in event.plates] == [
        ("front", "苏L12345"),
        ("rear", "苏L12346"),
    ]
    assert FRONT_REAR_DIFFER in event.match_flags


def test_trailer_rear_plate_differing_from_the_front_is_not_flagged() -> None:
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_reads(1, [read("苏L12345", -0.2), read("苏L6789挂", 1.5, "rear")])
    (event,) = a.ready(at(10))
    assert FRONT_REAR_DIFFER not in event.match_flags and len(event.plates) == 2


def test_two_cameras_naming_different_plates_leave_the_position_unread() -> None:
    # the station's camera (two frames) against an ITS camera's on-board reading (one frame):
    # the frames of one camera must not outvote another camera
    own = [replace(read("苏L12345", -0.2 + 0.1 * k), camera_id="cam-front") for k in range(2)]
    its = [replace(read("苏L12845", -0.1), camera_id="its-front")]
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_reads(1, own + its)
    (event,) = a.ready(at(10))
    assert event.plates == () and {AMBIGUOUS_PLATE, NO_PLATE} <= event.match_flags


def test_two_cameras_agreeing_give_one_plate() -> None:
    own = [replace(read("苏L12345", -0.2), camera_id="cam-front")]
    its = [replace(read("苏L12345", -0.1, conf=0.9), camera_id="its-front")]
    a = Assembler(CONFIG)
    a.add_weighing(weighing(0))
    a.add_reads(1, own + its)
    (event,) = a.ready(at(10))
    assert [p.text for p in event.plates] == ["苏L12345"] and event.match_flags == {NO_IMAGE}
