"""The one alarm producer: an alarm is queued in the outbox as the message the platform gets.

Every part of the station that raises an alarm (the supervisor, retention, the clock monitor)
calls :func:`raise_alarm` inside its own write transaction, so the alarm commits with whatever
caused it and survives a restart. The row's payload is the final ``roadside.alarm.v1`` document
(``docs/schema/alarm.v1.json``); the uplink sends it unchanged and the platform acknowledges it
by its ``alarm_id``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from agent.store import outbox
from agent.store.integrity import canonical_json

ALARM_SCHEMA = "roadside.alarm.v1"


def alarm_id_for(station_id: str, at: datetime) -> str:
    """``{station}-A{YYYYMMDDhhmmss}-{8 hex}``: unique without a counter (docs/uplink.md §3.3)."""
    return f"{station_id}-A{at.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"


def raise_alarm(
    conn: sqlite3.Connection,
    *,
    station_id: str,
    kind: str,
    at: datetime,
    message: str,
    details: Mapping[str, Any] | None = None,
) -> str:
    """Queue one alarm (outbox priority 0) in the caller's write transaction.

    Returns its ``alarm_id``. Raises ``ValueError`` for an empty ``kind`` or ``station_id``.
    """
    if not kind or not station_id:
        raise ValueError("an alarm needs a kind and the station id")
    alarm_id = alarm_id_for(station_id, at)
    raised_at = at.isoformat(timespec="milliseconds")
    doc: dict[str, Any] = {
        "schema": ALARM_SCHEMA,
        "alarm_id": alarm_id,
        "station_id": station_id,
        "kind": kind,
        "message": message,
        "details": dict(details or {}),
        "raised_at": raised_at,
    }
    outbox.enqueue(
        conn,
        kind="alarm",
        ref=alarm_id,
        priority=outbox.Priority.ALARM,
        created_at=raised_at,
        payload=canonical_json(doc).decode(),
    )
    return alarm_id
