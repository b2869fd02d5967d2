"""Golden bytes of a sealed record: what is signed, stored and sent must not drift.

A fixed Ed25519 key (signatures are deterministic), a fixed vehicle and fixed photo bytes go
through :meth:`EvidenceStore.commit`; the stored canonical JSON, its hash, its signature and the
signed chain head must equal the bytes the store produced before the commit path was optimised
(issue 18: the record's canonical JSON is now encoded once, not twice). A change here means
every record already on a station, and the platform's copy of it, would hash differently.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.domain import (
    Frame,
    PlateRead,
    VehicleClass,
    VehicleEvent,
    VehicleWeighing,
    Verdict,
    VerdictStatus,
)
from agent.store import chainhead, integrity, readonly
from agent.store.db import Database
from agent.store.evidence import EvidenceStore
from agent.store.record import RecordContext, event_id_for

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 26, 10, 30, 15, 120000, tzinfo=CST)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
CTX = RecordContext(
    station_id="JS-ZJ-0001",
    scale_id="wim-1",
    accuracy_class="5",
    certificate="JJG907-2026-0042",
    certificate_valid_until="2027-05-31",
    clock_synchronized=True,
    software_version="0.1.0",
    legal_id="ab" * 32,
    audit_counter=7,
    site={"name": "G312 丹徒段非现场治超点", "road": "G312", "stake": "K1234+500"},
)
VERDICT = Verdict(
    status=VerdictStatus.OVERLOADED,
    limit_kg=49000,
    tolerance_kg=2450,
    over_kg=11100,
    over_pct=22.65,
    rule="order62-art3-8",
    explanation="6-axle combination: gross 60 100 kg over the 49 000 kg limit by 11 100 kg",
    tolerance_policy="percent:5",
    vehicle_class=VehicleClass.COMBINATION,
)

#: sha256 of the stored record JSON, the record hash and signature, the chain head's digest,
#: for records 1 and 2 (computed with the store as it was before issue 18's optimisation)
GOLDEN = [
    (
        "210aee9db0fb50590893cf46a998058cc787ef8f18b3d5e476ad06e144ea5121",
        "a224c85e745b7b102c63d9b381a21b9e55973b115067dc80f61edbbcb7a758a9",
        "SuhojcX9P5St0I+5IeqWVQ2sQUwPnHFG1xsciM13k02hqf8SghPtqMT/vNMy5EeNGKfkdCDLry3mX3i+jR7+Dg==",
        "8fe55930d91af63a9ced53d04ec4dcf5a3a59dd995160f8463f8992691622bb0",
    ),
    (
        "aa6d8d36cb55a23d426c8d1c0be8a777b913d5c265bbdc738cb2c2cc827cf1c0",
        "564fb87ace49757f93127281a0354bbc9e00274649f0b79b213801b9abcb58d8",
        "Yy+GzySGO+lWsR8BhW/js59lNlMSwLPfthw3txo0Ccxxebca1q8p5Lpa0NpoWn6Cpay4m8C92vvuoX5ajUldCA==",
        "11f16ea9175c6c81c3d9c21ba582732980c00c90dc437248184b6b88c4db34aa",
    ),
]


def _event(n: int) -> VehicleEvent:
    t = T0 + timedelta(seconds=n)
    weighing = VehicleWeighing(
        lane=2,
        measured_at=t,
        axle_loads_kg=(7100, 9800, 9700, 11200, 11300, 11000),
        gross_kg=60100,
        scale_id="wim-1",
        axle_spacings_mm=(3400, 1350, 7100, 1310, 1310),
        speed_kmh=38.5,
        # nested keys that sort around "integrity" and a string with JSON in it: the sealed
        # bytes must not depend on where the integrity block is put in
        raw={"line": f'L2,{n},"lane":1', "lane": 2, "integrity": "not the seal", "z": [1.5]},
    )
    frames = tuple(
        Frame(
            camera_id=f"cam-{role}",
            role=role,
            lane=2,
            captured_at=t,
            jpeg=b"\xff\xd8\xff\xe0" + bytes([n, k]) * 500 + b"\xff\xd9",
        )
        for k, role in enumerate(("front", "rear"))
    )
    plate = PlateRead(text="苏L12345", color="yellow", confidence=0.97)
    return VehicleEvent(weighing=weighing, plates=(plate,), frames=frames)


def test_sealed_record_bytes_and_hashes_are_unchanged(tmp_path: Path) -> None:
    db = Database(tmp_path / "station.db")
    store = EvidenceStore(db, tmp_path, integrity.Signer(KEY))
    got = []
    for n in (1, 2):
        stored = store.commit(_event(n), VERDICT, CTX)
        text = readonly.record_json(db.read(), stored.event_id)
        assert text is not None
        # what commit returns is what was stored, and the stored bytes are canonical
        assert integrity.canonical_json(stored.record).decode() == text
        assert integrity.canonical_json(json.loads(text)).decode() == text
        seal = stored.record["integrity"]
        body = {k: v for k, v in stored.record.items() if k != "integrity"}
        assert (
            integrity.verify_seal(
                KEY.public_key(), seal["prev_hash"], integrity.canonical_json(body), seal
            )
            is None
        )
        head = chainhead.chain_head(db)
        got.append(
            (
                hashlib.sha256(text.encode()).hexdigest(),
                seal["hash"],
                seal["signature"],
                head["digest"],
            )
        )
    db.close()
    assert got == GOLDEN


KEYS = st.sampled_from(
    ["", "a", "images", "integrit", "integrity0", "integrityz", "j", "Z", "é", "苏"]
)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(deadline=None)  # a shared 2-core machine: no per-example time limit
@given(st.dictionaries(KEYS | st.text(), VALUES, max_size=8))
def test_seal_record_is_the_two_step_seal_byte_for_byte(body: dict[str, object]) -> None:
    body.pop("integrity", None)
    signer = integrity.Signer(KEY)
    seal, sealed = integrity.seal_record(signer, integrity.GENESIS, body)
    assert seal == signer.seal(integrity.GENESIS, integrity.canonical_json(body))
    assert sealed == integrity.canonical_json({**body, "integrity": seal})


def test_seal_record_refuses_a_body_with_an_integrity_block() -> None:
    with pytest.raises(ValueError, match="integrity"):
        integrity.seal_record(integrity.Signer(KEY), integrity.GENESIS, {"integrity": 1})


@settings(deadline=None)
@given(st.datetimes(timezones=st.just(CST)), st.integers(0, 10**7))
def test_event_id_digits_are_strftime_s(at: datetime, seq: int) -> None:
    assert event_id_for("JS-ZJ-0001", at, seq) == (
        f"JS-ZJ-0001-{at.strftime('%Y%m%d%H%M%S')}-{seq:06d}"
    )


def test_a_non_finite_number_is_refused_by_the_seal_too() -> None:
    with pytest.raises(integrity.NotCanonicalError, match="NaN"):
        integrity.seal_record(integrity.Signer(KEY), integrity.GENESIS, {"x": float("nan")})
