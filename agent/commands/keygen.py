"""``roadside-agent keygen``: create the station's Ed25519 signing key.

Writes the private key (PKCS#8 PEM, mode 0600, owned by the service user) and the public key
beside it, and prints the public key and key id to register with the platform. Refuses to
replace an existing key unless ``--force``; the replaced public key is kept as
``station-{key_id}.pub`` so records signed with it still verify.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from pathlib import Path
from typing import Any

from agent.commands._common import EX_FAILED, EX_UNAVAILABLE, add_location_args, location_of


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "keygen",
        help="create the station signing key",
        description="Create the station's Ed25519 signing key and print its public key for "
        "registration with the platform.",
    )
    add_location_args(p, json_flag=False)
    p.add_argument(
        "--key", metavar="PATH", help="private key file (default: the station's key path)"
    )
    p.add_argument(
        "--owner",
        metavar="USER",
        help="owner of the key file (default: the owner of the data directory when run as root)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)
    return p


def _owner(args: argparse.Namespace, data_dir: Path) -> tuple[int, int] | None:
    if args.owner:
        pw = pwd.getpwnam(args.owner)  # KeyError: no such user
        return pw.pw_uid, pw.pw_gid
    if os.geteuid() == 0 and data_dir.exists():
        st = data_dir.stat()
        return st.st_uid, st.st_gid
    return None


def run(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.store import integrity, keys

    where = location_of(args, "keygen")
    data_dir, config = where.data_dir, where.evidence
    path = Path(args.key) if args.key else keys.signing_key_path(config, data_dir)
    try:
        owner = _owner(args, data_dir)
    except KeyError:
        print(f"roadside-agent keygen: no user {args.owner!r}", file=sys.stderr)
        return EX_UNAVAILABLE
    pub_path = path.with_suffix(".pub")
    if path.exists() and not args.force:
        print(
            f"roadside-agent keygen: {path} exists; records are signed with it. "
            "Use --force to replace it (the old public key is kept for verify).",
            file=sys.stderr,
        )
        return EX_FAILED
    key = Ed25519PrivateKey.generate()
    signer = integrity.Signer(key)
    try:
        if path.exists():
            _archive_old_public_key(path, pub_path, data_dir)
        integrity.write_key_file(
            path, integrity.private_pem(key), mode=0o600, overwrite=args.force, owner=owner
        )
        integrity.write_key_file(
            pub_path,
            integrity.public_pem(signer.public_key).encode(),
            mode=0o644,
            overwrite=True,
            owner=owner,
        )
        if pub_path.parent != keys.keys_dir(data_dir):
            keys.publish_public_key(signer, data_dir)
    except OSError as err:
        print(f"roadside-agent keygen: cannot write {path}: {err}", file=sys.stderr)
        return EX_FAILED
    pem = integrity.public_pem(signer.public_key)
    if args.json:
        out = {"key_id": signer.key_id, "private_key": str(path), "public_key": str(pub_path)}
        print(json.dumps({**out, "public_key_pem": pem}))
    else:
        print(f"signing key: {path} (mode 0600)")
        print(f"public key:  {pub_path}")
        print(f"key id:      {signer.key_id}")
        print("Register this public key with the platform:")
        print(pem, end="")
    return 0


def _archive_old_public_key(key_path: Path, pub_path: Path, data_dir: Path) -> None:
    """Keep the public half of the key being replaced, so old records still verify."""
    from agent.store import integrity, keys

    try:
        old = integrity.load_key(key_path)
    except integrity.SigningKeyError:
        return
    old_pub = old.public_key()
    archive = keys.keys_dir(data_dir) / f"station-{integrity.key_id_of(old_pub)}.pub"
    if not archive.exists():
        integrity.write_key_file(archive, integrity.public_pem(old_pub).encode(), mode=0o644)
    if pub_path.exists():
        pub_path.unlink()
