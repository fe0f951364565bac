"""serverd's federation on a broker that caps the packet size, with serverd told the limit.

A global version goes out whole, in one retained message (edges take no chunked
version). Before, a version larger than the broker's limit went to paho, the broker
closed the connection for it, and serverd's reconnects, each announcing the version
again, wedged its whole link (job replies included), once a second for good.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefed.errors import FederationError
from edgefed.federation_wire import FederationTopics, RoundOpen, decode
from edgefed.images.federated import Base
from edgefed.mqtt import MqttClient
from edgefed.testing.broker import Broker
from serverd.federation.coordinator import Coordinator
from serverd.federation.images import VersionImager
from serverd.federation.rounds import Federation, Phase, RoundSettings

LIMIT = 200_000  # the broker's max_packet_size, and serverd's max_packet_bytes
CLASSES = 16  # a 64 x 64 pixel head of 16 classes: a 256 KB version


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker", max_packet_size=LIMIT) as broker:
        yield broker


def coordinator(mqtt: MqttClient) -> Coordinator:
    key = Ed25519PrivateKey.generate()
    params = [np.ones((64 * 64, CLASSES), np.float32), np.zeros(CLASSES, np.float32)]
    settings = RoundSettings(min_clients=1, quorum=1, min_samples=1)
    classes = [f"c{i}" for i in range(CLASSES)]
    imager = VersionImager("digits", Base.pixels(64, 64, 255.0), classes, key)
    return Coordinator(
        mqtt, FederationTopics(), Federation("digits", 1, params, settings), key, imager
    )


def test_a_version_larger_than_the_broker_takes_is_refused_and_the_link_stays_up(
    limited: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """The version is not sent, said as an error with its size and the setting, counted;
    serverd stays connected and the next round goes out."""
    caplog.set_level(logging.ERROR, logger="serverd.federation")
    edge = limited.started_client("edge", reconnect_max_s=1)
    rounds: queue.Queue[bytes] = queue.Queue()
    edge.subscribe(FederationTopics().round("digits"), lambda topic, data: rounds.put(data))
    serverd = limited.started_client("serverd", reconnect_max_s=1, max_packet_bytes=LIMIT)
    try:
        coord = coordinator(serverd)
        coord.announce()
        assert coord.counters.versions_unsent == 1 and coord.counters.versions_published == 0
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith("federation digits: v1 not sent to the edges")
        assert f"mqtt.max_packet_bytes = {LIMIT}" in line
        opened = coord.open_round({"edge": 100})
        received = decode(rounds.get(timeout=5))
        assert isinstance(received, RoundOpen) and received.round == opened.round
        time.sleep(2)  # two reconnects' worth, had the broker dropped the link
        assert serverd.connected and serverd.counters.connects == 1
    finally:
        serverd.stop()
        edge.stop()


def test_a_round_whose_message_the_broker_would_not_take_does_not_open(limited: Broker) -> None:
    """Its participants' ids make the round message larger than the (tiny) limit: the
    round is refused before it opens, as one whose header cannot be encoded is."""
    serverd = limited.started_client("serverd", reconnect_max_s=1, max_packet_bytes=1024)
    try:
        coord = coordinator(serverd)
        devices = {f"edge-{i:040d}": 100 for i in range(40)}
        with pytest.raises(FederationError, match=r"round 1 of digits cannot be sent: .*1024"):
            coord.open_round(devices)
        assert coord.federation.phase is Phase.IDLE and coord.counters.rounds_opened == 0
    finally:
        serverd.stop()
