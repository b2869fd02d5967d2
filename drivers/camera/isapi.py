"""Hikvision ITS / ANPR cameras: the ISAPI ANPR event push ("HTTP listening"), as a camera.

Most roadside checkpoints already run ITS cameras that read the plate on board. In the camera's
*HTTP listening* settings (Configuration → Event → Alarm Server / HTTP Listening) the technician
enters the station's address, port and URL path; the camera then POSTs one request per vehicle
(Hikvision *Intelligent Security API (ANPR) Developer Guide*, "Receive Alarm/Event in Listening
Mode"; XML_EventNotificationAlert_ANPR)::

    POST /ISAPI/anpr HTTP/1.1
    Content-Type: multipart/form-data; boundary=<b>

    --<b>
    Content-Disposition: form-data; name="anpr.xml"; filename="anpr.xml"
    Content-Type: application/xml

    <EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
      <ipAddress/> <macAddress/> <channelID/> <dateTime>2026-11-26T10:30:15.120+08:00</dateTime>
      <eventType>ANPR</eventType> <eventState>active</eventState> <UUID/>
      <ANPR>
        <licensePlate>苏L12345</licensePlate> <line>1</line> (lane)
        <confidenceLevel>98</confidenceLevel> (percent) <plateColor>yellow</plateColor>
        <plateCharBelieve>99,98,…</plateCharBelieve> (percent per character, when sent)
        <pictureInfoList><pictureInfo><fileName>detectionPicture.jpg</fileName>
          <type>detectionPicture</type><plateRect><X/><Y/><width/><height/></plateRect>
        </pictureInfo> <pictureInfo>… licensePlatePicture.jpg …</pictureInfo></pictureInfoList>
      </ANPR>
    </EventNotificationAlert>
    --<b>
    Content-Disposition: form-data; name="detectionPicture.jpg"; filename="detectionPicture.jpg"
    Content-Type: image/jpeg

    <JPEG bytes>
    --<b>  … licensePlatePicture.jpg (the plate crop) …
    --<b>--

Some firmware posts the bare XML (``Content-Type: application/xml``) without pictures; the
event's heartbeat (``eventType`` videoloss, ``eventState`` inactive) comes the same way. Quirks
survived here: the XML namespace varies between firmware (elements are matched by local name);
``plateRect`` is kept as sent (pixels on the documented models; others are said to send
0..1000 of the picture, which is not converted here: the box is informative only); a plate the
camera could not read arrives as ``无车牌`` or ``unknown``. The push carries no authentication,
so the listener should be bound to the camera network's interface only. Other events (the
heartbeat) are answered 200 and ignored; a request that is not a valid event gets 400 and is
logged with its first bytes, never a crash.

Each ANPR event becomes one :class:`~drivers.camera.base.Frame` (the detection picture, with the
camera's reading in ``Frame.onboard``) in a ring buffer; a weighing's capture takes the frames
nearest its time that no earlier capture took (each push is one vehicle). The frame's time is
the station's clock when the push arrived (``time_source = "received"``, default: the camera's
clock is not known to be synchronised) or the camera's ``dateTime`` (``"camera"``).
"""

from __future__ import annotations

import collections
import email.parser
import email.policy
import logging
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from pydantic import Field

from drivers.camera.base import Camera, CameraConfig, CameraError, Frame, OnboardRead
from drivers.clock import Clock

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 << 20  # two 5 MP JPEGs and the XML, with room to spare
_COLOURS = {
    "blue": "blue",
    "yellow": "yellow",
    "white": "white",
    "black": "black",
    "green": "green",
    "yellowgreen": "green",  # large new-energy vehicles: yellow-green plates
    "greenyellow": "green",
}
_NO_PLATE = frozenset({"", "无车牌", "unknown", "车牌", "无牌"})


class IsapiEventError(ValueError):
    """A push that is not a usable ANPR event (says what was expected and what came)."""


class NotAnprEventError(IsapiEventError):
    """A well-formed event of another type (the camera's heartbeat): acknowledged, ignored."""


@dataclass(frozen=True)
class AnprEvent:
    """One ANPR push as the camera sent it."""

    plate: str  # "" when the camera could not read one
    color: str
    confidence: float  # 0..1
    char_confidences: tuple[float, ...]
    lane: int | None
    camera_time: datetime | None
    uuid: str
    device: str  # ip / mac, for the log
    pictures: dict[str, bytes] = field(default_factory=dict)  # file name -> bytes
    plate_rects: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    @property
    def detection_picture(self) -> bytes | None:
        for name in ("detectionPicture.jpg", "vehiclePicture.jpg"):
            if name in self.pictures:
                return self.pictures[name]
        jpegs = [v for k, v in self.pictures.items() if k != "licensePlatePicture.jpg"]
        return jpegs[0] if jpegs else None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(node: ET.Element, name: str) -> ET.Element | None:
    for child in node:
        if _local(child.tag) == name:
            return child
    return None


def _text(node: ET.Element | None, name: str) -> str:
    child = None if node is None else _find(node, name)
    return (child.text or "").strip() if child is not None else ""


def _percent(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError as err:
        raise IsapiEventError(f"{what}: expected a percentage, got {value!r}") from err
    if not 0 <= number <= 100:
        raise IsapiEventError(f"{what}: expected 0..100, got {value!r}")
    return number / 100


def parse_anpr_xml(xml: bytes) -> AnprEvent:
    """The ANPR event in an ``EventNotificationAlert`` document (pictures not included).

    Raises :class:`IsapiEventError` for anything else (another event type, a DOCTYPE, bad XML).
    """
    if b"<!DOCTYPE" in xml[:4096].upper() or b"<!ENTITY" in xml.upper():
        raise IsapiEventError("ANPR event XML with a DOCTYPE or ENTITY: refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise IsapiEventError(f"ANPR event: not well-formed XML ({err})") from err
    if _local(root.tag) != "EventNotificationAlert":
        raise IsapiEventError(f"expected <EventNotificationAlert>, got <{_local(root.tag)}>")
    event_type = _text(root, "eventType")
    if event_type != "ANPR":
        raise NotAnprEventError(f"expected eventType ANPR, got {event_type!r}")
    anpr = _find(root, "ANPR")
    if anpr is None:
        raise IsapiEventError("ANPR event without an <ANPR> block")
    plate = _text(anpr, "licensePlate")
    plate = "" if plate in _NO_PLATE else plate
    confidence = _percent(_text(anpr, "confidenceLevel") or "0", "confidenceLevel")
    believe = [v for v in _text(anpr, "plateCharBelieve").split(",") if v.strip()]
    chars = tuple(_percent(v.strip(), "plateCharBelieve") for v in believe)
    stamp = _text(root, "dateTime")
    try:
        camera_time = datetime.fromisoformat(stamp) if stamp else None
    except ValueError as err:
        raise IsapiEventError(f"dateTime: expected ISO 8601, got {stamp!r}") from err
    if camera_time is not None and camera_time.tzinfo is None:
        camera_time = None  # a time without its offset is not evidence of anything
    line = _text(anpr, "line")
    return AnprEvent(
        plate=plate,
        color=_COLOURS.get(_text(anpr, "plateColor").lower(), "unknown"),
        confidence=confidence,
        char_confidences=chars,
        lane=int(line) if line.isdigit() else None,
        camera_time=camera_time,
        uuid=_text(root, "UUID"),
        device=" ".join(v for v in (_text(root, "ipAddress"), _text(root, "macAddress")) if v),
        plate_rects=_plate_rects(anpr),
    )


def _plate_rects(anpr: ET.Element) -> dict[str, tuple[int, int, int, int]]:
    out: dict[str, tuple[int, int, int, int]] = {}
    pictures = _find(anpr, "pictureInfoList")
    for info in [] if pictures is None else list(pictures):
        rect = _find(info, "plateRect")
        name = _text(info, "fileName")
        if rect is None or not name:
            continue
        try:
            x, y = (
                int(_text(rect, "X") or _text(rect, "x")),
                int(_text(rect, "Y") or _text(rect, "y")),
            )
            w, h = int(_text(rect, "width")), int(_text(rect, "height"))
        except ValueError:
            continue
        if w > 0 and h > 0:
            out[name] = (x, y, x + w, y + h)
    return out


def parse_anpr_push(body: bytes, content_type: str) -> AnprEvent:
    """An ANPR push: ``multipart/form-data`` (the XML part and the JPEG parts) or bare XML."""
    if len(body) > MAX_BODY_BYTES:
        raise IsapiEventError(f"push of {len(body)} bytes, more than {MAX_BODY_BYTES}")
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in ("application/xml", "text/xml"):
        return parse_anpr_xml(body)
    if kind != "multipart/form-data":
        raise IsapiEventError(
            f"expected multipart/form-data or application/xml, got {content_type!r}"
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise IsapiEventError("multipart push without parts (boundary missing?)")
    xml: bytes | None = None
    pictures: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_filename() or part.get_param("name", header="content-disposition") or ""
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if str(name).lower().endswith(".xml") or part.get_content_type() in (
            "application/xml",
            "text/xml",
        ):
            xml = payload
        elif payload[:2] == b"\xff\xd8":
            pictures[str(name)] = payload
    if xml is None:
        raise IsapiEventError("multipart push without the anpr.xml part")
    event = parse_anpr_xml(xml)
    return AnprEvent(**{**event.__dict__, "pictures": pictures})


class IsapiAnprCameraConfig(CameraConfig):
    listen_host: str = Field(
        default="0.0.0.0",
        description="address the HTTP listener binds to (the camera network's interface: the "
        "push carries no authentication)",
    )
    listen_port: int = Field(
        default=8099, ge=0, le=65535, description="TCP port the camera pushes to (0: any free)"
    )
    path: str = Field(
        default="/ISAPI/anpr", description="URL path entered in the camera's HTTP listening"
    )
    camera_lane: int | None = Field(
        default=None,
        description="only events whose <line> (lane) is this number; empty: every event",
    )
    time_source: Literal["received", "camera"] = Field(
        default="received",
        description="frame time: the station's clock when the push arrived, or the camera's "
        "dateTime (only with a synchronised camera clock)",
    )
    buffer_s: float = Field(default=30.0, gt=0, description="seconds of events kept")
    max_gap_s: float = Field(
        default=2.0, gt=0, description="events further than this from the trigger are not used"
    )
    capture_timeout_s: float = Field(
        default=1.0,
        ge=0,
        description="how long a capture waits for the camera's push when none is near yet",
    )


class IsapiAnprCamera(Camera):
    """An ITS camera that reads plates on board and pushes them (ISAPI ANPR, HTTP listening)."""

    Config = IsapiAnprCameraConfig
    config: IsapiAnprCameraConfig

    def __init__(self, config: IsapiAnprCameraConfig, clock: Clock | None = None, lane: int = 1):
        super().__init__(config, clock, lane)
        self._ring: collections.deque[Frame] = collections.deque(maxlen=512)
        self._lock = threading.Condition()
        self._taken: set[int] = set()  # id() of the frames in the ring already handed out
        self.received = 0  # ANPR events taken
        self.refused = 0  # pushes answered 400
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where the camera must push (the bound port, once started)."""
        port = self._server.server_address[1] if self._server else self.config.listen_port
        return f"http://{self.config.listen_host}:{port}{self.config.path}"

    def start(self) -> IsapiAnprCamera:
        """Start the HTTP listener thread (``camera-<id>``). Idempotent."""
        if self._server is not None or self._closed.is_set():
            return self
        handler = _handler_for(self)
        try:
            self._server = ThreadingHTTPServer(
                (self.config.listen_host, self.config.listen_port), handler
            )
        except OSError as err:
            raise CameraError(
                f"camera {self.id}: cannot listen on {self.config.listen_host}:"
                f"{self.config.listen_port} for ISAPI ANPR pushes: {err}"
            ) from err
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"camera-{self.id}", daemon=True
        )
        self._thread.start()
        self.health.state = "listening"
        log.info("camera %s: ISAPI ANPR listener at %s", self.id, self.url)
        return self

    def take_push(self, body: bytes, content_type: str, peer: str) -> None:
        """One push from the camera (the HTTP handler calls this); raises IsapiEventError."""
        event = parse_anpr_push(body, content_type)
        if self.config.camera_lane is not None and event.lane not in (
            None,
            self.config.camera_lane,
        ):
            return
        jpeg = event.detection_picture
        if jpeg is None:
            raise IsapiEventError(f"ANPR event {event.uuid or '?'} from {peer} has no picture")
        at = self.clock.now()
        if self.config.time_source == "camera" and event.camera_time is not None:
            at = event.camera_time
        onboard: tuple[OnboardRead, ...] = ()
        if event.plate:
            name = next((n for n, p in event.pictures.items() if p is jpeg), "")
            onboard = (
                OnboardRead(
                    event.plate,
                    event.color,
                    event.confidence,
                    event.char_confidences,
                    event.plate_rects.get(name),
                ),
            )
        frame = Frame(self.id, self.role, self.lane, at, jpeg, onboard=onboard)
        with self._lock:
            self._ring.append(frame)
            horizon = at - timedelta(seconds=self.config.buffer_s)
            while self._ring and self._ring[0].captured_at < horizon:
                self._ring.popleft()
            self.received += 1
            self._lock.notify_all()
        self.health.state = "ok"
        self.health.last_good_at = at

    def _capture_internal(self, at: datetime, count: int) -> list[Frame]:
        """The pushes near ``at`` that no earlier capture took. Each push is one vehicle's
        reading: handed out once, so the next weighing waits for its own push (which may still
        be on its way) instead of getting the previous vehicle's again; the assemble stage
        gives each frame to the weighing nearest in time."""
        gap = timedelta(seconds=self.config.max_gap_s)

        def near() -> list[Frame]:
            return [
                f for f in self._ring if abs(f.captured_at - at) <= gap and id(f) not in self._taken
            ]

        with self._lock:
            self._lock.wait_for(lambda: bool(near()), timeout=self.config.capture_timeout_s)
            found = sorted(near(), key=lambda f: abs(f.captured_at - at))[:count]
            self._taken.update(id(f) for f in found)
            live = {id(f) for f in self._ring}
            self._taken &= live
        return sorted(found, key=lambda f: f.captured_at)

    def _shutdown_internal(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _handler_for(camera: IsapiAnprCamera) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "roadside-agent-isapi"

        def do_POST(self) -> None:
            peer = self.client_address[0]
            length = int(self.headers.get("Content-Length") or 0)
            if self.path.split("?", 1)[0] != camera.config.path:
                self._answer(404, f"no listener at {self.path}")
                return
            if not 0 < length <= MAX_BODY_BYTES:
                self._answer(400, f"Content-Length {length}: expected 1..{MAX_BODY_BYTES}")
                return
            body = self.rfile.read(length)
            try:
                camera.take_push(body, self.headers.get("Content-Type", ""), peer)
            except NotAnprEventError as err:
                log.debug("camera %s: push from %s ignored: %s", camera.id, peer, err)
                self._answer(200, "OK")
                return
            except IsapiEventError as err:
                camera.refused += 1
                log.warning(
                    "camera %s: push from %s refused: %s (first bytes %r)",
                    camera.id,
                    peer,
                    err,
                    body[:80],
                )
                self._answer(400, str(err))
                return
            except Exception:  # never a dead listener
                log.exception("camera %s: push from %s failed", camera.id, peer)
                self._answer(500, "internal error")
                return
            self._answer(200, "OK")

        def _answer(self, status: int, text: str) -> None:
            data = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("camera %s: %s", camera.id, format % args)

    return Handler
