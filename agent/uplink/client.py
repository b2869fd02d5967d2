"""The link to the platform's broker: ``[uplink]`` config, TLS and paho-mqtt set-up.

:func:`make_client` turns :class:`UplinkConfig` into a paho MQTT 5 client (mutual TLS with
credentials from ``$CREDENTIALS_DIRECTORY``, the in-flight window, the last will);
:func:`probe_broker` asks whether a config would be accepted (``set-config`` checks it before
it keeps a new file). What travels over the link is :mod:`agent.uplink.messages`; delivery and
retries are :mod:`agent.uplink.delivery`.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.uplink.signing import parse_public_key

log = logging.getLogger(__name__)


class TlsConfig(BaseModel):
    """``[uplink.tls]``: mutual TLS. Relative paths resolve in ``$CREDENTIALS_DIRECTORY``."""

    model_config = ConfigDict(extra="forbid")

    ca_file: str = Field(description="CA certificate (PEM) that signed the broker's certificate")
    cert_file: str = Field(
        description="this station's client certificate (PEM); its CN is the "
        "station id the broker's ACL confines it to"
    )
    key_file: str = Field(
        description="private key of the client certificate (PEM); deliver it "
        "with systemd LoadCredential=, never in the config",
        json_schema_extra={"secret": True},
    )


class UplinkConfig(BaseModel):
    """``[uplink]``: the MQTT 5 broker of the platform. ``host``, ``port``, ``prefix`` are fixed."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        description="broker host name or address (checked against its TLS "
        "certificate when [uplink.tls] is set)"
    )
    port: int = Field(default=1883, ge=1, le=65535, description="broker TCP port (8883 for TLS)")
    prefix: str = Field(default="roadside/v1", description="topic prefix; root is prefix/station")
    client_id: str = Field(
        default="",
        description="MQTT client id, stable across restarts so "
        "the broker keeps the session; empty: roadside-{station_id}",
    )
    keepalive_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="MQTT keep-alive, seconds; "
        "a dead (half-open) link is noticed after about 1.5 times this",
    )
    session_expiry_s: int = Field(
        default=7 * 86400,
        ge=0,
        description="how long the broker "
        "keeps this station's session (acks, commands) while it is "
        "offline, seconds",
    )
    ack_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="re-send a record the platform has not acknowledged after this many seconds",
    )
    ack_backoff_factor: float = Field(
        default=2.0,
        ge=1.0,
        description="each further re-send of the same record waits this many times longer",
    )
    ack_timeout_max_s: float = Field(
        default=600.0, gt=0, description="longest wait between re-sends of one record, seconds"
    )
    max_inflight: int = Field(
        default=50,
        ge=1,
        le=65535,
        description="MQTT messages published and not yet PUBACKed (paho's in-flight window)",
    )
    max_unacked: int = Field(
        default=500,
        ge=1,
        description="records sent and not yet "
        "acknowledged by the platform; bounds duplicates after a reconnect",
    )
    max_unacked_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1,
        description="payload bytes (records and images) sent and not yet acknowledged; keeps "
        "a slow 4G link from holding hundreds of photos in memory and on the wire",
    )
    heartbeat_s: float = Field(default=60.0, gt=0, description="heartbeat period, seconds")
    live_window_s: float = Field(
        default=300.0,
        ge=0,
        description="violations measured within "
        "this many seconds are live and go ahead of the old backlog",
    )
    reconnect_min_s: float = Field(default=1.0, gt=0, description="first reconnect delay, s")
    reconnect_max_s: float = Field(default=60.0, gt=0, description="longest reconnect delay, s")
    tls: TlsConfig | None = Field(default=None, description="mutual TLS; plain TCP when absent")
    username: str = Field(
        default="",
        description="MQTT user name (most brokers take the "
        "identity from the TLS certificate instead)",
    )
    password: str = Field(
        default="",
        description="MQTT password; prefer password_file",
        json_schema_extra={"secret": True},
    )
    password_file: str = Field(
        default="",
        description="file holding the MQTT password; relative "
        "names resolve in $CREDENTIALS_DIRECTORY",
        json_schema_extra={"secret": True},
    )
    platform_public_key: str = Field(
        default="",
        description="the platform's Ed25519 public key, pinned at install (a PEM block or the "
        "base64 of the 32 raw bytes); when set, commands and acks without a valid, fresh "
        "platform signature are refused. A remote set-config cannot change or remove it",
    )
    platform_signature_window_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="a signed command or ack is accepted when signed within this many seconds "
        "of the station clock; its nonce is remembered that long (a replay is refused)",
    )

    @field_validator("platform_public_key")
    @classmethod
    def _platform_key(cls, value: str) -> str:
        if value.strip():
            try:
                parse_public_key(value)
            except ValueError as err:
                raise ValueError(f"platform_public_key: {err}") from err
        return value

    def client_id_for(self, station_id: str) -> str:
        return self.client_id or f"roadside-{station_id}"


class UplinkError(Exception):
    """The uplink cannot be set up (unreadable certificate, bad credentials file)."""


def credential_path(name: str) -> Path:
    """``name`` as given if absolute, else in ``$CREDENTIALS_DIRECTORY`` when systemd set it."""
    path = Path(name)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds:
        return Path(creds) / path
    return path


def make_client(
    config: UplinkConfig,
    client_id: str,
    *,
    clean_start: bool = False,
    will: tuple[str, bytes] | None = None,
) -> tuple[mqtt.Client, Properties]:
    """A paho MQTT 5 client set up from ``config`` (TLS, credentials, windows, will).

    Returns the client and the CONNECT properties to pass to ``connect``. Raises
    :class:`UplinkError` when a certificate, key or password file cannot be read.
    """
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    # paho logs (not raises) an exception escaping a callback; ours are guarded anyway.
    client.suppress_exceptions = True
    if config.tls is not None:
        files = [
            credential_path(f)
            for f in (config.tls.ca_file, config.tls.cert_file, config.tls.key_file)
        ]
        for f in files:
            if not f.is_file():
                raise UplinkError(
                    f"uplink TLS: {f} not found (set [uplink.tls] or LoadCredential= in the unit)"
                )
        try:
            client.tls_set(
                ca_certs=str(files[0]),
                certfile=str(files[1]),
                keyfile=str(files[2]),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError, ValueError) as err:
            raise UplinkError(f"uplink TLS: cannot load {files[1]} / {files[2]}: {err}") from err
        client.tls_insecure_set(False)  # hostname verification stays on
    password = config.password or None
    if config.password_file:
        try:
            password = credential_path(config.password_file).read_text().strip()
        except OSError as err:
            raise UplinkError(f"uplink: cannot read the password file: {err}") from err
    if config.username:
        client.username_pw_set(config.username, password)
    client.max_inflight_messages_set(config.max_inflight)
    # paho keeps every unacked QoS 1 message; our window bounds it, this is the backstop.
    client.max_queued_messages_set(max(1000, config.max_unacked * 10))
    client.reconnect_delay_set(
        max(1, round(config.reconnect_min_s)), max(1, round(config.reconnect_max_s))
    )
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    props = mqtt_properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0 if clean_start else config.session_expiry_s
    return client, props


def set_nodelay(client: mqtt.Client) -> None:
    """Switch off Nagle's algorithm on the client's socket (paho leaves it on).

    An image followed by its small record message otherwise sits behind the receiver's
    delayed ACK for up to 40 ms; paho writes whole MQTT packets, so nothing is gained by it.
    """
    sock = client.socket()
    if not isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as err:
        log.debug("uplink: TCP_NODELAY not set: %s", err)


def connect_in_background(
    client: mqtt.Client, config: UplinkConfig, props: Properties, *, clean_start: bool = False
) -> None:
    """Start connecting to ``config``'s broker and paho's network thread (which reconnects)."""
    client.connect_async(
        config.host, config.port, config.keepalive_s, clean_start=clean_start, properties=props
    )
    client.loop_start()


def probe_broker(config: UplinkConfig, station_id: str, timeout_s: float) -> bool:
    """Whether a connection with ``config`` is accepted within ``timeout_s`` (for set-config).

    Uses its own client id (``…-probe``) and a clean session, so the station's session is
    untouched. Never raises.
    """
    done = threading.Event()
    ok: list[bool] = []

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        ok.append(not rc.is_failure)
        done.set()

    try:
        client, props = make_client(
            config, f"{config.client_id_for(station_id)}-probe", clean_start=True
        )
        client.on_connect = on_connect
        connect_in_background(client, config, props, clean_start=True)
    except Exception as err:
        log.warning("broker probe %s:%d failed: %s", config.host, config.port, err)
        return False
    try:
        done.wait(timeout_s)
        return bool(ok and ok[0])
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


_F = TypeVar("_F", bound=Callable[..., Any])


def guarded(fn: _F) -> _F:
    """An exception in a paho callback is logged, never propagated into the network thread."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.exception("uplink: %s failed", fn.__name__)
            return None

    return wrapper  # type: ignore[return-value]
