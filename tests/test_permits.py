"""The permit book and watch-list: whole lists replaced atomically, bad lists refused whole."""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent.domain import VehicleClass, VerdictStatus
from agent.legal import VehicleFacts, judge, load_rules
from agent.store.permits import PermitBook, PermitListError, PermitStoreError

CST = timezone(timedelta(hours=8))
AT = datetime(2026, 11, 26, 10, 0, tzinfo=CST)


def permit(**kw: Any) -> dict[str, Any]:
    base = {"plate": "苏L12345", "valid_from": "2026-11-01", "valid_to": "2026-11-30",
            "max_gross_kg": 62000, "permit_id": "JS-2026-0001"}  # fmt: skip
    return base | kw


@pytest.fixture
def book(tmp_path: Path) -> PermitBook:
    return PermitBook(tmp_path / "data")


def test_permits_are_found_by_normalised_plate(book: PermitBook) -> None:
    assert book.replace_permits([permit(), permit(plate="皖A99999", max_gross_kg=50000)]) == 2
    for plate in ("苏L12345", "苏L·12345", "苏l 12345"):
        found = book.permit_for(plate, AT, 62000)
        assert found is not None and found.permit_id == "JS-2026-0001"
    assert book.permit_for("苏L12345", AT, 62001) is None
    assert book.permit_for("苏L12345", AT, 62001, tolerance_kg=1) is not None
    assert book.permit_for("苏L12346", AT, 100) is None
    assert book.permit_for(None, AT, 100) is None
    assert book.counts() == {"permits": 2, "watchlist": 0}


def test_permit_validity_days_are_inclusive(book: PermitBook) -> None:
    book.replace_permits([permit(valid_from="2026-11-26", valid_to="2026-11-26")])
    start = datetime(2026, 11, 26, 0, 0, tzinfo=CST)
    assert book.permit_for("苏L12345", start, 1000) is not None
    assert book.permit_for("苏L12345", start + timedelta(hours=23, minutes=59), 1000) is not None
    assert book.permit_for("苏L12345", start - timedelta(microseconds=1), 1000) is None
    assert book.permit_for("苏L12345", start + timedelta(days=1), 1000) is None


def test_permit_with_times(book: PermitBook) -> None:
    book.replace_permits(
        [permit(valid_from="2026-11-26T08:00:00+08:00", valid_to="2026-11-26T02:00:00Z")]
    )  # 02:00 UTC is 10:00 in China
    assert book.permit_for("苏L12345", AT, 1000) is not None
    assert book.permit_for("苏L12345", AT + timedelta(seconds=1), 1000) is None


def test_the_lists_survive_a_restart(tmp_path: Path) -> None:
    first = PermitBook(tmp_path)
    first.replace_permits([permit()])
    first.replace_watchlist([{"plate": "苏L12345", "reason": "unpaid fines"}, "皖A00001"])
    again = PermitBook(tmp_path)
    assert again.permits_for("苏L12345") == first.permits_for("苏L12345")
    watched = again.watched("苏L·12345")
    assert watched is not None and watched.reason == "unpaid fines"
    assert again.watched("皖A00001") is not None
    assert again.watch_for("皖A·00001") == (again.watched("皖A00001"),)
    assert again.watch_for("皖A00002") == ()
    assert len(again.watchlist) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["permits.json", "watchlist.json"]


def test_a_new_list_replaces_the_old_one(book: PermitBook) -> None:
    book.replace_permits([permit()])
    book.replace_permits([permit(plate="皖A99999")])
    assert book.permits_for("苏L12345") == ()
    assert len(book.permits_for("皖A99999")) == 1
    book.replace_watchlist(["苏L12345"])
    book.replace_watchlist([])
    assert book.watched("苏L12345") is None


BAD_PERMITS = [
    ([permit(max_gross_kg=0)], "permit 0 (苏L12345): max gross must be > 0 kg"),
    ([permit(max_gross_kg="62000")], "max_gross_kg must be whole kg"),
    ([permit(max_gross_kg=True)], "max_gross_kg must be whole kg"),
    ([permit(max_gross_kg=62000.5)], "max_gross_kg must be whole kg"),
    ([permit(), {"plate": "苏L1"}], "permit 1 (苏L1): missing max_gross_kg, valid_from, valid_to"),
    ([permit(max_gross=1)], "unknown key(s) max_gross"),
    ([permit(valid_to="2026-10-31")], "valid_to 2026-10-31 is before valid_from 2026-11-01"),
    ([permit(valid_from="2026-11-01T08:00:00")], "needs a UTC offset"),
    ([permit(valid_from="next week")], "is not an ISO date or time"),
    ([permit(valid_from=20261101)], "must be an ISO date or time"),
    ([permit(plate=" ")], "permit without a plate"),
    ([permit(plate=12345)], "plate must be text"),
    (["苏L12345"], "permit 0: expected an object, got str"),
    (permit(), "needs a list"),
]  # fmt: skip


@pytest.mark.parametrize(("entries", "message"), BAD_PERMITS)
def test_a_bad_permit_list_is_refused_whole(tmp_path: Path, entries: Any, message: str) -> None:
    book = PermitBook(tmp_path)
    book.replace_permits([permit(plate="皖A99999")])
    stored = (tmp_path / "permits.json").read_bytes()
    with pytest.raises(PermitListError) as err:
        book.replace_permits(entries)
    assert message in str(err.value)
    assert (tmp_path / "permits.json").read_bytes() == stored
    assert len(book.permits_for("皖A99999")) == 1  # the old list stays in force


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["苏L12345", "苏L·12345"], "entries 0 and 1 are the same plate"),
        ([{"plate": "苏L12345", "why": "x"}], "unknown key(s) why"),
        ([{"reason": "x"}], "plate and reason must be text"),
        ([""], "watch-list entry without a plate"),
        ([42], "expected an object or a plate"),
        ("苏L12345", "needs a list"),
    ],
)
def test_a_bad_watchlist_is_refused_whole(book: PermitBook, entries: Any, message: str) -> None:
    book.replace_watchlist(["皖A00001"])
    with pytest.raises(PermitListError) as err:
        book.replace_watchlist(entries)
    assert message in str(err.value)
    assert book.watched("皖A00001") is not None


def test_a_failed_write_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    book = PermitBook(tmp_path)
    book.replace_permits([permit(plate="皖A99999")])
    stored = (tmp_path / "permits.json").read_bytes()

    def disk_full(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(PermitStoreError, match="No space left"):
        book.replace_permits([permit()])
    monkeypatch.undo()
    assert (tmp_path / "permits.json").read_bytes() == stored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["permits.json"]  # no temp file left
    assert book.permits_for("苏L12345") == ()
    assert len(book.permits_for("皖A99999")) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"schema": "other", "entries": []}', "expected schema"),
        (b'{"schema": "roadside.permits.v1", "entries": {}}', "'entries' must be a list"),
        (
            b'{"schema": "roadside.permits.v1", "entries": [{"plate": "x"}]}',
            "stored list is invalid",
        ),
    ],
)
def test_a_damaged_store_is_reported(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "permits.json").write_bytes(content)
    with pytest.raises(PermitStoreError, match=message) as err:
        PermitBook(tmp_path)
    assert "permits.json" in str(err.value) or str(tmp_path) in str(err.value)


def test_stored_file_is_readable_json(book: PermitBook, tmp_path: Path) -> None:
    book.replace_permits([permit()])
    data = json.loads((tmp_path / "data" / "permits.json").read_text(encoding="utf-8"))
    assert data["schema"] == "roadside.permits.v1"
    assert data["entries"][0]["valid_to"] == "2026-11-30"


def test_the_verdict_uses_the_book(book: PermitBook) -> None:
    rules = load_rules()
    book.replace_permits([permit(max_gross_kg=60000)])
    book.replace_watchlist([{"plate": "苏L12345", "reason": "platform request"}])
    facts = VehicleFacts((7000, 10000, 10000, 11000, 11000, 11000), 60000,
                         declared_class=VehicleClass.COMBINATION, single_drive_axle=False,
                         plate="苏L12345")  # fmt: skip
    v = judge(facts, rules, AT, permits=book.permits_for(facts.plate),
              watchlist=book.watch_for(facts.plate))  # fmt: skip
    assert v.status is VerdictStatus.EXEMPT
    assert v.watchlist_hit
    later = datetime.combine(date(2026, 12, 1), datetime.min.time(), CST)
    v_later = judge(facts, rules, later, permits=book.permits_for(facts.plate))
    assert v_later.status is VerdictStatus.OVERLOADED
