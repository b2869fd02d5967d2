"""The export page's evidence package (DESIGN §4a): clip player, site, device, completeness.

A Motion-JPEG clip plays in no browser's ``<video>``, and a package page opened from disk may not
fetch its neighbour files, so the page carries the clip's own JPEG frames (split by the signed
``frame_bytes``) and shows them in turn in an ``<img>`` at the clip's frame rate: what the officer
sees is the camera's frames, byte for byte. ``videos/{name}`` beside the page is the clip itself
(``ffplay -f mjpeg videos/front.mjpeg`` or VLC).
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime
from typing import Any

from drivers.camera.clip import split

Entry = tuple[dict[str, Any], bytes | None, str]


def _fps(clip: dict[str, Any]) -> float:
    try:
        span = (
            datetime.fromisoformat(clip["end"]) - datetime.fromisoformat(clip["start"])
        ).total_seconds()
    except (KeyError, TypeError, ValueError):
        return 5.0
    frames = int(clip.get("frames") or 1)
    return (frames - 1) / span if span > 0 and frames > 1 else 5.0


def clip_html(entry: Entry) -> str:
    """One clip: a player cycling its frames, its name, times and hash."""
    e = html.escape
    clip, data, note = entry
    caption = (
        f"{e(clip['name'])} ({e(str(clip.get('role')))}, {e(str(clip.get('camera_id', '')))}, "
        f"{clip.get('frames')} frames, {clip.get('bytes'):,} bytes)<br>"
        f"{e(str(clip.get('start')))} → {e(str(clip.get('end')))}<br>"
        f"<code>SHA-256 {e(clip['sha256'])}</code>"
    )
    frames: list[bytes] = []
    if data is not None and not note:
        try:
            frames = split(data, list(clip.get("frame_bytes") or [len(data)]))
        except ValueError as err:
            note = str(err)
    if not frames:
        return (
            f'<figure class="missing"><div>{e(note or "no frames")}</div>'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    urls = json.dumps(["data:image/jpeg;base64," + base64.b64encode(f).decode() for f in frames])
    ident = "clip-" + "".join(c if c.isalnum() else "-" for c in str(clip["name"]))
    interval_ms = max(20, round(1000 / _fps(clip)))
    return (
        f'<figure><img id="{ident}" alt="{e(clip["name"])}">'
        f"<figcaption>{caption}</figcaption></figure>"
        f"<script>(function(){{var f={urls},i=0,im=document.getElementById('{ident}');"
        f"im.src=f[0];setInterval(function(){{i=(i+1)%f.length;im.src=f[i];}},{interval_ms});"
        "})();</script>"
    )


def _value(v: Any) -> str:
    return "<em>unknown</em>" if v is None or v == "" else html.escape(str(v))


def package_html(record: dict[str, Any]) -> str:
    """Site, the device's verification and review, and the completeness of the evidence."""
    e = html.escape
    site = record.get("site") or {}
    dev = record.get("device") or {}
    ev = record.get("evidence")
    rows = [
        ("Site", " ".join(_value(site.get(k)) for k in ("name", "road", "stake", "direction"))),
        ("Coordinates (WGS-84)", f"{_value(site.get('lat'))}, {_value(site.get('lon'))}"),
        ("Public notice", _value(site.get("notice"))),
        (
            "Verification",
            f"by {_value(dev.get('verified_by'))} on {_value(dev.get('verified_on'))}, "
            f"certificate {_value(dev.get('certificate'))} valid until "
            f"{_value(dev.get('certificate_valid_until'))}",
        ),
        ("Type approval", _value(dev.get("type_approval"))),
        ("Approved speed", _value(dev.get("approved_speed_kmh")) + " km/h"),
        ("Legal and technical review", _value(dev.get("review_ref"))),
    ]
    if ev is None:
        rows.append(("Evidence", '<b class="bad">not assessed (record from an older station)</b>'))
    else:
        missing = ", ".join(ev.get("missing") or [])
        state = (
            '<b class="ok">complete</b>'
            if ev.get("complete")
            else f'<b class="bad">INCOMPLETE: missing {e(missing)}</b>'
        )
        chargeable = (
            "chargeable (an officer reviews it first)"
            if ev.get("chargeable")
            else "<b>not chargeable</b>: for review only"
        )
        details = "".join(f"<br><small>{e(d)}</small>" for d in ev.get("details") or [])
        rows.append(("Evidence", f"{state}; {chargeable}{details}"))
        if ev.get("composite"):
            rows.append(("Composite image", e(str(ev["composite"]))))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{table}</table>"
