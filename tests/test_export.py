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
