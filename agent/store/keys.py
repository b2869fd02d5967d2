"""Where the station's signing key lives, and which public keys ``verify`` trusts.

The private key is ``[evidence] signing_key``, else the systemd credential
``$CREDENTIALS_DIRECTORY/signing-key``, else ``{data_dir}/keys/station.key`` (created on the first
run when missing). Its public key is published as ``{data_dir}/keys/station.pub`` (or
``station-{key_id}.pub`` when ``station.pub`` holds an older key), so ``verify`` and ``export``
can check records signed before a key change. The key files themselves are
:mod:`agent.store.integrity`'s business.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.store import integrity
from agent.store.evidence import EvidenceConfig

log = logging.getLogger(__name__)


def signing_key_path(config: EvidenceConfig, data_dir: Path) -> Path:
    """Where the station key is: ``[evidence] signing_key``, else the systemd credential
    ``$CREDENTIALS_DIRECTORY/signing-key``, else ``{data_dir}/keys/station.key``."""
    if config.signing_key:
        return Path(config.signing_key)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / "signing-key").exists():
        return Path(creds) / "signing-key"
    return Path(data_dir) / "keys" / "station.key"


def keys_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "keys"


def publish_public_key(signer: integrity.Signer, data_dir: Path) -> Path:
    """Make sure ``{data_dir}/keys`` holds the signer's public key (for ``verify``/``export``).

    Returns the file holding it: ``station.pub`` if that is this key, else
    ``station-{key_id}.pub`` (written when missing).
    """
    kdir = keys_dir(data_dir)
    station_pub = kdir / "station.pub"
    if station_pub.exists():
        try:
            if integrity.key_id_of(integrity.load_public_key(station_pub)) == signer.key_id:
                return station_pub
        except integrity.SigningKeyError:
            pass
    path = station_pub if not station_pub.exists() else kdir / f"station-{signer.key_id}.pub"
    if not path.exists():
        integrity.write_key_file(path, integrity.public_pem(signer.public_key).encode(), mode=0o644)
    return path


def load_signer(
    config: EvidenceConfig, data_dir: Path, *, create_if_missing: bool = False
) -> integrity.Signer:
    """The station's :class:`~agent.store.integrity.Signer` (see :func:`signing_key_path`).

    With ``create_if_missing`` a missing key is generated (logged at WARNING: a production
    station gets its key from ``roadside-agent keygen`` and registers the public key first),
    but never one that ``[evidence] signing_key`` names: that is a configuration error.
    Raises :class:`~agent.store.integrity.SigningKeyError`.
    """
    path = signing_key_path(config, data_dir)
    if config.signing_key and not path.exists():
        # never made in its place: a new key is a new signing identity the platform does not
        # know, and the records it signs would be refused there
        raise integrity.SigningKeyError(
            f"[evidence] signing_key {path} does not exist: put the station's key there "
            f"(roadside-agent keygen --key {path}) or correct the path"
        )
    if not path.exists() and create_if_missing:
        key = integrity.generate_key(path)
        signer = integrity.Signer(key)
        log.warning(
            "evidence: no signing key; created %s (key id %s). Register its public key "
            "with the platform, or create the key with `roadside-agent keygen` instead.",
            path,
            signer.key_id,
        )
    else:
        signer = integrity.Signer(integrity.load_key(path))
    try:
        publish_public_key(signer, data_dir)
    except OSError as err:
        log.warning("evidence: cannot write the public key into %s: %s", keys_dir(data_dir), err)
    return signer


def verification_keys(
    data_dir: Path, config: EvidenceConfig | None = None
) -> dict[str, Ed25519PublicKey]:
    """Public keys ``verify`` trusts: every ``keys/*.pub`` plus the station key's own."""
    keys = integrity.load_public_keys(keys_dir(data_dir))
    path = signing_key_path(config or EvidenceConfig(), data_dir)
    try:
        pub = integrity.load_key(path).public_key()
    except integrity.SigningKeyError:
        return keys
    keys.setdefault(integrity.key_id_of(pub), pub)
    return keys
