"""The sample offer edged publishes (retained) for serverd's round selection, on a real
mosquitto that is down, then up."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from edged.federation.samples import SampleStore
from edged.federation.service import EdgeFederation
from edged.offload.serverclock import ServerClock
from edgefed.clock import now_ms
from edgefed.federation_wire import FederationTopics, SampleOffer, decode
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until


def test_no_offer_piles_up_while_the_broker_is_away(tmp_path: Path) -> None:
    """Offers made while offline were queued in paho's memory without bound (one every
    interval, for as long as the broker was away) and all sent, stale, on reconnect. Now
    none is made offline and the first connection gets one at once."""
    topics = FederationTopics()
    broker = Broker(tmp_path / "broker")
    mqtt = MqttClient(
        MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="edge-0",
            reconnect_min_s=1,
            reconnect_max_s=1,
        )
    )
    store = SampleStore(tmp_path / "samples.db")
    allowed = threading.Event()
    fed = EdgeFederation(mqtt, topics, "edge-0", store, [], {}, allowed, offer_interval_s=0.02)
    mqtt.start()
    fed.start()
    try:
        time.sleep(1.0)  # ~50 intervals with the broker down
        assert fed.offers_sent == 0
        with broker:
            assert mqtt.wait_connected(10)
            offers: queue.Queue[bytes] = queue.Queue()
            watcher = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="w"))
            watcher.subscribe(topics.filter("samples"), lambda t, p: offers.put(p))
            watcher.start()
            try:
                assert watcher.wait_connected(10)
                assert offers.get(timeout=10)  # the retained offer, or a fresh one
                wait_until("an offer counted", lambda: fed.offers_sent >= 1)  # after publishing
            finally:
                watcher.stop()
    finally:
        fed.stop()
        mqtt.stop()


def test_offers_are_stamped_on_serverds_clock_once_the_device_knows_it(tmp_path: Path) -> None:
    """serverd dates the first offer it hears of an edged run by its ``sent_ms`` (it may
    be a retained copy of any age) and counts it for ``offer_ttl_s`` (2 min): a device
    three hours behind, stamping its own time, waited for its next offer. edged stamps
    offers on the ServerClock its offload replies teach, and numbers them in its run."""
    topics = FederationTopics()
    with Broker(tmp_path / "broker") as broker:
        mqtt = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="edge-0"))
        clock = ServerClock(local=lambda: now_ms() - 3 * 3_600_000)
        clock.observe(now_ms())  # an offload reply: serverd's time (the real clock here)
        store = SampleStore(tmp_path / "samples.db")
        allowed = threading.Event()
        allowed.set()
        fed = EdgeFederation(mqtt, topics, "edge-0", store, [], {}, allowed, clock=clock)
        offers: queue.Queue[bytes] = queue.Queue()
        watcher = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="w"))
        watcher.subscribe(topics.filter("samples"), lambda t, p: offers.put(p))
        watcher.start()
        mqtt.start()
        fed.start()
        try:
            assert watcher.wait_connected(10)
            offer = decode(offers.get(timeout=10))
            assert isinstance(offer, SampleOffer)
            assert abs(offer.sent_ms - now_ms()) < 5_000  # serverd's time, not 3 h before
            fed.changed()  # the next offer of the run: serverd dates it on its arrival
            again = decode(offers.get(timeout=10))
            assert isinstance(again, SampleOffer) and again.run == offer.run != ""
            assert again.seq == offer.seq + 1
        finally:
            fed.stop()
            mqtt.stop()
            watcher.stop()


def test_a_link_up_before_the_federation_starts_offers_at_once(tmp_path: Path) -> None:
    """The connection came up before ``start`` listened for it: the first offer waited
    a whole ``offer_interval_s`` (30 s), and serverd's rounds went without the device."""
    topics = FederationTopics()
    with Broker(tmp_path / "broker") as broker:
        offers: queue.Queue[bytes] = queue.Queue()
        watcher = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="w"))
        watcher.subscribe(topics.filter("samples"), lambda t, p: offers.put(p))
        watcher.start()
        mqtt = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="edge-0"))
        mqtt.start()
        allowed = threading.Event()
        allowed.set()
        store = SampleStore(tmp_path / "samples.db")
        fed = EdgeFederation(mqtt, topics, "edge-0", store, [], {}, allowed)
        try:
            assert watcher.wait_connected(10) and mqtt.wait_connected(10)
            fed.start()
            assert isinstance(decode(offers.get(timeout=10)), SampleOffer)
        finally:
            fed.stop()
            mqtt.stop()
            watcher.stop()
