"""``MqttClient``: one broker connection, paho's client composed with the registry
(``registry``) and, in loop mode, the asyncio drive (``loopdriver``).

This module holds what only a connection has: TCP_NODELAY on every socket, TLS and
credentials from config, the presence message and its Last Will, the (re)connect and
disconnect callbacks with their counters and listeners, and start/stop in either mode.
A publish larger than the broker's packet limit is refused before paho has it, and a
broker that keeps closing the link over one it was not told of is named as the likely
cause (``packet``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgefed.errors import OffloadError
from edgefed.mqtt.config import MqttConfig, Presence, cert_expires, tls_context
from edgefed.mqtt.loopdriver import LoopDriver
from edgefed.mqtt.packet import DropWatch, PacketTooLarge, checked_size
from edgefed.mqtt.registry import (
    AckCallback,
    AckedHandler,
    Handler,
    MqttCounters,
    Publish,
    SubscriptionRegistry,
)

log = logging.getLogger("edgefed.mqtt")


def _not_redundant(record: logging.LogRecord) -> bool:
    """Drop paho's "Client is not connected" error. paho 2.2 logs it when its network
    loop runs once more after the socket closed: on every clean ``stop`` now and then,
    and after a lost connection that ``_on_disconnect`` has already reported."""
    return not str(record.msg).startswith("Client is not connected")


# paho's own records, under edgefed.mqtt (its level and handlers apply)
paho_log = logging.getLogger("edgefed.mqtt.paho")
paho_log.addFilter(_not_redundant)

ConnectionListener = Callable[[bool], None]
CERT_WARN_DAYS = 30  # a client certificate this close to its end is warned of


class MqttClient:
    """One broker connection with reconnect, presence, subscriptions and counted dispatch."""

    def __init__(self, config: MqttConfig, presence: Presence | None = None) -> None:
        self.config = config
        self.counters = MqttCounters()
        self._presence = presence
        self._lock = threading.Lock()  # guards counters, listeners and the registry
        self._listeners: list[ConnectionListener] = []
        self._connected = threading.Event()
        self._started = False
        self._stopping = False
        self._resubscribe_mid: int | None = None
        self._accepted = False  # the broker accepted the current connection (CONNACK)
        self._client = self._make_client()
        tls = config.tls
        # when the client certificate runs out (epoch s): status, metrics, warnings
        self.cert_expires = cert_expires(tls.cert) if tls and tls.cert else None
        self._registry = SubscriptionRegistry(self.counters, self._client.ack, self._lock)
        self._driver = LoopDriver(self._client, config, self._count_connect_failure)
        self._drop_watch = DropWatch(config.max_packet_bytes)

    @property
    def connected(self) -> bool:
        """Connected, and every registered subscription confirmed by the broker."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Called with True on every (re)connect and False on every disconnect."""
        with self._lock:
            self._listeners.append(listener)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Register a QoS 1 subscription; applied now if connected and on every reconnect.
        The broker has its PUBACK once the handler returns."""
        self._register(topic_filter, handler, acked=False)

    def subscribe_acked(self, topic_filter: str, handler: AckedHandler) -> None:
        """As ``subscribe``, but the handler gets an ``ack`` to call (from any thread) once
        the message has had its effect, such as a commit: only then does the broker have
        its PUBACK. A message whose effect dies with the process before that comes again
        on the next connection. A handler that raises has its message acknowledged."""
        self._register(topic_filter, handler, acked=True)

    def _register(self, topic_filter: str, handler: Callable[..., None], acked: bool) -> None:
        self._registry.add(topic_filter, handler, acked)
        if self._client.is_connected():  # paho's state: set before on_connect runs
            self._client.subscribe(topic_filter, qos=1)

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, on_ack: AckCallback | None = None
    ) -> Publish:
        """Publish at QoS 1. While offline paho queues it and sends it on reconnect. A
        packet larger than ``max_packet_bytes`` is refused unsent (``PacketTooLarge``):
        the broker would close the connection for it, and again each time paho resent it."""
        size = self.check_packet(topic, payload)
        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        except ValueError as exc:
            raise OffloadError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise OffloadError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        return self._registry.published(info.mid, topic, on_ack, size)

    def check_packet(self, topic: str, payload: bytes) -> int:
        """The MQTT packet size of publishing ``payload`` to ``topic``; ``PacketTooLarge``
        if the broker's limit (``max_packet_bytes``) would refuse it."""
        return checked_size(topic, len(payload), self.config.max_packet_bytes)

    def socket_nodelay(self) -> bool:
        """Whether the current socket has TCP_NODELAY (False when not connected)."""
        sock = self._client.socket()
        if not isinstance(sock, socket.socket):
            return False
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Connect in the background and keep reconnecting until ``stop``.

        Without ``loop``, paho's own thread runs the connection. With ``loop``, that
        asyncio loop does (see ``edgefed.mqtt.loopdriver``); ``stop`` must then be called
        from another thread, such as ``asyncio.to_thread``.
        """
        if self._started:
            return
        self._started = True
        self._check_cert()
        try:
            self._client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        except (OSError, ValueError) as exc:
            raise OffloadError(f"mqtt: cannot connect to {self.config.host}: {exc}") from exc
        if loop is None:
            self._client.loop_start()
            return
        self._driver.start(loop)

    def stop(self, timeout: float = 2.0) -> None:
        """Publish ``offline`` (a clean disconnect sends no Last Will), then disconnect."""
        if not self._started:
            return
        if self._driver.on_loop_thread():
            raise RuntimeError("stop a loop-driven MqttClient from another thread")
        self._started = False
        self._stopping = True
        if self._presence is not None and self.connected:
            offline = self._publish_presence(self._presence.offline)
            if offline is not None:
                offline.wait(timeout)
        if not self._driver.started:
            self._client.disconnect()
            self._client.loop_stop()
        else:
            self._driver.stop(timeout)
        self._connected.clear()
        self._registry.forget_publishes()
        self._stopping = False

    def _make_client(self) -> paho.Client:
        cfg = self.config
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=cfg.clean_session,
            protocol=paho.MQTTv311,
            manual_ack=True,  # the registry acknowledges each message (see its doc)
        )
        client.enable_logger(paho_log)
        client.reconnect_delay_set(
            cfg.reconnect_min_s, max(cfg.reconnect_min_s, cfg.reconnect_max_s)
        )
        client.max_inflight_messages_set(cfg.max_inflight)
        if cfg.tls is not None:
            client.tls_set_context(tls_context(cfg.tls))
        if cfg.username is not None:
            secret = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, secret)
        if self._presence is not None:
            client.will_set(self._presence.topic, self._presence.offline, qos=1, retain=True)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    # --- paho's callbacks: on its thread, or on the loop (the connecting thread for opens)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._driver.loop is not None:
            self._driver.socket_opened(sock)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            with self._lock:
                self.counters.connect_failures += 1
            log.warning("mqtt: broker %s refused the connection: %s", self.config.host, reason)
            return
        self._driver.connected()
        self._accepted = True
        filters = self._registry.new_session()
        with self._lock:
            if self.counters.connects:
                self.counters.reconnects += 1
            self.counters.connects += 1
            listeners = list(self._listeners)
        if filters:
            _, mid = client.subscribe([(f, 1) for f in filters])
            with self._lock:
                self._resubscribe_mid = mid
            return  # ready when the broker confirms the subscriptions (_on_subscribe)
        self._ready(listeners)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        with self._lock:
            if mid != self._resubscribe_mid:
                return
            self._resubscribe_mid = None
            listeners = list(self._listeners)
        self._ready(listeners)

    def _ready(self, listeners: list[ConnectionListener]) -> None:
        """Connected with every subscription in place: announce presence, tell listeners."""
        if self._presence is not None:
            self._publish_presence(self._presence.online)
        self._connected.set()
        log.info("mqtt: connected to %s:%d", self.config.host, self.config.port)
        self._check_cert()
        self._notify(listeners, True)

    def _publish_presence(self, payload: bytes) -> Publish | None:
        """Presence, unless the packet limit refuses it: said, never raised into paho."""
        assert self._presence is not None
        try:
            return self.publish(self._presence.topic, payload, retain=True)
        except PacketTooLarge as exc:
            log.error("mqtt: presence not published: %s", exc)
            return None

    def _check_cert(self) -> None:
        """On every start and connect: say so when the client certificate has run out
        (the broker refuses it) or runs out within ``CERT_WARN_DAYS``."""
        if self.cert_expires is None or self.config.tls is None:
            return
        left_s = self.cert_expires - time.time()
        if left_s >= CERT_WARN_DAYS * 86400:
            return
        cert = self.config.tls.cert
        end = datetime.datetime.fromtimestamp(self.cert_expires, datetime.UTC)
        when = end.strftime("%Y-%m-%d %H:%M UTC")
        fix = "issue a new one and restart (docs/security.md, Rotating a certificate)"
        if left_s <= 0:
            log.error(
                "mqtt: client certificate %s expired on %s: the broker refuses it; %s",
                cert,
                when,
                fix,
            )
        else:
            log.warning(
                "mqtt: client certificate %s expires on %s, in %.0f days: %s",
                cert,
                when,
                left_s / 86400,
                fix,
            )

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._count_connect_failure()

    def _count_connect_failure(self) -> None:
        with self._lock:
            self.counters.connect_failures += 1

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        accepted, self._accepted = self._accepted, False
        self._connected.clear()
        with self._lock:
            listeners = list(self._listeners)
            self.counters.last_disconnect = str(reason)
            if not was_connected:
                self.counters.connect_failures += 1
        # A connection the broker accepted, ready or not: the message paho resends on a
        # reconnect goes out before the subscriptions are confirmed.
        if accepted and not self._stopping:
            self._drop_watch.dropped(self._registry.largest_pending())
        if was_connected:
            if not self._stopping:
                log.warning("mqtt: disconnected from %s: %s", self.config.host, reason)
            self._notify(listeners, False)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._registry.puback(mid)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._registry.dispatch(message)

    def _notify(self, listeners: list[ConnectionListener], up: bool) -> None:
        for listener in listeners:
            try:
                listener(up)
            except Exception:
                log.exception("mqtt: connection listener failed")
