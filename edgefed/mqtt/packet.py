"""The size of an MQTT 3.1.1 PUBLISH packet, and the broker's packet limit it must fit.

Brokers cap the packet size (EMQX 1 MB by default, AWS IoT Core 128 KB, mosquitto's
``max_packet_size``; MQTT's own bound is 256 MB). MQTT 3.1.1 has no way to learn the cap,
and a broker answers a packet over it by closing the connection: paho then sends the
unacknowledged message again on the next connection (a persistent session), the broker
closes it again, and the link is wedged for good. So the adapter refuses, before paho
ever has it, a publish whose packet would exceed ``MqttConfig.max_packet_bytes``.

The size counted is the whole packet as MQTT defines it (section 2 and 3.3 of the
3.1.1 standard): the fixed header (one byte and the 1 to 4 bytes of the remaining
length), the topic with its 2-byte length, the 2-byte packet id of a QoS 1 message, and
the payload. Brokers count the same or a few bytes less (mosquitto 2.0 leaves out the
remaining length's own bytes), so a packet the adapter lets through is one they take.
"""

from __future__ import annotations

import logging

from edgefed.errors import OffloadError
from edgefed.mqtt.registry import Publish
from edgefed.outage import Repeats

log = logging.getLogger("edgefed.mqtt")
MQTT_MAX_REMAINING = 268_435_455  # the most a 4-byte remaining length can say
MQTT_MAX_PACKET = 1 + 4 + MQTT_MAX_REMAINING
SETTING = "mqtt.max_packet_bytes"
# A publish this large awaiting its PUBACK across this many dropped connections in a row
# is most likely over the broker's limit: AWS IoT Core's 128 KB is the lowest in common use,
# and the same message surviving three connections unacknowledged is no network blip.
SUSPECT_BYTES = 64 * 1024
SUSPECT_DROPS = 3


class PacketTooLarge(OffloadError):
    """A publish larger than the broker takes, refused before it was sent (the link is
    up and nothing is queued). Not worth retrying: the same bytes never fit."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        self.topic, self.size, self.limit = topic, size, limit
        super().__init__(
            f"a publish to {topic!r} would be a {size}-byte MQTT packet, more than the "
            f"broker's limit ({SETTING} = {limit}): not sent"
        )


def remaining_length(topic: str, payload_bytes: int) -> int:
    """What a QoS 1 PUBLISH's fixed header gives as its remaining length: the topic's
    2-byte length and UTF-8 bytes, the 2-byte packet id, the payload."""
    return 2 + len(topic.encode()) + 2 + payload_bytes


def publish_packet_bytes(topic: str, payload_bytes: int) -> int:
    """The whole QoS 1 PUBLISH packet on the wire, in bytes."""
    remaining = remaining_length(topic, payload_bytes)
    return 1 + _length_bytes(remaining) + remaining


def checked_size(topic: str, payload_bytes: int, limit: int | None) -> int:
    """The packet size of this publish; ``PacketTooLarge`` if it exceeds ``limit`` (None:
    MQTT's own bound, which paho enforces)."""
    size = publish_packet_bytes(topic, payload_bytes)
    if limit is not None and size > limit:
        raise PacketTooLarge(topic, size, limit)
    return size


class DropWatch:
    """Names the likely cause when the broker keeps closing the connection while one
    large publish awaits its PUBACK: a packet over the broker's limit, unknown to the
    adapter (``max_packet_bytes`` unset, or set above the broker's), which paho sends
    again on every reconnect. Told each lost connection's largest unacknowledged
    publish; a warning once ``SUSPECT_DROPS`` in a row had the same one (at most one a
    minute). It only explains: the message stays queued in paho."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._suspect: tuple[int, str] | None = None  # (mid, topic) at the last drops
        self._drops = 0
        self._said = Repeats(log)

    @property
    def drops(self) -> int:
        """Connections lost in a row with the same large publish unacknowledged."""
        return self._drops

    def dropped(self, largest: Publish | None) -> None:
        if largest is None or largest.size < SUSPECT_BYTES:
            self._suspect, self._drops = None, 0
            return
        key = (largest.mid, largest.topic)
        self._drops = self._drops + 1 if key == self._suspect else 1
        self._suspect = key
        if self._drops < SUSPECT_DROPS:
            return
        now = "unset" if self._limit is None else f"now {self._limit}, above the broker's"
        self._said(
            "oversize",
            f"mqtt: the broker closed the connection {self._drops} times in a row while a "
            f"{largest.size}-byte publish to {largest.topic!r} awaited its PUBACK, sent again "
            "on every reconnect: most likely it exceeds the broker's packet size limit "
            "(EMQX 1 MB by default, AWS IoT Core 128 KB, mosquitto's max_packet_size). "
            f"Set {SETTING} to the broker's limit ({now}) so such a publish is refused "
            "unsent; this one stays queued until the process restarts",
        )


def _length_bytes(remaining: int) -> int:
    """Bytes of the variable-length encoding of ``remaining`` (7 bits a byte)."""
    count = 1
    while remaining >= 128 and count < 4:
        remaining //= 128
        count += 1
    return count
