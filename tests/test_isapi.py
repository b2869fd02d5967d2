"""The Hikvision ITS camera source (ISAPI ANPR event push over HTTP): the parser on a push laid
out as the vendor's developer guide shows it, the listener over real loopback HTTP, the checks
the camera's on-board reading goes through, and the whole station with the simulated twin."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from platform_sim import PlatformSim

from agent.config import StationConfig, parse_config
from agent.station.supervisor import Station
from drivers.camera.base import Frame, OnboardRead
from drivers.camera.isapi import (
    IsapiAnprCamera,
    IsapiAnprCameraConfig,
    IsapiEventError,
    parse_anpr_push,
    parse_anpr_xml,
)
from drivers.camera.isapi_twin import anpr_xml, build_anpr_push, post_anpr_push
from drivers.clock import ManualClock
from drivers.plate import PLATE_READERS
from drivers.plate.base import ONBOARD_SUFFIX, PlateReaderConfig, onboard_plate_reads

from .conftest import DEMO_CONFIG, Mosquitto, uplink_config, wait_until
from .test_end_to_end import run_station, station_rows

__all__ = ["run_station"]  # the station fixture, shared with test_end_to_end

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"  # a JPEG's start and end markers
T0 = datetime(2026, 11, 26, 10, 30, 15, 120000, tzinfo=timezone(timedelta(hours=8)))

# A push as the ISAPI (ANPR) developer guide lays it out (XML_EventNotificationAlert_ANPR, HTTP
# listening): the XML part named anpr.xml, then the pictures, CRLF line ends. Written out by
# hand here, not by the twin's builder, so that parser and fixture share no code.
GUIDE_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\r\n'
    '<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">\r\n'
    "<ipAddress>192.168.1.64</ipAddress>\r\n<portNo>80</portNo>\r\n<protocol>HTTP</protocol>\r\n"
    "<macAddress>00:00:5e:00:53:01</macAddress>\r\n<channelID>1</channelID>\r\n"
    "<dateTime>2026-11-26T10:30:15.120+08:00</dateTime>\r\n"
    "<activePostCount>1</activePostCount>\r\n<eventType>ANPR</eventType>\r\n"
    "<eventState>active</eventState>\r\n<eventDescription>ANPR</eventDescription>\r\n"
    "<ANPR>\r\n<country>0</country>\r\n<licensePlate>苏L12345</licensePlate>\r\n"
    "<line>2</line>\r\n<direction>forward</direction>\r\n"
    "<confidenceLevel>96</confidenceLevel>\r\n<plateType>92TypeCivil</plateType>\r\n"
    "<plateColor>yellow</plateColor>\r\n<plateCharBelieve>99,98,97,99,99,95,96</plateCharBelieve>\r\n"
    "<vehicleType>truck</vehicleType>\r\n<pictureInfoList>\r\n<pictureInfo>\r\n"
    "<fileName>detectionPicture.jpg</fileName>\r\n<type>detectionPicture</type>\r\n"
    "<dataType>0</dataType>\r\n<plateRect><X>430</X><Y>275</Y><width>106</width>"
    "<height>35</height></plateRect>\r\n</pictureInfo>\r\n<pictureInfo>\r\n"
    "<fileName>licensePlatePicture.jpg</fileName>\r\n<type>licensePlatePicture</type>\r\n"
    "<dataType>0</dataType>\r\n</pictureInfo>\r\n</pictureInfoList>\r\n</ANPR>\r\n"
    "<UUID>5b3c7a4e-0000-4000-8000-000000000001</UUID>\r\n<picNum>2</picNum>\r\n"
    "</EventNotificationAlert>\r\n"
).encode()
GUIDE_PUSH = (
    b"--MIME_boundary\r\n"
    b'Content-Disposition: form-data; name="anpr.xml"; filename="anpr.xml"\r\n'
    b"Content-Type: application/xml\r\n"
    b"Content-Length: " + str(len(GUIDE_XML)).encode() + b"\r\n\r\n" + GUIDE_XML + b"\r\n"
    b"--MIME_boundary\r\n"
    b'Content-Disposition: form-data; name="detectionPicture.jpg"; '
    b'filename="detectionPicture.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n" + JPEG + b"\r\n"
    b"--MIME_boundary\r\n"
    b'Content-Disposition: form-data; name="licensePlatePicture.jpg"; '
    b'filename="licensePlatePicture.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n" + JPEG[:-2] + b"\x01\xff\xd9" + b"\r\n"
    b"--MIME_boundary--\r\n"
)
GUIDE_TYPE = "multipart/form-data; boundary=MIME_boundary"


# -- parser -------------------------------------------------------------------------------------


def test_push_laid_out_as_in_the_guide_is_parsed() -> None:
    event = parse_anpr_push(GUIDE_PUSH, GUIDE_TYPE)
    assert (event.plate, event.color, event.lane) == ("苏L12345", "yellow", 2)
    assert event.confidence == pytest.approx(0.96)
    assert event.char_confidences == pytest.approx((0.99, 0.98, 0.97, 0.99, 0.99, 0.95, 0.96))
    assert event.camera_time == T0
    assert event.detection_picture == JPEG
    assert set(event.pictures) == {"detectionPicture.jpg", "licensePlatePicture.jpg"}
    assert event.plate_rects["detectionPicture.jpg"] == (430, 275, 536, 310)


@pytest.mark.parametrize(
    ("body", "ctype", "message"),
    [
        (GUIDE_PUSH, "text/plain", "expected multipart/form-data"),
        (
            GUIDE_PUSH.replace(b"anpr.xml", b"other.bin").replace(b"n/xml", b"n/octet-stream"),
            GUIDE_TYPE,
            "without the anpr.xml",
        ),
        (b"<EventNotificationAlert><eventType>ANPR", "application/xml", "not well-formed"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><x/>', "application/xml", "DOCTYPE"),
        (GUIDE_XML.replace(b">96<", b">960<"), "application/xml", "expected 0..100"),
    ],
)
def test_bad_pushes_are_refused_with_a_reason(body: bytes, ctype: str, message: str) -> None:
    with pytest.raises(IsapiEventError, match=message):
        parse_anpr_push(body, ctype)


def test_unread_plate_and_time_without_offset() -> None:
    xml = GUIDE_XML.replace("苏L12345".encode(), "无车牌".encode()).replace(b"+08:00", b"")
    event = parse_anpr_xml(xml)
    assert event.plate == "" and event.camera_time is None


# -- the on-board reading's checks --------------------------------------------------------------


def _frame(*reads: OnboardRead, role: str = "front") -> Frame:
    return Frame("its-1", role, 1, T0, JPEG, onboard=reads)


def test_onboard_reading_becomes_a_plate_of_its_own_witness() -> None:
    (read,) = onboard_plate_reads(_frame(OnboardRead("苏L12345", "yellow", 0.96), role="rear"))
    assert read.text == "苏L12345" and read.position == "rear"
    assert read.camera_id == "its-1" + ONBOARD_SUFFIX and read.read_at == T0


@pytest.mark.parametrize(
    "onboard",
    [
        OnboardRead("苏L1234", "yellow", 0.99),  # impossible
        OnboardRead("沪A71017", "green", 0.99),  # a green plate needs 8 characters
        OnboardRead("苏L12345", "yellow", 0.99, (0.85, 1, 1, 1, 1, 1, 1)),  # province unsure
        OnboardRead("苏L12345", "yellow", 0.7),  # no per-character figures: the plate's counts
    ],
)
def test_onboard_readings_that_fail_the_checks_are_left_out(onboard: OnboardRead) -> None:
    assert onboard_plate_reads(_frame(onboard)) == []


# -- the listener over loopback HTTP ------------------------------------------------------------


@pytest.fixture
def its_camera() -> Iterator[IsapiAnprCamera]:
    clock = ManualClock(datetime(2026, 11, 26, 2, 30, tzinfo=UTC))
    cfg = IsapiAnprCameraConfig(
        type="isapi-anpr",
        id="its-1",
        listen_host="127.0.0.1",
        listen_port=0,
        capture_timeout_s=0,
    )
    cam = IsapiAnprCamera(cfg, clock, lane=1).start()
    yield cam
    cam.shutdown()
    cam.shutdown()  # idempotent


def _post(cam: IsapiAnprCamera, body: bytes, ctype: str) -> tuple[int, str]:
    host, port = "127.0.0.1", int(cam.url.split(":")[2].split("/")[0])
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("POST", cam.config.path, body, {"Content-Type": ctype})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_listener_takes_the_push_and_a_capture_returns_it(its_camera: IsapiAnprCamera) -> None:
    assert _post(its_camera, GUIDE_PUSH, GUIDE_TYPE)[0] == 200
    (frame,) = its_camera.capture(its_camera.clock.now(), 2)
    assert frame.jpeg == JPEG and frame.onboard[0].text == "苏L12345"
    assert frame.onboard[0].box == (430, 275, 536, 310)
    reader = PLATE_READERS.get("onboard")(PlateReaderConfig(type="onboard"))
    (plate,) = reader.read(frame)
    assert plate.text == "苏L12345" and plate.camera_id == "its-1/onboard"


def test_listener_refuses_garbage_and_keeps_listening(its_camera: IsapiAnprCamera) -> None:
    status, text = _post(its_camera, b"garbage", GUIDE_TYPE)
    assert status == 400 and "without parts" in text
    heartbeat = anpr_xml("", at=T0, event_type="videoloss")
    assert _post(its_camera, heartbeat, "application/xml")[0] == 200  # ignored, not refused
    assert its_camera.refused == 1 and its_camera.received == 0
    assert _post(its_camera, GUIDE_PUSH, GUIDE_TYPE)[0] == 200
    assert its_camera.received == 1


def test_frames_far_from_the_trigger_are_not_returned(its_camera: IsapiAnprCamera) -> None:
    assert _post(its_camera, GUIDE_PUSH, GUIDE_TYPE)[0] == 200
    assert its_camera.capture(its_camera.clock.now() + timedelta(seconds=5), 2) == []


def test_twin_builds_what_the_parser_reads(its_camera: IsapiAnprCamera) -> None:
    xml = anpr_xml("粤B6R678", at=T0, color="blue", char_pct=[99] * 7, confidence_pct=91)
    body, ctype = build_anpr_push(xml, {"detectionPicture.jpg": JPEG})
    assert post_anpr_push(its_camera.url, body, ctype) == 200
    (frame,) = its_camera.capture(its_camera.clock.now(), 1)
    assert frame.onboard == (OnboardRead("粤B6R678", "blue", 0.91, (0.99,) * 7, None),)


# -- the whole station with the simulated ITS camera --------------------------------------------


def test_station_records_carry_the_its_cameras_plates(
    broker: Mosquitto,
    make_sim: Callable[..., PlatformSim],
    run_station: Callable[[StationConfig], Station],
) -> None:
    n = 4
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port = \d+$", f"port = {broker.port}", text, count=1)
    text = re.sub(r"(?m)^vehicles_per_min = .*$", f"vehicles_per_min = 60\ncount = {n}", text)
    text = text.replace('type = "simulated"       #', 'type = "onboard"       #')
    text = text.replace('type = "replay"', 'type = "isapi-anpr-simulated"')
    text = re.sub(r'(?m)^mode = "road"$', 'road = "default"', text)
    text = text.replace("ambiguity_margin_s = 0.3", "ambiguity_margin_s = 0.01")
    cfg = parse_config(text, DEMO_CONFIG)
    make_sim(uplink_config(broker))
    st = run_station(cfg)
    wait_until(lambda: len(station_rows(st.data_dir)) >= n, 60, f"{n} records stored")
    records = [json.loads(r) for _, r, _ in station_rows(st.data_dir)]
    plated = [r for r in records if r["plates"]]
    assert len(plated) == n, [r["match_flags"] for r in records]
    for record in plated:
        assert record["images"], record["event_id"]
        assert record["plates"][0]["position"] == "front"


def test_each_push_is_handed_out_once(its_camera: IsapiAnprCamera) -> None:
    # two trucks 0.7 s apart: the second weighing must get its own push, not the first again
    clock = its_camera.clock
    assert isinstance(clock, ManualClock)
    first_at = clock.now()
    assert _post(its_camera, GUIDE_PUSH, GUIDE_TYPE)[0] == 200
    (first,) = its_camera.capture(first_at, 2)
    clock.advance(0.7)
    assert its_camera.capture(clock.now(), 2) == []  # its push has not come (no wait here)
    xml = GUIDE_XML.replace("苏L12345".encode(), "苏L67890".encode())
    body, ctype = build_anpr_push(xml, {"detectionPicture.jpg": JPEG})
    assert _post(its_camera, body, ctype)[0] == 200
    (second,) = its_camera.capture(clock.now(), 2)
    assert (first.onboard[0].text, second.onboard[0].text) == ("苏L12345", "苏L67890")
