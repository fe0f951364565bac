"""MQTT adapter configuration: the broker block of both daemons' configs, its TLS context,
and the retained presence message (``online`` on every connect, ``offline`` as Last Will).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from edgefed.errors import ConfigError
from edgefed.mqtt.packet import MQTT_MAX_PACKET
from edgefed.wire import Availability, encode_message

MIN_PACKET_BYTES = 1024  # below it even the presence message would not fit


class MqttTls(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ca: Path = Field(description="CA certificate (PEM) that signed the broker's certificate")
    cert: Path | None = Field(default=None, description="Client certificate (PEM) for mutual TLS")
    key: Path | None = Field(
        default=None, description="Private key (PEM) of the client certificate"
    )
    insecure: bool = Field(
        default=False, description="Skip the broker host name check (never in production)"
    )


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port")
    client_id: str = Field(min_length=1, max_length=128, description="MQTT client id")
    keepalive: int = Field(default=30, ge=5, le=3600, description="Keep-alive interval in seconds")
    clean_session: bool = Field(
        default=False,
        description="Start a fresh session on every connect; False lets the broker queue "
        "QoS 1 messages for this client while it is away",
    )
    tls: MqttTls | None = Field(default=None, description="TLS settings; None for plain TCP")
    username: str | None = Field(default=None, description="Broker user name")
    password: SecretStr | None = Field(default=None, description="Broker password")
    reconnect_min_s: int = Field(default=1, ge=1, description="First reconnect delay in seconds")
    reconnect_max_s: int = Field(default=30, ge=1, description="Reconnect delay cap in seconds")
    max_inflight: int = Field(
        default=64, ge=1, le=65535, description="QoS 1 messages awaiting PUBACK before paho queues"
    )
    max_packet_bytes: int | None = Field(
        default=None,
        ge=MIN_PACKET_BYTES,
        le=MQTT_MAX_PACKET,
        description="The broker's packet size limit (mosquitto max_packet_size; EMQX 1 MB, "
        "AWS IoT Core 128 KB): a larger publish is refused unsent, as the broker would drop "
        "the connection for it, again on every reconnect; None: MQTT's own 256 MB",
    )


@dataclass(frozen=True)
class Presence:
    """A retained presence topic: ``online`` on every connect, ``offline`` as Last Will."""

    topic: str
    online: bytes
    offline: bytes


def presence(topic: str, online: Availability) -> Presence:
    """Presence payloads from the ``online`` availability message and its offline twin."""
    offline = online.model_copy(update={"state": "offline"})
    return Presence(topic, encode_message(online), encode_message(offline))


def cert_expires(path: Path) -> float:
    """When the PEM certificate at ``path`` stops being valid (epoch seconds)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"mqtt tls: cannot read the certificate {path}: {exc}") from exc
    return cert.not_valid_after_utc.timestamp()


def tls_context(tls: MqttTls) -> ssl.SSLContext:
    """Build the client TLS context; a file that is missing, unreadable or not what it
    should be raises ``ConfigError`` naming it (``ssl``'s own errors name none)."""
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError("mqtt tls: give both cert and key, or neither")
    for what, path in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)):
        try:
            if path is not None and not path.is_file():
                raise ConfigError(f"mqtt tls: {what} {path} is not a file")
        except OSError as exc:  # a directory it may not search, a name too long
            raise ConfigError(f"mqtt tls: {what} {path}: {exc.strerror or exc}") from exc
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt tls: cannot load the CA certificates {tls.ca}: {exc}") from exc
    if tls.cert is not None and tls.key is not None:
        try:
            context.load_cert_chain(str(tls.cert), str(tls.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"mqtt tls: cannot load the client certificate {tls.cert} with the key "
                f"{tls.key}: {exc}"
            ) from exc
    context.check_hostname = not tls.insecure
    return context


def check_files(mqtt: MqttConfig | None) -> list[str]:
    """What ``check-config`` finds wrong with the files the broker settings name (the
    errors a start would stop at)."""
    if mqtt is None or mqtt.tls is None:
        return []
    try:
        tls_context(mqtt.tls)
    except ConfigError as exc:
        return [str(exc)]
    return []
