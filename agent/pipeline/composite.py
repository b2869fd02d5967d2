"""The composite evidence image (合成图): the vehicle's photos side by side with a caption band.

Officers are used to one picture per case: front, side and rear photo in a row and, below them, a
band with the facts in Chinese (time, site and stake, lane, plate, axle count, gross, limit and
the preliminary verdict). It is *derived*: built from the very frames that are sealed as the
record's originals, stored and hashed as one more ``images`` entry with ``role: "composite"``,
and it never replaces them (DESIGN §4a). The caption says 初判 (preliminary) and 待人工审核:
the station flags, an officer decides.

The caption needs a CJK font. The install provides one (Debian ``fonts-noto-cjk``, or
``fonts-wqy-microhei``); :func:`find_cjk_font` looks for it at run time. Without one the record
is stored without a composite and says so: ``evidence.composite = "no_cjk_font"`` (a caption of
empty boxes would be worse than none). Rendering is Pillow only, one JPEG decode per original.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.domain import Frame, VehicleEvent, Verdict

log = logging.getLogger(__name__)

ROLE = "composite"
#: Where Debian and Raspberry Pi OS put the CJK fonts (fonts-noto-cjk, fonts-wqy-microhei,
#: fonts-wqy-zenhei, fonts-arphic-uming), searched in this order.
CJK_FONT_PATHS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Medium.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)
ORDER = ("front", "side", "rear", "overview")
PHOTO_HEIGHT_PX = 540
STATUS_ZH = {
    "within_limit": "未超限",
    "warning": "超限(警告)",
    "overloaded": "超限",
    "exempt": "许可通行",
    "undetermined": "无法认定",
}
COLOR_ZH = {"blue": "蓝", "yellow": "黄", "green": "绿", "white": "白", "black": "黑"}

# evidence.composite values
OK = "ok"
NO_FONT = "no_cjk_font"
NO_PHOTOS = "no_photos"
FAILED = "failed"
OFF = "off"

_warned: set[str] = set()  # first failure at ERROR, repeats at DEBUG


@dataclass(frozen=True)
class Caption:
    """What the caption band says (all strings ready to print)."""

    lines: tuple[str, ...]


def find_cjk_font(configured: str | Path = "") -> tuple[Path, int] | None:
    """``(font file, face index)`` of a font with Simplified Chinese glyphs, or ``None``.

    ``configured`` (``[evidence] composite_font``) wins when it exists. In a ``.ttc`` collection
    the Simplified Chinese face (``… SC``) is chosen when there is one.
    """
    candidates = [Path(configured)] if configured else []
    candidates += [Path(p) for p in CJK_FONT_PATHS]
    for path in candidates:
        if path.is_file():
            return path, _sc_face(str(path))
    return None


@functools.cache
def _sc_face(path: str) -> int:
    from PIL import ImageFont

    for index in range(8):
        try:
            name = ImageFont.truetype(path, 12, index=index).getname()[0] or ""
        except OSError:
            break
        if name.endswith(" SC") or "Micro Hei" in name:
            return index
    return 0


@functools.cache
def _font(path: str, index: int, size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(path, size, index=index)


def caption_for(event: VehicleEvent, verdict: Verdict, site: dict[str, Any]) -> Caption:
    """The caption band's lines, in Chinese. Unknown facts print as 未知, never guessed."""
    w = event.weighing
    where = (
        " ".join(str(site[k]) for k in ("name", "road", "stake", "direction") if site.get(k))
        or "未知"
    )
    plate = "未识别"
    if event.plates:
        p = event.plates[0]
        plate = f"{p.text}({COLOR_ZH.get(p.color, p.color)})" if p.color else p.text
    limit = f"{verdict.limit_kg} kg" if verdict.limit_kg is not None else "未知"
    status = STATUS_ZH.get(verdict.status.value, verdict.status.value)
    if verdict.over_kg is not None and verdict.over_kg > 0 and verdict.over_pct is not None:
        status += f" 超 {verdict.over_kg} kg ({verdict.over_pct:.2f}%)"
    return Caption(
        (
            f"时间 {w.measured_at.strftime('%Y-%m-%d %H:%M:%S')}   车道 {w.lane}",
            f"地点 {where}",
            f"车牌 {plate}   轴数 {w.axle_count}   总重 {w.gross_kg} kg   限值 {limit}",
            f"初判 {status}   (本站初步判定, 待人工审核)",
        )
    )


def render(originals: Sequence[Frame], caption: Caption, font: tuple[Path, int]) -> bytes:
    """One JPEG: the originals scaled to one height in a row, the caption band below."""
    from PIL import Image, ImageDraw

    photos = []
    for frame in originals:
        with Image.open(io.BytesIO(frame.jpeg)) as src:
            # decode at the smallest DCT scale still >= the target (a big photo costs less)
            src.draft("RGB", (src.width * PHOTO_HEIGHT_PX // src.height, PHOTO_HEIGHT_PX))
            rgb = src.convert("RGB")
        scale = PHOTO_HEIGHT_PX / rgb.height
        target = (max(1, round(rgb.width * scale)), PHOTO_HEIGHT_PX)
        photos.append(rgb.resize(target, Image.Resampling.BILINEAR))
    width = max(960, sum(p.width for p in photos))
    size = 30
    face = _font(str(font[0]), font[1], size)
    widest = max(face.getlength(line) for line in caption.lines)
    if widest > width - 32:  # a long site name: a smaller font, never a cut-off caption
        size = max(12, int(size * (width - 32) / widest))
        face = _font(str(font[0]), font[1], size)
    band = (size + 14) * len(caption.lines) + 20
    out = Image.new("RGB", (width, PHOTO_HEIGHT_PX + band), (0, 0, 0))
    x = 0
    for p in photos:
        out.paste(p, (x, 0))
        x += p.width
    draw = ImageDraw.Draw(out)
    y = PHOTO_HEIGHT_PX + 10
    for line in caption.lines:
        draw.text((16, y), line, font=face, fill=(255, 255, 255))
        y += size + 14
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def originals_of(frames: Sequence[Frame]) -> list[Frame]:
    """One photo per role (the first of each), front, side, rear, overview."""
    first: dict[str, Frame] = {}
    for f in frames:
        if f.role != ROLE:
            first.setdefault(f.role, f)
    return [first[r] for r in ORDER if r in first]


def with_composite(
    event: VehicleEvent,
    verdict: Verdict,
    site: dict[str, Any],
    *,
    enabled: bool = True,
    font_path: str | Path = "",
) -> tuple[VehicleEvent, str]:
    """``(event with the composite frame added, evidence.composite status)``.

    Never raises: a composite that cannot be made costs the composite, never the record.
    """
    if not enabled:
        return event, OFF
    originals = originals_of(event.frames)
    if not originals:
        return event, NO_PHOTOS
    font = find_cjk_font(font_path)
    if font is None:
        (log.debug if _warned else log.error)(
            "composite image: no CJK font found (install fonts-noto-cjk or fonts-wqy-microhei);"
            " records are stored without a composite, flagged evidence.composite=%s",
            NO_FONT,
        )
        _warned.add(NO_FONT)
        return event, NO_FONT
    try:
        jpeg = render(originals, caption_for(event, verdict, site), font)
    except Exception as err:  # a corrupt original must not cost the record
        log.error("composite image of lane %d not made: %r", event.weighing.lane, err)
        return event, FAILED
    frame = Frame(
        camera_id="composite",
        role=ROLE,
        lane=event.weighing.lane,
        captured_at=event.weighing.measured_at,
        jpeg=jpeg,
    )
    return replace(event, frames=(*event.frames, frame)), OK
