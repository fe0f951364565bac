"""A thin paho-mqtt 2.2 adapter shared by edged and serverd.

What it adds to paho: TCP_NODELAY on every socket it opens (without it each QoS 1
round trip costs ~88 ms of Nagle + delayed ACK), TLS with client certificates from
config, a retained presence message with a matching Last Will, automatic reconnect
with capped backoff, a subscription registry re-applied on every reconnect, QoS 1
publishes that report their PUBACK, and a handler dispatch that contains failures:
a handler raising ``ProtocolError`` counts the message as dropped, any other
exception counts as a handler error; the network loop never dies of either.

A message is acknowledged to the broker (PUBACK) once its handlers have returned, or, for
a ``subscribe_acked`` handler, once that handler calls its ``ack``: a message whose
effect is not yet stored when the process dies is then delivered again.

Handlers run on paho's network thread and must be quick; hand work to your own thread.
Asyncio code passes its loop to ``start`` instead: the loop then drives the connection
itself (reads, writes, keep-alive; connecting and TLS handshakes on its executor), and
handlers and PUBACK callbacks run on the loop's thread with no hand-off per message.
A publish on the loop's thread (outside a handler) is written to the socket at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from edgefed.counters import Counters
from edgefed.errors import ConfigError, OffloadError, ProtocolError
from edgefed.wire import Availability, encode_message

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
Ack = Callable[[], None]
AckedHandler = Callable[[str, bytes, Ack], None]
AckCallback = Callable[[], None]
ConnectionListener = Callable[[bool], None]


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


@dataclass(frozen=True)
class Presence:
    """A retained presence topic: ``online`` on every connect, ``offline`` as Last Will."""

    topic: str
    online: bytes
    offline: bytes


@dataclass
class MqttCounters(Counters):
    messages_in: int = 0
    messages_out: int = 0
    acked: int = 0
    dropped: int = 0
    handler_errors: int = 0
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    last_drop: str = ""
    last_disconnect: str = ""


@dataclass
class Publish:
    """A QoS 1 publish; ``acked`` is set when the broker's PUBACK arrives."""

    mid: int
    topic: str
    acked: threading.Event = field(default_factory=threading.Event)
    on_ack: AckCallback | None = None

    def wait(self, timeout: float | None = None) -> bool:
        return self.acked.wait(timeout)


def presence(topic: str, online: Availability) -> Presence:
    """Presence payloads from the ``online`` availability message and its offline twin."""
    offline = online.model_copy(update={"state": "offline"})
    return Presence(topic, encode_message(online), encode_message(offline))


def tls_context(tls: MqttTls) -> ssl.SSLContext:
    """Build the client TLS context; unreadable files raise ``ConfigError``."""
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError("mqtt tls: give both cert and key, or neither")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
        if tls.cert is not None and tls.key is not None:
            context.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt tls: cannot load certificates: {exc}") from exc
    context.check_hostname = not tls.insecure
    return context


class MqttClient:
    """One broker connection with reconnect, presence, subscriptions and counted dispatch."""

    def __init__(self, config: MqttConfig, presence: Presence | None = None) -> None:
        self.config = config
        self.counters = MqttCounters()
        self._presence = presence
        self._lock = threading.Lock()
        # per filter: (handler, acked); an acked handler acknowledges the message itself
        self._handlers: dict[str, list[tuple[Callable[..., None], bool]]] = {}
        self._session = 0  # counts connections: an ack left from an earlier one is void
        self._pending: dict[int, Publish | None] = {}
        self._early: set[int] = set()
        self._listeners: list[ConnectionListener] = []
        self._connected = threading.Event()
        self._started = False
        self._stopping = False
        self._resubscribe_mid: int | None = None
        # loop mode (``start(loop)``): the loop, the task driving the connection, and the
        # state of its reconnect backoff
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: concurrent.futures.Future[None] | None = None
        self._socket_closed = threading.Event()
        self._reading = False  # in paho's loop_read (its handlers and callbacks run there)
        self._retry_delay = float(config.reconnect_min_s)
        self._last_attempt_failed = False
        self._client = self._make_client()

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
        with self._lock:
            self._handlers.setdefault(topic_filter, []).append((handler, acked))
        if self._client.is_connected():  # paho's state: set before on_connect runs
            self._client.subscribe(topic_filter, qos=1)

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, on_ack: AckCallback | None = None
    ) -> Publish:
        """Publish at QoS 1. While offline paho queues it and sends it on reconnect."""
        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        except ValueError as exc:
            raise OffloadError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise OffloadError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        ticket = Publish(info.mid, topic, on_ack=on_ack)
        with self._lock:
            self.counters.messages_out += 1
            if info.mid in self._early:
                self._early.discard(info.mid)
                acked_already = True
            else:
                self._pending[info.mid] = ticket
                acked_already = False
        if acked_already:
            self._complete(ticket)
        return ticket

    def socket_nodelay(self) -> bool:
        """Whether the current socket has TCP_NODELAY (False when not connected)."""
        sock = self._client.socket()
        if not isinstance(sock, socket.socket):
            return False
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Connect in the background and keep reconnecting until ``stop``.

        Without ``loop``, paho's own thread runs the connection. With ``loop``, that
        asyncio loop does (see the module doc); ``stop`` must then be called from
        another thread, such as ``asyncio.to_thread``.
        """
        if self._started:
            return
        self._started = True
        try:
            self._client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        except (OSError, ValueError) as exc:
            raise OffloadError(f"mqtt: cannot connect to {self.config.host}: {exc}") from exc
        if loop is None:
            self._client.loop_start()
            return
        self._loop = loop
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = self._on_unregister_write
        self._driver = asyncio.run_coroutine_threadsafe(self._drive(), loop)

    def stop(self, timeout: float = 2.0) -> None:
        """Publish ``offline`` (a clean disconnect sends no Last Will), then disconnect."""
        if not self._started:
            return
        if self._loop is not None and _running_loop() is self._loop:
            raise RuntimeError("stop a loop-driven MqttClient from another thread")
        self._started = False
        self._stopping = True
        if self._presence is not None and self.connected:
            self.publish(self._presence.topic, self._presence.offline, retain=True).wait(timeout)
        if self._driver is None:
            self._client.disconnect()
            self._client.loop_stop()
        else:
            self._driver.cancel()
            if self._client.socket() is not None:
                self._client.disconnect()  # the loop sends it and closes the socket
                self._socket_closed.wait(timeout)
        self._connected.clear()
        with self._lock:
            self._pending.clear()
            self._early.clear()
        self._stopping = False

    def _make_client(self) -> paho.Client:
        cfg = self.config
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=cfg.clean_session,
            protocol=paho.MQTTv311,
            manual_ack=True,  # see _on_message
        )
        client.enable_logger(log)
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

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._loop is not None:
            self._socket_closed.clear()
            self._in_loop(self._loop.add_reader, sock.fileno(), self._read)

    # --- loop mode: paho's external-loop callbacks, from the loop or the connecting thread

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        fd = sock.fileno()  # still open: paho closes it after this callback
        self._in_loop(self._loop.remove_reader, fd)
        self._in_loop(self._loop.remove_writer, fd)
        self._socket_closed.set()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        if not self._reading and _running_loop() is self._loop:
            # Write now rather than on the loop's next turn, after whatever its caller does
            # next (a commit, say). Not inside a read: paho is mid-packet there.
            client.loop_write()
            if not client.want_write():
                return  # all sent (paho has called on_socket_unregister_write)
        self._in_loop(self._loop.add_writer, sock.fileno(), client.loop_write)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._in_loop(self._loop.remove_writer, sock.fileno())

    def _read(self) -> None:
        self._reading = True
        try:
            self._client.loop_read()
        finally:
            self._reading = False

    def _in_loop(self, call: Callable[..., object], *args: Any) -> None:
        """Run ``call`` on the loop: now if this is its thread, else as soon as it can."""
        assert self._loop is not None
        if _running_loop() is self._loop:
            call(*args)
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nothing to register with
            self._loop.call_soon_threadsafe(call, *args)

    async def _drive(self) -> None:
        """(Re)connect with capped backoff and keep the connection alive, once a second."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        cap = float(max(cfg.reconnect_min_s, cfg.reconnect_max_s))
        while True:
            if self._client.socket() is None:
                if self._last_attempt_failed:
                    await asyncio.sleep(self._retry_delay)
                    self._retry_delay = min(self._retry_delay * 2, cap)
                self._last_attempt_failed = True  # until the broker's CONNACK (_on_connect)
                try:  # socket connect and TLS handshake block: off the loop
                    await loop.run_in_executor(None, self._client.reconnect)
                except Exception as exc:  # refused, unreachable, TLS: retried, never fatal
                    self._on_connect_fail(self._client, None)
                    log.debug("mqtt: cannot connect to %s:%d: %s", cfg.host, cfg.port, exc)
                    continue
            else:
                try:
                    self._client.loop_misc()  # keep-alive; a dead link closes the socket
                except Exception:
                    log.exception("mqtt: keep-alive check failed")
            await asyncio.sleep(1.0)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            with self._lock:
                self.counters.connect_failures += 1
            log.warning("mqtt: broker %s refused the connection: %s", self.config.host, reason)
            return
        self._last_attempt_failed = False
        self._retry_delay = float(self.config.reconnect_min_s)
        with self._lock:
            self._session += 1
            if self.counters.connects:
                self.counters.reconnects += 1
            self.counters.connects += 1
            filters = list(self._handlers)
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
            self.publish(self._presence.topic, self._presence.online, retain=True)
        self._connected.set()
        log.info("mqtt: connected to %s:%d", self.config.host, self.config.port)
        self._notify(listeners, True)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        with self._lock:
            self.counters.connect_failures += 1

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        with self._lock:
            listeners = list(self._listeners)
            self.counters.last_disconnect = str(reason)
            if not was_connected:
                self.counters.connect_failures += 1
        if was_connected:
            if not self._stopping:
                log.warning("mqtt: disconnected from %s: %s", self.config.host, reason)
            self._notify(listeners, False)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        with self._lock:
            if mid in self._pending:
                ticket = self._pending.pop(mid)
            else:
                self._early.add(mid)
                return
        if ticket is not None:
            self._complete(ticket)

    def _complete(self, ticket: Publish) -> None:
        with self._lock:
            self.counters.acked += 1
        ticket.acked.set()
        if ticket.on_ack is not None:
            try:
                ticket.on_ack()
            except Exception:
                with self._lock:
                    self.counters.handler_errors += 1
                log.exception("mqtt: PUBACK callback for %s failed", ticket.topic)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        """Dispatch to the matching handlers; acknowledge when they are done with it."""
        with self._lock:
            self.counters.messages_in += 1
            session = self._session
        try:
            topic = message.topic
        except UnicodeDecodeError:
            with self._lock:
                self.counters.dropped += 1
                self.counters.last_drop = "topic is not UTF-8"
            client.ack(message.mid, message.qos)
            return
        with self._lock:
            handlers = [
                h
                for f, hs in self._handlers.items()
                if paho.topic_matches_sub(f, topic)
                for h in hs
            ]
        acked_handlers = sum(1 for _, acked in handlers if acked)
        acks = self._acks(message, session, acked_handlers)
        payload = bytes(message.payload)
        for handler, acked in handlers:
            ack = acks.pop() if acked else None
            try:
                if ack is None:
                    handler(topic, payload)
                else:
                    handler(topic, payload, ack)
            except ProtocolError as exc:
                with self._lock:
                    self.counters.dropped += 1
                    self.counters.last_drop = f"{topic}: {exc}"
                log.warning("mqtt: dropped a message on %s: %s", topic, exc)
            except Exception:
                with self._lock:
                    self.counters.handler_errors += 1
                log.exception("mqtt: handler for %s failed", topic)
            else:
                continue
            if ack is not None:
                ack()
        if not acked_handlers:  # the handlers are done with it
            client.ack(message.mid, message.qos)

    def _acks(self, message: paho.MQTTMessage, session: int, count: int) -> list[Ack]:
        """``count`` one-shot acks of ``message``: the PUBACK goes when all are called,
        unless the connection it came on has gone since."""
        left = [count]
        mid, qos = message.mid, message.qos

        def ack() -> None:
            with self._lock:
                left[0] -= 1
                due = left[0] == 0 and session == self._session
            if due:
                self._client.ack(mid, qos)

        return [_once(ack) for _ in range(count)]

    def _notify(self, listeners: list[ConnectionListener], up: bool) -> None:
        for listener in listeners:
            try:
                listener(up)
            except Exception:
                log.exception("mqtt: connection listener failed")


def _once(call: Callable[[], None]) -> Callable[[], None]:
    """``call``, run on the first call only (from any thread)."""
    first = threading.Lock()

    def once() -> None:
        if first.acquire(blocking=False):  # never released: later calls do nothing
            call()

    return once


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
