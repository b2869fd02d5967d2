"""Platform signatures on what the station obeys: commands and acks (``docs/uplink.md``).

The broker's ACL alone decides who may publish on ``{root}/cmd/…`` and ``{root}/ack``; once
``[uplink] platform_public_key`` is set (pinned at install), the station also wants proof that
the *platform* sent the message, and sent it once. The platform adds four MQTT 5 user
properties to each command and ack::

    sig-alg    "ed25519"
    sig-time   when it signed, ISO 8601 with its UTC offset ("2026-11-26T10:30:15.120+08:00")
    sig-nonce  8 to 128 characters [A-Za-z0-9_-], never used twice
    sig        base64 Ed25519 signature over the UTF-8 bytes of
               "roadside.platform-signature.v1\\n{topic}\\n{sig-time}\\n{sig-nonce}\\n{sha256}"
               where {topic} is the topic it was published on and {sha256} is the lower-case
               hex SHA-256 of the payload bytes

A message is refused (:class:`SignatureError`, with a reason code) when it is unsigned, the
signature does not verify, its time is more than ``window_s`` away from the station's clock,
or its nonce was already seen within the window (a replay). Nonces are remembered in memory
for the window; a restart forgets them, so a message signed before this process started is
refused as ``replayed`` (a captured message cannot be replayed across a restart; the platform
signs a fresh one). The cost: a message the platform signed just before a restart and that
the broker delivers after it is refused once, and is sent again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DOMAIN = "roadside.platform-signature.v1"
ALGORITHM = "ed25519"
NONCE_RE = re.compile(r"^[A-Za-z0-9_\-]{8,128}$")
#: Most nonces remembered at once; beyond it a signed message is refused (``nonce-flood``)
#: rather than a replay risked.
MAX_NONCES = 200_000
NOT_BEFORE_MARGIN_S = 1.0


class SignatureError(Exception):
    """A command or ack without a valid, fresh platform signature; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The platform key as configured: a SubjectPublicKeyInfo PEM block, or the base64 of the
    32 raw key bytes. Raises ``ValueError`` saying what is wrong."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as err:
            raise ValueError(f"not a PEM public key: {err}") from err
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"expected an Ed25519 key, got {type(key).__name__}")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"not base64: {err}") from err
    if len(raw) != 32:
        raise ValueError(f"expected 32 raw Ed25519 key bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def aware_time(text: str) -> datetime:
    """An ISO 8601 time with its UTC offset; ``ValueError`` saying what is wrong."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError("not an ISO 8601 time") from err
    if t.tzinfo is None:
        raise ValueError("has no UTC offset")
    return t


def signed_bytes(topic: str, payload: bytes, sig_time: str, nonce: str) -> bytes:
    """What the platform signs for one message."""
    digest = hashlib.sha256(payload).hexdigest()
    return f"{DOMAIN}\n{topic}\n{sig_time}\n{nonce}\n{digest}".encode()


class PlatformVerifier:
    """Checks platform signatures and remembers nonces (one instance per uplink; the paho
    network thread is its only caller)."""

    def __init__(
        self, public_key: Ed25519PublicKey, now: Callable[[], datetime], window_s: float
    ) -> None:
        self.public_key = public_key
        self.now = now
        self.window_s = window_s
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce → signed at (epoch s)
        #: nothing signed before this verifier existed is obeyed: its nonces are not known
        #: (less a second: sig-time has millisecond precision, and a restart takes longer)
        self.not_before_s = now().timestamp() - NOT_BEFORE_MARGIN_S

    def check(self, topic: str, payload: bytes, user: Mapping[str, str]) -> None:
        """Return when the message is the platform's and fresh, else raise
        :class:`SignatureError` (``unsigned``, ``bad-signature``, ``stale``, ``replayed``)."""
        sig, sig_time, nonce = user.get("sig"), user.get("sig-time"), user.get("sig-nonce")
        if not sig or not sig_time or not nonce:
            raise SignatureError("unsigned", "no platform signature (sig, sig-time, sig-nonce)")
        if user.get("sig-alg", ALGORITHM) != ALGORITHM:
            raise SignatureError("bad-signature", f"sig-alg {user.get('sig-alg')!r} unknown")
        if not NONCE_RE.match(nonce):
            raise SignatureError("bad-signature", f"sig-nonce {nonce[:40]!r} malformed")
        try:
            signed_at = aware_time(sig_time)
        except ValueError as err:
            raise SignatureError("bad-signature", f"sig-time {sig_time[:40]!r}: {err}") from err
        try:
            self.public_key.verify(
                base64.b64decode(sig, validate=True),
                signed_bytes(topic, payload, sig_time, nonce),
            )
        except (InvalidSignature, binascii.Error, ValueError) as err:
            raise SignatureError("bad-signature", "the platform signature does not verify") from err
        now_s = self.now().timestamp()
        skew_s = signed_at.timestamp() - now_s
        if abs(skew_s) > self.window_s:
            raise SignatureError(
                "stale",
                f"signed at {sig_time}, {skew_s:+.0f} s from the station clock"
                f" (window ±{self.window_s:g} s)",
            )
        if signed_at.timestamp() < self.not_before_s:
            raise SignatureError(
                "replayed",
                f"signed at {sig_time}, before the station's uplink started: a message from "
                "before a restart is not obeyed (its nonce is not remembered); sign it again",
            )
        self._forget_before(now_s - self.window_s)
        if nonce in self._nonces:
            raise SignatureError("replayed", f"nonce {nonce!r} was already used")
        if len(self._nonces) >= MAX_NONCES:
            raise SignatureError("nonce-flood", "too many signed messages within the window")
        self._nonces[nonce] = signed_at.timestamp()

    def _forget_before(self, cutoff_s: float) -> None:
        # insertion order is close to signing order; a message signed out of order stays
        # remembered a little longer, never shorter
        while self._nonces:
            at = next(iter(self._nonces.values()))
            if at >= cutoff_s:
                break
            self._nonces.popitem(last=False)
