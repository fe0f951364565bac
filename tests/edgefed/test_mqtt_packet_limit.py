"""The broker's packet size limit on a real mosquitto with ``max_packet_size`` set.

MQTT 3.1.1 cannot tell a client the broker's limit; mosquitto closes the connection of a
client that sends a larger packet, and paho sends the unacknowledged message again on
every reconnect: the link was wedged for good. The adapter now refuses such a publish
unsent (``max_packet_bytes``), and says what is likely wrong when it was not told.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefed.mqtt import PacketTooLarge, Publish, publish_packet_bytes
from edgefed.mqtt.packet import SUSPECT_BYTES, SUSPECT_DROPS, DropWatch, remaining_length
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until

LIMIT = 200_000  # mosquitto's max_packet_size in these tests
TOPIC = "edgefed/limit/t"


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto closing the connection of any client that sends a packet over ``LIMIT``."""
    with Broker(tmp_path / "broker", max_packet_size=LIMIT) as broker:
        yield broker


def payload_for(packet_bytes: int) -> bytes:
    """A payload whose PUBLISH to ``TOPIC`` is exactly ``packet_bytes`` on the wire."""
    size = packet_bytes - publish_packet_bytes(TOPIC, 0)
    while publish_packet_bytes(TOPIC, size) > packet_bytes:  # the length's own bytes
        size -= 1
    assert publish_packet_bytes(TOPIC, size) == packet_bytes
    return b"x" * size


def test_an_oversize_publish_is_refused_unsent_and_the_link_stays_up(limited: Broker) -> None:
    """Before, the 1 MB message went to paho, mosquitto closed the link, and every
    reconnect sent it again: the client reconnected about once a second, for good, and
    nothing after it got through."""
    reader = limited.started_client("reader", reconnect_max_s=1)
    got: list[bytes] = []
    reader.subscribe(f"{TOPIC}/#", lambda topic, payload: got.append(payload))
    writer = limited.started_client("writer", reconnect_max_s=1, max_packet_bytes=LIMIT)
    try:
        with pytest.raises(PacketTooLarge) as refused:
            writer.publish(f"{TOPIC}/big", b"\xff" * 1_000_000)
        size = publish_packet_bytes(f"{TOPIC}/big", 1_000_000)
        assert refused.value.size == size and refused.value.limit == LIMIT
        text = str(refused.value)
        assert f"'{TOPIC}/big'" in text and f"{size}-byte" in text
        assert f"mqtt.max_packet_bytes = {LIMIT}" in text
        assert writer.publish(f"{TOPIC}/small", b"after").wait(5)
        wait_until("the small message delivered", lambda: got == [b"after"], 5)
        time.sleep(2)  # two reconnects' worth, had the broker dropped it
        assert writer.connected and writer.counters.connects == 1
        assert writer.counters.messages_out == writer.counters.acked == 1
    finally:
        writer.stop()
        reader.stop()


def test_the_packet_size_is_mosquittos_to_the_byte(limited: Broker) -> None:
    """mosquitto 2.0 takes a packet whose remaining length + 1 is at most max_packet_size
    (its count leaves out the length's own 1-4 bytes): one byte under and one over that
    bound, through a client told no limit, pin every other byte the adapter counts. The
    adapter's count of the whole packet is then stricter by those bytes: at the limit it
    sends, one byte over it refuses."""
    room = remaining_length(TOPIC, 0)
    free = limited.started_client("free", reconnect_max_s=1)
    try:  # the broker's own bound: remaining length LIMIT - 1 passes, LIMIT does not
        assert free.publish(TOPIC, b"u" * (LIMIT - 1 - room)).wait(5)
        dropped = free.publish(TOPIC, b"o" * (LIMIT - room))
        assert not dropped.wait(2) and free.counters.reconnects >= 1
    finally:
        free.stop()
    told = limited.started_client("told", reconnect_max_s=1, max_packet_bytes=LIMIT)
    try:
        assert told.publish(TOPIC, payload_for(LIMIT)).wait(5)
        with pytest.raises(PacketTooLarge):
            told.publish(TOPIC, payload_for(LIMIT) + b"x")
        assert told.counters.reconnects == 0
    finally:
        told.stop()


def test_a_broker_that_keeps_dropping_the_link_over_a_large_message_is_named(
    limited: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Not told the limit, the client cannot refuse the message; the same one unacknowledged
    across three lost connections in a row is said as the likely cause, with the setting."""
    caplog.set_level(logging.WARNING, logger="edgefed.mqtt")
    client = limited.started_client("untold", reconnect_max_s=1)
    try:
        assert not client.publish(TOPIC, b"z" * (2 * LIMIT)).wait(1)
        wait_until("the cause said", lambda: _named(caplog), 15)
        assert client.counters.reconnects >= SUSPECT_DROPS - 1
    finally:
        client.stop()
    (line,) = _named(caplog)
    assert f"{publish_packet_bytes(TOPIC, 2 * LIMIT)}-byte publish to '{TOPIC}'" in line
    assert "packet size limit" in line and "(unset)" in line


def _named(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "max_packet_bytes" in r.getMessage()]


def test_drops_with_other_or_small_messages_unacknowledged_are_not_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A network that drops the link now and then, with whatever is in flight: a different
    message each time, a small one, or none between, is no sign of the broker's limit."""
    caplog.set_level(logging.WARNING, logger="edgefed.mqtt")
    watch = DropWatch(None)

    def big(mid: int) -> Publish:
        return Publish(mid, TOPIC, size=SUSPECT_BYTES)

    for pending in (big(1), big(2), big(3), big(4), None, big(4), big(4), Publish(4, TOPIC)):
        watch.dropped(pending)
    watch.dropped(big(4))
    watch.dropped(big(4))
    assert watch.drops == SUSPECT_DROPS - 1 and not _named(caplog)
    watch.dropped(big(4))
    assert len(_named(caplog)) == 1
