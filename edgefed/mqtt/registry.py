"""The subscription and acknowledgement registry of the MQTT adapter, with no network of its
own: the client hands it paho's messages and PUBACKs, and it answers through the ``ack``
function it was given.

- Handlers per topic filter, plain or acked; every connection is a new session.
- Counted dispatch that contains failures: a handler raising ``ProtocolError`` counts the
  message as dropped, any other exception counts as a handler error; neither escapes.
- A message is acknowledged to the broker (PUBACK) once its handlers have returned, or, if
  acked handlers matched, once each of them has called its one-shot ``ack`` (from any
  thread): a message whose effect is not yet stored when the process dies is then
  delivered again. An ack left over from an earlier session is void (the broker sends the
  message again on the new one). A handler that raises has its ack called for it.
- QoS 1 publish tickets (``Publish``), completed by the broker's PUBACK, which can arrive
  before the ticket exists (paho sends from another thread as soon as it is asked to).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import paho.mqtt.client as paho

from edgefed.counters import Counters
from edgefed.errors import ProtocolError
from edgefed.outage import Outage, Repeats

log = logging.getLogger("edgefed.mqtt")

Handler = Callable[[str, bytes], None]
Ack = Callable[[], None]
AckedHandler = Callable[[str, bytes, Ack], None]
AckCallback = Callable[[], None]
SendAck = Callable[[int, int], object]  # (mid, qos): paho's ``Client.ack``


class Message(Protocol):
    """What dispatch reads of a received message (``paho.MQTTMessage``)."""

    @property
    def topic(self) -> str: ...  # raises UnicodeDecodeError for a topic that is not UTF-8
    @property
    def payload(self) -> bytes | bytearray: ...
    @property
    def mid(self) -> int: ...
    @property
    def qos(self) -> int: ...


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
    size: int = 0  # bytes of its MQTT packet

    def wait(self, timeout: float | None = None) -> bool:
        return self.acked.wait(timeout)


class SubscriptionRegistry:
    """Handlers by filter, dispatch with counted failures, acks per session, publish tickets.

    ``lock`` guards the registry and ``counters`` (the client shares both with it)."""

    def __init__(
        self, counters: MqttCounters, send_ack: SendAck, lock: threading.Lock | None = None
    ) -> None:
        self.counters = counters
        self._send_ack = send_ack
        self._lock = lock if lock is not None else threading.Lock()
        # per filter: (handler, acked); an acked handler acknowledges the message itself
        self._handlers: dict[str, list[tuple[Callable[..., None], bool]]] = {}
        self._session = 0  # counts connections: an ack left from an earlier one is void
        self._pending: dict[int, Publish] = {}
        self._early: set[int] = set()
        # a peer can send bad messages by the thousand: a line per message would flood the log
        self._drops = Repeats(log)
        self._faults: dict[str, Outage] = {}  # per filter: a failing handler is one outage

    # --- subscriptions and dispatch

    def add(self, topic_filter: str, handler: Callable[..., None], acked: bool) -> None:
        """Register ``handler`` for ``topic_filter``; ``acked``: it takes an ``ack`` too."""
        with self._lock:
            self._handlers.setdefault(topic_filter, []).append((handler, acked))
            self._faults.setdefault(topic_filter, Outage(log, f"mqtt: handler for {topic_filter}"))

    def new_session(self) -> list[str]:
        """A new connection: acks handed out before it are void. Returns every filter."""
        with self._lock:
            self._session += 1
            return list(self._handlers)

    def dispatch(self, message: Message) -> None:
        """Run the handlers matching ``message``; acknowledge it when they are done with it."""
        with self._lock:
            self.counters.messages_in += 1
            session = self._session
        try:
            topic = message.topic
        except UnicodeDecodeError:
            with self._lock:
                self.counters.dropped += 1
                self.counters.last_drop = "topic is not UTF-8"
            self._send_ack(message.mid, message.qos)
            return
        with self._lock:
            handlers = [
                (*h, self._faults[f])
                for f, hs in self._handlers.items()
                if paho.topic_matches_sub(unshared(f), topic)
                for h in hs
            ]
        acked_handlers = sum(1 for _, acked, _ in handlers if acked)
        acks = self._acks(message.mid, message.qos, session, acked_handlers)
        payload = bytes(message.payload)
        for handler, acked, faults in handlers:
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
                self._drops("dropped", f"mqtt: dropped a message on {topic}: {exc}")
            except Exception as exc:
                with self._lock:
                    self.counters.handler_errors += 1
                faults.failed(exc)
            else:
                faults.ok()
                continue
            if ack is not None:
                ack()
        if not acked_handlers:  # the handlers are done with it
            self._send_ack(message.mid, message.qos)

    def _acks(self, mid: int, qos: int, session: int, count: int) -> list[Ack]:
        """``count`` one-shot acks of message ``mid``: the PUBACK goes when all are called,
        unless the connection it came on has gone since."""
        left = [count]

        def ack() -> None:
            with self._lock:
                left[0] -= 1
                due = left[0] == 0 and session == self._session
            if due:
                self._send_ack(mid, qos)

        return [_once(ack) for _ in range(count)]

    # --- publish tickets

    def published(
        self, mid: int, topic: str, on_ack: AckCallback | None = None, size: int = 0
    ) -> Publish:
        """The ticket of a publish paho took as ``mid`` (a ``size``-byte packet); complete
        already if its PUBACK came."""
        ticket = Publish(mid, topic, on_ack=on_ack, size=size)
        with self._lock:
            self.counters.messages_out += 1
            if mid in self._early:
                self._early.discard(mid)
                acked_already = True
            else:
                self._pending[mid] = ticket
                acked_already = False
        if acked_already:
            self._complete(ticket)
        return ticket

    def puback(self, mid: int) -> None:
        """The broker's PUBACK of ``mid``: complete its ticket, or keep it for the ticket."""
        with self._lock:
            if mid in self._pending:
                ticket = self._pending.pop(mid)
            else:
                self._early.add(mid)
                return
        self._complete(ticket)

    def largest_pending(self) -> Publish | None:
        """The largest publish still awaiting its PUBACK (None: none is)."""
        with self._lock:
            return max(self._pending.values(), key=lambda t: t.size, default=None)

    def forget_publishes(self) -> None:
        """Stopped: tickets still waiting never complete; mids start over."""
        with self._lock:
            self._pending.clear()
            self._early.clear()

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


def unshared(topic_filter: str) -> str:
    """The filter a shared subscription (``$share/<group>/<filter>``, MQTT 5 and mosquitto
    with 3.1.1) matches topics with; any other filter as it is."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return topic_filter


def _once(call: Callable[[], None]) -> Callable[[], None]:
    """``call``, run on the first call only (from any thread)."""
    first = threading.Lock()

    def once() -> None:
        if first.acquire(blocking=False):  # never released: later calls do nothing
            call()

    return once
