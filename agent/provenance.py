"""Where a record was taken and with what device: the site and the scale's metrology.

行政处罚法 Art. 41 wants electronic evidence from devices that passed 法制和技术审核 at published
locations, so every record names both (DESIGN §4a):

- ``site`` comes from ``[station.site]`` (:class:`SiteConfig`): site name, road code, stake
  (桩号, ``K3926+300``), direction, WGS-84 latitude/longitude, the public notice reference;
- ``device`` comes from the lane's ``[lanes.scale]``: the verification (verifying body, date,
  certificate and its expiry), the type approval, the approved speed range (the scale's own
  ``min_speed_kmh`` / ``max_speed_kmh``, which the verdict also uses) and the reference of the
  site's legal and technical review.

Absent facts are ``null``, never guessed: an unconfigured site is a ``site`` whose fields are
all ``null``. Both are legally relevant parameters under the audit log's change control
(:meth:`agent.station.supervisor.Station._legal_parameters`).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.scale.base import ScaleConfig

#: A stake (桩号) as posted on Chinese roads: ``K`` kilometres ``+`` three-digit metres.
STAKE_PATTERN = r"^K\d{1,5}\+\d{3}(\.\d{1,3})?$"

# China's extreme points (WGS-84), rounded outwards: Zengmu Ansha 3.85° N (lat 3.8), Mohe 53.56° N,
# Pamir 73.50° E, the Heilong/Wusuli confluence 135.08° E. A bounding box: it catches swapped or
# mistyped coordinates (lat/lon exchanged, a missing digit, the sign of the western hemisphere),
# not every point outside the border.
CHINA_LAT = (3.8, 53.6)
CHINA_LON = (73.4, 135.1)

SITE_FIELDS = ("name", "road", "stake", "direction", "lat", "lon", "notice")


class SiteConfig(BaseModel):
    """``[station.site]``: the published enforcement site the records are taken at."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None,
        min_length=1,
        description="site name as published, e.g. G312 丹徒段非现场治超点",
    )
    road: str | None = Field(
        default=None, min_length=1, description="road code (路线编号), e.g. G312, S338"
    )
    stake: str | None = Field(
        default=None,
        description="stake number (桩号) in K…+… form, e.g. K1234+500 (kilometre + metres)",
    )
    direction: str | None = Field(
        default=None, min_length=1, description="direction of travel weighed, e.g. 上行 / 下行"
    )
    lat: float | None = Field(
        default=None,
        description="latitude, WGS-84 decimal degrees (inside China: 3.8 to 53.6)",
    )
    lon: float | None = Field(
        default=None,
        description="longitude, WGS-84 decimal degrees (inside China: 73.4 to 135.1)",
    )
    notice: str | None = Field(
        default=None,
        min_length=1,
        description="reference of the site's public notice (公告), e.g. 镇交执公告〔2026〕12号",
    )

    @field_validator("stake")
    @classmethod
    def _stake_form(cls, v: str | None) -> str | None:
        if v is not None and not re.match(STAKE_PATTERN, v):
            raise ValueError(
                "a stake is written K<km>+<metres> with three digits of metres, e.g. K1234+500"
            )
        return v

    @field_validator("lat")
    @classmethod
    def _lat_in_china(cls, v: float | None) -> float | None:
        return _inside("latitude", v, CHINA_LAT)

    @field_validator("lon")
    @classmethod
    def _lon_in_china(cls, v: float | None) -> float | None:
        return _inside("longitude", v, CHINA_LON)


def _inside(what: str, v: float | None, bounds: tuple[float, float]) -> float | None:
    if v is not None and not bounds[0] <= v <= bounds[1]:
        raise ValueError(
            f"{what} {v} is outside China ({bounds[0]} to {bounds[1]} degrees, WGS-84); "
            "are lat and lon swapped?"
        )
    return v


def site_facts(site: SiteConfig | None) -> dict[str, Any]:
    """The record's and the heartbeat's ``site``: every field, ``None`` where not configured."""
    if site is None:
        return dict.fromkeys(SITE_FIELDS)
    return {name: getattr(site, name) for name in SITE_FIELDS}


def _iso(d: date | None) -> str | None:
    return d.isoformat() if d else None


def metrology_keys() -> tuple[str, ...]:
    """The keys :func:`metrology_facts` adds to ``device`` (``null`` when not known)."""
    return ("verified_by", "verified_on", "type_approval", "approved_speed_kmh", "review_ref")


def metrology_facts(scale: ScaleConfig) -> dict[str, Any]:
    """The verification and review facts of a scale that :func:`build_record` adds to
    ``device`` (beside scale id, accuracy class, certificate and its expiry)."""
    return {
        "verified_by": scale.verified_by,
        "verified_on": _iso(scale.verified_on),
        "type_approval": scale.type_approval,
        "approved_speed_kmh": [scale.min_speed_kmh, scale.max_speed_kmh],
        "review_ref": scale.review_ref,
    }
