"""The simulated twin of a Hikvision ITS camera: it pushes ISAPI ANPR events over real HTTP.

:func:`build_anpr_push` writes the request a camera in *HTTP listening* mode sends (the layout
drawn in :mod:`drivers.camera.isapi`: ``anpr.xml`` first, then ``detectionPicture.jpg`` and
``licensePlatePicture.jpg``, ``multipart/form-data``); :func:`post_anpr_push` sends it with
``http.client`` like the camera's embedded client (one connection per event, no
authentication). :class:`SimulatedIsapiAnprCamera` (``type = "isapi-anpr-simulated"``) is the
driver with such a camera attached: a named thread watches the simulated road
(:mod:`drivers.traffic`) and pushes each truck's photo and plate to the driver's own listener
on loopback as it passes, so the station runs the same HTTP path as with a real camera.
"""

from __future__ import annotations

import http.client
import logging
import threading
import uuid
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from pydantic import Field

from drivers import traffic
from drivers.camera.isapi import IsapiAnprCamera, IsapiAnprCameraConfig
from drivers.clock import Clock

log = logging.getLogger(__name__)

NAMESPACE = "http://www.isapi.org/ver20/XMLSchema"


def anpr_xml(
    plate: str,
    *,
    at: datetime,
    confidence_pct: int = 98,
    color: str = "yellow",
    lane: int = 1,
    char_pct: list[int] | None = None,
    event_type: str = "ANPR",
    plate_rect: tuple[int, int, int, int] | None = None,
) -> bytes:
    """An ``EventNotificationAlert`` as the camera writes it (fields of the developer guide)."""
    believe = ",".join(str(v) for v in (char_pct or [])) if char_pct else ""
    rect = ""
    if plate_rect is not None:
        x, y, w, h = plate_rect
        rect = f"<plateRect><X>{x}</X><Y>{y}</Y><width>{w}</width><height>{h}</height></plateRect>"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<EventNotificationAlert version="2.0" xmlns="{NAMESPACE}">\n'
        f"<ipAddress>192.168.1.64</ipAddress><portNo>80</portNo><protocol>HTTP</protocol>\n"
        f"<macAddress>00:00:5e:00:53:01</macAddress><channelID>1</channelID>\n"
        f"<dateTime>{at.isoformat(timespec='milliseconds')}</dateTime>\n"
        f"<activePostCount>1</activePostCount><eventType>{event_type}</eventType>\n"
        f"<eventState>active</eventState><eventDescription>ANPR</eventDescription>\n"
        f"<ANPR><country>0</country><licensePlate>{escape(plate)}</licensePlate>"
        f"<line>{lane}</line><direction>forward</direction>"
        f"<confidenceLevel>{confidence_pct}</confidenceLevel><plateType>unknown</plateType>"
        f"<plateColor>{color}</plateColor>"
        + (f"<plateCharBelieve>{believe}</plateCharBelieve>" if believe else "")
        + "<vehicleType>truck</vehicleType><pictureInfoList>"
        f"<pictureInfo><fileName>detectionPicture.jpg</fileName><type>detectionPicture</type>"
        f"<dataType>0</dataType>{rect}</pictureInfo>"
        "<pictureInfo><fileName>licensePlatePicture.jpg</fileName>"
        "<type>licensePlatePicture</type><dataType>0</dataType></pictureInfo>"
        f"</pictureInfoList></ANPR>\n<UUID>{uuid.uuid4()}</UUID><picNum>2</picNum>\n"
        "</EventNotificationAlert>\n"
    ).encode()


def build_anpr_push(
    xml: bytes, pictures: dict[str, bytes], boundary: str = "MIME_boundary"
) -> tuple[bytes, str]:
    """The multipart body and its Content-Type: ``anpr.xml`` first, then each picture."""
    crlf = b"\r\n"
    out = bytearray()
    parts = [("anpr.xml", "application/xml", xml)]
    parts += [(name, "image/jpeg", data) for name, data in pictures.items()]
    for name, ctype, data in parts:
        out += b"--" + boundary.encode() + crlf
        out += f'Content-Disposition: form-data; name="{name}"; filename="{name}"'.encode() + crlf
        out += f"Content-Type: {ctype}".encode() + crlf
        out += f"Content-Length: {len(data)}".encode() + crlf + crlf
        out += data + crlf
    out += b"--" + boundary.encode() + b"--" + crlf
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def post_anpr_push(url: str, body: bytes, content_type: str, timeout_s: float = 5.0) -> int:
    """POST one push to ``url`` (the camera's HTTP listening target); the HTTP status."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s
    )
    try:
        conn.request("POST", parts.path or "/", body, {"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class SimulatedIsapiAnprCameraConfig(IsapiAnprCameraConfig):
    listen_host: str = Field(default="127.0.0.1", description="loopback: the twin is local")
    listen_port: int = Field(default=0, ge=0, le=65535, description="0: any free port")
    road: str = Field(default="default", description="simulated road whose trucks it sees")
    confidence_pct: int = Field(
        default=97, ge=0, le=100, description="the confidence the twin's on-board reader reports"
    )
    poll_s: float = Field(default=0.05, gt=0, le=1, description="how often it looks at the road")
    time_source: Literal["received", "camera"] = Field(
        default="camera",
        description="frame time: the twin's clock is the station's, so its dateTime is exact",
    )


class SimulatedIsapiAnprCamera(IsapiAnprCamera):
    """The ISAPI driver with a simulated ITS camera pushing the simulated road's trucks to it."""

    Config = SimulatedIsapiAnprCameraConfig
    config: SimulatedIsapiAnprCameraConfig

    def __init__(
        self, config: SimulatedIsapiAnprCameraConfig, clock: Clock | None = None, lane: int = 1
    ):
        super().__init__(config, clock, lane)
        self.pushed = 0
        self._stop = threading.Event()
        self._twin = threading.Thread(target=self._run, name=f"twin-{config.id}", daemon=True)

    def start(self) -> SimulatedIsapiAnprCamera:
        super().start()
        if not self._twin.is_alive() and not self._stop.is_set():
            self._twin.start()
        return self

    def _run(self) -> None:
        seen: set[int] = set()
        while not self._stop.wait(self.config.poll_s):
            try:
                truck = traffic.road(self.config.road).truck_at(self.lane, self.clock.now(), 1.0)
                if truck is None or truck.number in seen:
                    continue
                seen.add(truck.number)
                jpeg = truck.photo.read_bytes()
                xml = anpr_xml(
                    truck.plate,
                    at=truck.passed_at,
                    confidence_pct=self.config.confidence_pct,
                    color=truck.plate_color,
                    lane=self.lane,
                )
                body, ctype = build_anpr_push(xml, {"detectionPicture.jpg": jpeg})
                post_anpr_push(self.url, body, ctype)
                self.pushed += 1
            except Exception:  # a twin that dies silently would look like a camera fault
                log.exception("simulated ITS camera %s: push failed", self.id)

    def _shutdown_internal(self) -> None:
        self._stop.set()
        if self._twin.is_alive():
            self._twin.join(timeout=5)
        super()._shutdown_internal()
