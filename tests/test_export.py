"""``roadside-agent export``: a package that verifies on its own and a page that shows it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agent.domain import VerdictStatus
from tests.crash_writer import CTX, make_event, make_verdict, open_store
from tests.crash_writer import cli as main


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rects = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "rect":
            self.rects += 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture
def exported(tmp_path: Path, capsys) -> tuple[Path, str]:
    data_dir = tmp_path / "data"
    _db, store = open_store(data_dir)
    event_id = store.commit(make_event(3), make_verdict(VerdictStatus.OVERLOADED), CTX).event_id
    out = tmp_path / "out"
    assert main(["export", event_id, "--out", str(out), "--data-dir", str(data_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["packages"][0]["verified"] is True
    return out / event_id, event_id


def test_package_holds_record_images_signature_and_key(exported) -> None:
    pkg, event_id = exported
    names = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file()}
    assert {
        "record.json",
        "body.json",
        "hash.bin",
        "signature.sig",
        "public_key.pem",
        "images/front.jpg",
        "images/rear.jpg",
        "index.html",
        "SHA256SUMS",
        "verify.py",
    } <= names
    assert json.loads((pkg / "record.json").read_text())["event_id"] == event_id
    assert len((pkg / "signature.sig").read_bytes()) == 64


def test_package_verifies_on_its_own_and_detects_a_changed_photo(exported) -> None:
    pkg, _ = exported
    ok = subprocess.run(
        [sys.executable, str(pkg / "verify.py")], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stdout
    assert "VERIFIED" in ok.stdout
    photo = pkg / "images" / "front.jpg"
    data = bytearray(photo.read_bytes())
    data[300] ^= 1
    photo.write_bytes(bytes(data))
    bad = subprocess.run(
        [sys.executable, str(pkg / "verify.py")], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert "FAIL image front.jpg" in bad.stdout


def test_page_shows_photos_plate_chart_verdict_and_how_to_verify(exported) -> None:
    pkg, event_id = exported
    page = Page()
    page.feed((pkg / "index.html").read_text(encoding="utf-8"))
    assert len(page.images) == 2
    jpeg = base64.b64decode(page.images[0].split(",", 1)[1])
    assert jpeg == (pkg / "images" / "front.jpg").read_bytes()
    text = " ".join(page.text)
    assert event_id in text
    assert "苏L00003" in text
    assert "OVERLOADED" in text
    assert page.rects == 7  # 6 axles + gross
    assert "limit 49,000 kg" in text and "limit + tolerance 51,450 kg" in text
    assert "How to verify" in text and "openssl pkeyutl -verify" in text
    assert "verified when exported" in text


def test_unknown_event_id_fails_and_says_why(tmp_path: Path, capsys) -> None:
    data_dir = tmp_path / "data"
    open_store(data_dir)
    code = main(["export", "JS-ZJ-0001-20261126000000-999999", "--out", str(tmp_path / "o"),
                 "--data-dir", str(data_dir)])  # fmt: skip
    assert code == 1
    assert "no such record" in capsys.readouterr().out


def _export_judged(tmp_path: Path, capsys, gross_scale: float) -> tuple[str, Page]:
    """A record judged by the station's own code (6 axles, loads scaled), exported."""
    from dataclasses import replace
    from datetime import datetime

    from agent.legal import VehicleFacts, judge, load_rules

    data_dir = tmp_path / "data"
    _db, store = open_store(data_dir)
    event = make_event(5)
    w = event.weighing
    loads = tuple(int(a * gross_scale) for a in w.axle_loads_kg)
    event = replace(event, weighing=replace(w, axle_loads_kg=loads, gross_kg=sum(loads)))
    w = event.weighing
    facts = VehicleFacts(loads, w.gross_kg, tuple(w.axle_spacings_mm), plate="苏L00005")
    verdict = judge(facts, load_rules(), datetime.fromisoformat("2026-11-26T10:30:15+08:00"))
    event_id = store.commit(event, verdict, CTX).event_id
    out = tmp_path / "out"
    main(["export", event_id, "--out", str(out), "--data-dir", str(data_dir), "--json"])
    capsys.readouterr()
    text = (out / event_id / "index.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return text, page


def test_page_is_chinese_first_and_cites_the_regulation_by_name_and_item(
    tmp_path: Path, capsys
) -> None:
    html_text, page = _export_judged(tmp_path, capsys, 1.0)
    text = " ".join(page.text)
    # headings and labels: Chinese first, English second
    for zh, en in [
        ("车辆检测证据记录", "Vehicle evidence record"),
        ("照片", "Photos"),
        ("法律依据", "Legal basis"),
        ("超限", "Over the limit"),
        ("允差", "tolerance"),
    ]:
        assert zh in text and en in text and text.index(zh) < text.index(en), (zh, en)  # fmt: skip
    assert "《超限运输车辆行驶公路管理规定》第三条第一款第（八）项" in text
    assert "初判超限，待审核" in text  # the verdict is a preliminary finding for review
    assert "容差" not in html_text  # one term for the tolerance: 允差
    assert "超出限值与允差之和" in text


def test_limit_lines_only_over_the_gross_bar(tmp_path: Path, capsys) -> None:
    import re

    html_text, _ = _export_judged(tmp_path, capsys, 1.0)
    svg = html_text[html_text.index("<svg") : html_text.index("</svg>")]
    rects = [float(x) for x in re.findall(r'<rect x="([\d.]+)"', svg)]
    gross_x = rects[-1]
    dashed = re.findall(r'<line x1="([\d.]+)" x2="([\d.]+)"[^>]*stroke-dasharray', svg)
    assert len(dashed) == 2  # limit and limit + tolerance
    for x1, x2 in dashed:
        assert float(x1) > rects[-2] and float(x1) <= gross_x < float(x2)


def test_a_passing_truck_shows_no_negative_excess(tmp_path: Path, capsys) -> None:
    _html, page = _export_judged(tmp_path, capsys, 0.5)
    text = " ".join(page.text)
    assert "未超限 within the limit" in text
    row = text[text.index("超限 Over the limit") :][:80]
    assert "-" not in row.split("under")[0].replace("Over the limit", "")
