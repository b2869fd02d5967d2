"""Record integrity: the hash chain and the station's Ed25519 signature.

``hash = SHA-256(prev_hash as ASCII hex ‖ canonical JSON of the record body)``, where the body is
the record without its ``integrity`` block; ``signature = Ed25519(bytes.fromhex(hash))``. The
first record chains to :data:`GENESIS`. ``key_id`` is the first 16 hex digits of the SHA-256 of
the raw public key, so the platform can tell keys apart after a key change.

The same seal protects the audit log (:mod:`agent.store.audit`), on a chain of its own.

Key files: the private key is PKCS#8 PEM, mode 0600; public keys are SubjectPublicKeyInfo PEM.
``verify`` looks a record's ``key_id`` up among every ``*.pub`` in the key directory, so records
signed before a key change still verify once the old public key is kept there (``keygen
--force`` keeps it as ``station-{key_id}.pub``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.store.files import fsync_dir

GENESIS = "0" * 64
ALGORITHM = "sha256-chain+ed25519"


class SigningKeyError(Exception):
    """The signing key is missing, unreadable or not an Ed25519 key."""


class NotCanonicalError(ValueError):
    """The object holds a value canonical JSON cannot carry (NaN, infinity)."""


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, UTF-8, no spaces: the bytes that are hashed and signed.

    Raises :class:`NotCanonicalError` for NaN or infinity anywhere in ``obj``: ``NaN`` is not
    JSON, and a signed record must parse on the platform exactly as it was hashed."""
    try:
        text = json.dumps(
            obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    except ValueError as err:
        raise NotCanonicalError(
            f"canonical JSON refuses a non-finite number (NaN or infinity): {err}"
        ) from err
    return text.encode()


#: :func:`canonical_json`'s encoder, built once for the commit path (``json.dumps`` builds one
#: per call); canonical_json itself stays self-contained: the export's verify.py copies it.
_ENCODER = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
)


def _canonical(obj: Any) -> bytes:
    """:func:`canonical_json` with the prebuilt encoder (the same bytes, the same error)."""
    try:
        return _ENCODER.encode(obj).encode()
    except ValueError:
        return canonical_json(obj)  # raises NotCanonicalError with its message


def _join_objects(a: bytes, b: bytes) -> bytes:
    """Two canonical JSON objects whose keys all sort ``a`` before ``b``, as one object."""
    if a == b"{}":
        return b
    if b == b"{}":
        return a
    return a[:-1] + b"," + b[1:]


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


class Signer:
    """Seals record bodies with the station key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def seal(self, prev_hash: str, body: bytes) -> dict[str, Any]:
        h = hashlib.sha256(prev_hash.encode("ascii") + body)  # = chain_hash(prev_hash, body)
        signature = self._key.sign(h.digest())
        return {
            "prev_hash": prev_hash,
            "hash": h.hexdigest(),
            "signature": base64.b64encode(signature).decode("ascii"),
            "key_id": self.key_id,
            "algorithm": ALGORITHM,
        }


SEAL_KEY = "integrity"


def canonical_halves(body: dict[str, Any]) -> tuple[bytes, bytes]:
    """A record body's canonical JSON in two objects: the keys sorting before ``"integrity"``
    and those after it (:func:`seal_halves` joins them; keys must be strings)."""
    if SEAL_KEY in body:
        raise ValueError("a record body must not carry its own integrity block")
    if not all(isinstance(k, str) for k in body):
        raise TypeError("a record body's keys must be strings")
    return (
        _canonical({k: v for k, v in body.items() if k < SEAL_KEY}),
        _canonical({k: v for k, v in body.items() if k > SEAL_KEY}),
    )


def seal_halves(
    signer: Signer, prev_hash: str, halves: tuple[bytes, bytes]
) -> tuple[dict[str, Any], bytes]:
    """Seal a body given as :func:`canonical_halves`: ``(integrity block, sealed record's
    canonical JSON)``. The signed bytes are the halves joined (= ``canonical_json(body)``),
    the stored bytes the halves with the block between them, where ``sort_keys`` puts it."""
    head, tail = halves
    seal = signer.seal(prev_hash, _join_objects(head, tail))
    sealed = _join_objects(head, b'{"integrity":' + _canonical(seal) + b"}")
    return seal, _join_objects(sealed, tail)


def seal_record(
    signer: Signer, prev_hash: str, body: dict[str, Any]
) -> tuple[dict[str, Any], bytes]:
    """Seal a record body: ``(its integrity block, canonical JSON of the sealed record)``.

    The same bytes as ``signer.seal(prev_hash, canonical_json(body))`` and then
    ``canonical_json({**body, "integrity": seal})``, with the body encoded once instead of
    twice (:func:`canonical_halves`, :func:`seal_halves`). Pinned by
    tests/test_record_golden.py.
    """
    return seal_halves(signer, prev_hash, canonical_halves(body))


def verify_signature(public_key: Ed25519PublicKey, digest: str, signature_b64: str) -> bool:
    """Whether ``signature_b64`` is the key's Ed25519 signature over the hash bytes."""
    try:
        public_key.verify(base64.b64decode(signature_b64, validate=True), bytes.fromhex(digest))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def verify_seal(
    public_key: Ed25519PublicKey, prev_hash: str, body: bytes, seal: dict[str, Any]
) -> str | None:
    """``None`` when ``seal`` holds for ``body`` after ``prev_hash``, else what is wrong."""
    if seal.get("prev_hash") != prev_hash:
        return "chain broken: prev_hash does not match the previous record's hash"
    digest = chain_hash(prev_hash, body)
    if seal.get("hash") != digest:
        return "content altered: hash does not match the record"
    if not verify_signature(public_key, digest, str(seal.get("signature", ""))):
        return "signature invalid for this key"
    return None


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_key_file(
    path: Path,
    data: bytes,
    *,
    mode: int,
    overwrite: bool = False,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write a key file durably with ``mode`` (and ``owner`` uid/gid when given).

    Without ``overwrite`` an existing file is an error (``FileExistsError``); with it the new
    file replaces the old one atomically (temp file, fsync, rename).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = path.with_name(f".{path.name}.tmp") if overwrite else path
    if overwrite:
        target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        os.close(fd)
    if overwrite:
        target.replace(path)
    fsync_dir(path.parent)


def generate_key(path: Path) -> Ed25519PrivateKey:
    """Create a new key at ``path`` (mode 0600; refuses to overwrite: ``FileExistsError``)."""
    key = Ed25519PrivateKey.generate()
    write_key_file(path, private_pem(key), mode=0o600)
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key at ``path``. Raises :class:`SigningKeyError`."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SigningKeyError(f"cannot read the signing key {path}: {err}") from err
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as err:
        raise SigningKeyError(f"{path} is not a PEM private key: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key (PEM) at ``path``. Raises :class:`SigningKeyError`."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as err:
        raise SigningKeyError(f"cannot read the public key {path}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key


def load_public_keys(keys_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Every readable ``*.pub`` in ``keys_dir`` by key id (unreadable ones are skipped)."""
    keys: dict[str, Ed25519PublicKey] = {}
    if not keys_dir.is_dir():
        return keys
    for path in sorted(keys_dir.glob("*.pub")):
        try:
            key = load_public_key(path)
        except SigningKeyError:
            continue
        keys[key_id_of(key)] = key
    return keys
