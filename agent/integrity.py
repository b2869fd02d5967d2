"""Record integrity: the hash chain and the station's Ed25519 signature.

``hash = SHA-256(prev_hash as ASCII hex ‖ canonical JSON of the record body)``, where the body is
the record without its ``integrity`` block; ``signature = Ed25519(bytes.fromhex(hash))``. The
first record chains to :data:`GENESIS`. ``key_id`` is the first 16 hex digits of the SHA-256 of
the raw public key, so the platform can tell keys apart after a key change.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64


class SigningKeyError(Exception):
    """The signing key is missing, unreadable or not an Ed25519 key."""


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
        digest = chain_hash(prev_hash, body)
        signature = self._key.sign(bytes.fromhex(digest))
        return {
            "prev_hash": prev_hash,
            "hash": digest,
            "signature": base64.b64encode(signature).decode("ascii"),
            "key_id": self.key_id,
            "algorithm": "sha256-chain+ed25519",
        }


def verify_seal(
    public_key: Ed25519PublicKey, prev_hash: str, body: bytes, seal: dict[str, Any]
) -> str | None:
    """``None`` when ``seal`` holds for ``body`` after ``prev_hash``, else what is wrong."""
    if seal.get("prev_hash") != prev_hash:
        return "chain broken: prev_hash does not match the previous record's hash"
    digest = chain_hash(prev_hash, body)
    if seal.get("hash") != digest:
        return "content altered: hash does not match the record"
    try:
        public_key.verify(base64.b64decode(seal.get("signature", "")), bytes.fromhex(digest))
    except (InvalidSignature, ValueError):
        return "signature invalid for this key"
    return None


def generate_key(path: Path) -> Ed25519PrivateKey:
    """Create a new key at ``path`` (mode 0600; refuses to overwrite)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
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
