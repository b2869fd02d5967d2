"""Uplink to the platform over MQTT 5 (placeholder config until the uplink lands)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class UplinkConfig(BaseModel):
    """``[uplink]``: the MQTT broker of the platform. ``host``, ``port``, ``prefix`` are fixed."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker TCP port")
    prefix: str = Field(default="roadside/v1", description="topic prefix; root is prefix/station")
