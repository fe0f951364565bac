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

The parts:

- ``config``: ``MqttConfig``, ``MqttTls`` and ``tls_context``, ``Presence`` and ``presence``;
- ``packet``: the size of a PUBLISH packet, ``PacketTooLarge`` for one over the broker's
  limit (``MqttConfig.max_packet_bytes``, refused unsent: a broker closes the link for it,
  and paho would resend it on every reconnect), and the warning that names that cause
  when the limit is not set;
- ``registry``: subscriptions, counted dispatch, acks per session, publish tickets; no
  network of its own, so unit-testable without a broker;
- ``loopdriver``: the asyncio drive mode (readers, writers, the immediate write,
  reconnect with capped backoff, keep-alive);
- ``client``: ``MqttClient``, paho's client composed with the two above.
"""

from edgefed.mqtt.client import ConnectionListener, MqttClient
from edgefed.mqtt.config import MqttConfig, MqttTls, Presence, presence, tls_context
from edgefed.mqtt.packet import PacketTooLarge, publish_packet_bytes
from edgefed.mqtt.registry import (
    Ack,
    AckCallback,
    AckedHandler,
    Handler,
    MqttCounters,
    Publish,
)

__all__ = [
    "Ack",
    "AckCallback",
    "AckedHandler",
    "ConnectionListener",
    "Handler",
    "MqttClient",
    "MqttConfig",
    "MqttCounters",
    "MqttTls",
    "PacketTooLarge",
    "Presence",
    "Publish",
    "presence",
    "publish_packet_bytes",
    "tls_context",
]
