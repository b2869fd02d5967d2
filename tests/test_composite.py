"""The composite evidence image (合成图): made from the sealed originals, never replacing them."""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image, ImageFont

from agent.domain import Frame, PlateRead, VehicleEvent, VehicleWeighing
from agent.pipeline import composite
from agent.store.record import RecordContext
from agent.store.verify import verify_store

from .conftest import make_station
from .crash_writer import make_verdict

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 26, 10, 30, 15, 120000, tzinfo=CST)
SITE = {
    "name": "G312 丹徒段非现场治超点",
    "road": "G312",
    "stake": "K1234+500",
    "direction": "上行",
}


def _photos(shared_dir: Path) -> list[bytes]:
    files = sorted((shared_dir / "fixtures" / "plates" / "full").glob("*.jpg"))[:3]
    if len(files) < 3:
        pytest.skip("fewer than three shared truck photos")
    return [f.read_bytes() for f in files]


def _event(jpegs: list[bytes]) -> VehicleEvent:
    loads = (7100, 9800, 9700, 11200, 11300, 11000)
    w = VehicleWeighing(
        lane=2, measured_at=T0, axle_loads_kg=loads, gross_kg=sum(loads), scale_id="wim-1"
    )
    frames = tuple(
        Frame(f"cam-{role}", role, 2, T0, jpeg)
        for role, jpeg in zip(("front", "rear", "side"), jpegs, strict=True)
    )
    plate = PlateRead(text="苏L12345", color="yellow", confidence=0.97)
    return VehicleEvent(weighing=w, plates=(plate,), frames=frames)


VERDICT = make_verdict()  # overloaded: 60 100 kg over 49 000 kg by 11 100 kg (22.65 %)


def test_caption_names_time_site_stake_lane_plate_axles_gross_limit_and_verdict() -> None:
    lines = composite.caption_for(_event([b"", b"", b""]), VERDICT, SITE).lines
    text = "\n".join(lines)
    for part in (
        "2026-11-26 10:30:15",
        "G312 丹徒段非现场治超点",
        "K1234+500",
        "车道 2",
        "苏L12345(黄)",
        "轴数 6",
        "总重 60100 kg",
        "限值 49000 kg",
        "初判 超限 超 11100 kg (22.65%)",
        "待人工审核",
    ):
        assert part in text, part


def test_the_install_font_has_the_chinese_glyphs_the_caption_needs() -> None:
    font = composite.find_cjk_font()
    if font is None:
        pytest.skip("no CJK font installed (Debian: fonts-noto-cjk or fonts-wqy-microhei)")
    face = ImageFont.truetype(str(font[0]), 30, index=font[1])

    def glyph(ch: str) -> bytes:
        return bytes(face.getmask(ch))

    missing = glyph("\U000f0000")  # a private-use code point: the .notdef box
    for ch in "苏超限车牌轴数总重初判审核丹徒段":
        assert glyph(ch) != missing, f"{ch} renders as a box with {font}"


def test_composite_is_one_more_image_and_the_originals_stay(
    shared_dir: Path, tmp_path: Path
) -> None:
    if composite.find_cjk_font() is None:
        pytest.skip("no CJK font installed")
    jpegs = _photos(shared_dir)
    event, status = composite.with_composite(_event(jpegs), VERDICT, SITE)
    assert status == composite.OK
    assert [f.jpeg for f in event.frames[:3]] == jpegs  # originals untouched
    made = event.frames[3]
    assert made.role == "composite"
    with Image.open(io.BytesIO(made.jpeg)) as im:
        assert im.format == "JPEG"
        assert im.height > composite.PHOTO_HEIGHT_PX  # the photos and the caption band below

    data = make_station(tmp_path / "station")
    ctx = RecordContext(station_id="JS-ZJ-0001", scale_id="wim-1", composite=status)
    stored = data.store.commit(event, VERDICT, ctx)
    images = {i["role"]: i for i in stored.record["images"]}
    assert set(images) == {"front", "rear", "side", "composite"}
    assert images["composite"]["sha256"] == hashlib.sha256(made.jpeg).hexdigest()
    assert stored.record["evidence"]["composite"] == "ok"
    for role, jpeg in zip(("front", "rear", "side"), jpegs, strict=True):
        assert images[role]["sha256"] == hashlib.sha256(jpeg).hexdigest()
    key = {data.store.signer.key_id: data.store.signer.public_key}
    report = verify_store(data.db.read(), data.data_dir, key)
    assert report.problems == [] and report.images == 4


def test_without_a_cjk_font_the_record_says_so_and_keeps_its_photos(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(composite, "CJK_FONT_PATHS", ())
    original = _event([b"\xff\xd8a\xff\xd9", b"\xff\xd8b\xff\xd9", b"\xff\xd8c\xff\xd9"])
    event, status = composite.with_composite(
        original, VERDICT, SITE, font_path=tmp_path / "nope.ttc"
    )
    assert status == composite.NO_FONT == "no_cjk_font"
    assert event == original


def test_a_corrupt_original_costs_the_composite_not_the_record() -> None:
    if composite.find_cjk_font() is None:
        pytest.skip("no CJK font installed")
    original = _event([b"not a jpeg", b"\xff\xd8b\xff\xd9", b"\xff\xd8c\xff\xd9"])
    event, status = composite.with_composite(original, VERDICT, SITE)
    assert status == composite.FAILED and event == original
