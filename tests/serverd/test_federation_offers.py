"""The edges' sample offers serverd remembers: at most ``max_devices`` of them, each with
the counts of the models serverd federates only, against an edge node's bridge that
offers for thousands of device ids in its namespace (the shipped ACL allows it)."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefed.clock import now_ms
from edgefed.federation_wire import FederationTopics, SampleOffer, encode, init_head
from edgefed.images.federated import Base
from edgefed.mqtt import MqttClient
from edgefed.mqtt.acl import render_acl
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from serverd.federation.coordinator import Coordinator
from serverd.federation.images import VersionImager
from serverd.federation.offers import OfferBook
from serverd.federation.rounds import Federation, RoundSettings
from serverd.federation.service import FederationService

BRIDGE = "edgefed-bridge-node1"
TOPICS = FederationTopics()
# 63 models serverd does not federate, with names as long as the wire allows
ELSEWHERE = {f"m{k:02d}-" + "x" * 60: 100 for k in range(63)}


def _offer(run: str = "", seq: int = 0, samples: dict[str, int] | None = None) -> SampleOffer:
    counts = samples or {"digits": 100}
    return SampleOffer(samples=counts, training_allowed=True, sent_ms=now_ms(), run=run, seq=seq)


def test_a_flood_of_device_ids_keeps_the_devices_heard_last_and_counts_the_evicted() -> None:
    """Every device id heard stayed for a week (20,000 ids held 33.5 MB); the book keeps
    ``max_devices``, evicting the one heard least recently. An honest edge offers again
    before the flood has sent ``max_devices`` new ids: it is never evicted."""
    book = OfferBook({"digits"}, max_devices=100)
    now = now_ms()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        book.hear("ns1/honest", _offer("run-h", 1), now, now)
        for i in range(20_000):
            book.hear(f"ns1/dev-{i:05d}", _offer(f"run-{i}", 1), now, now)
            if i % 50 == 0:  # the honest edge's next offer, every 50 of the flood's
                book.hear("ns1/honest", _offer("run-h", 2 + i // 50), now, now)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    flood = [f"ns1/dev-{i:05d}" for i in range(19_901, 20_000)]
    assert list(book) == [*flood[:50], "ns1/honest", *flood[50:]]
    assert book.counters.devices_evicted == 20_001 - 100
    assert book.counters.offers == 20_001 + 400
    assert grown < 100 * 1024, grown  # a hundred devices' offers, not twenty thousand


def test_a_copy_of_an_offer_already_heard_does_not_make_its_device_newer() -> None:
    """A copy a bridge sends again changes nothing, not even the device's place."""
    book = OfferBook({"digits"}, max_devices=2)
    now = now_ms()
    book.hear("a", _offer("r", 1), now, now)
    book.hear("b", _offer("r", 1), now, now)
    assert not book.hear("a", _offer("r", 1), now, now)
    book.hear("c", _offer("r", 1), now, now)
    assert list(book) == ["b", "c"]


def test_an_offer_keeps_the_counts_of_the_models_federated_here_only() -> None:
    """An offer may name 64 models of any length; serverd federates a few. The others'
    counts were kept a week per device (127 MB for 2,000 devices, each status 116 MB)."""
    book = OfferBook({"digits", "people"}, max_devices=10)
    now = now_ms()
    book.hear(
        "a",
        _offer(samples={"digits": 40, "people": 3, **dict(list(ELSEWHERE.items())[:62])}),
        now,
        now,
    )
    kept = book.get("a")
    assert kept is not None and kept.samples == {"digits": 40, "people": 3}
    assert book.counters.offered_models_unknown == 62


class Site:
    """serverd's federation of ``digits`` on a broker running the shipped ACL with one
    edge node's bridge identity, whose namespace is ``ns1``."""

    def __init__(self, root: Path, max_devices: int) -> None:
        self.broker = Broker(root / "broker", identities=["serverd", BRIDGE])
        (self.broker.directory / "edgefed.acl").write_text(render_acl(bridges={BRIDGE: "ns1"}))
        self.broker.start()
        self.server = MqttClient(self.broker.client_config("serverd"))
        key = Ed25519PrivateKey.generate()
        settings = RoundSettings(min_clients=3, quorum=3, min_samples=10)
        federation = Federation("digits", 1, init_head(64, 10), settings)
        imager = VersionImager("digits", Base.pixels(8, 8, 16.0), list("0123456789"), key)
        coordinator = Coordinator(self.server, TOPICS, federation, key, imager)
        self.service = FederationService(
            self.server, TOPICS, [coordinator], max_devices=max_devices
        )
        self.service.start()
        self.bridge = MqttClient(self.broker.client_config(BRIDGE, max_inflight=1000))
        for client in (self.server, self.bridge):
            client.start()
            assert client.wait_connected(20)

    def offer(self, device: str, offer: SampleOffer) -> None:
        assert self.bridge.publish(TOPICS.samples(device), encode(offer)).wait(10)

    def stop(self) -> None:
        self.bridge.stop()
        self.server.stop()
        self.broker.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    running = Site(tmp_path, max_devices=200)
    yield running
    running.stop()


def test_a_bridge_offering_for_a_thousand_device_ids_leaves_serverd_a_bounded_status(
    site: Site,
) -> None:
    """One bridge identity may offer for any ``ns1/`` device: 1,000 ids, each offer
    naming 64 models. serverd keeps the 200 heard last with their ``digits`` count only,
    counts the rest, and an honest edge offering after the flood is chosen for a round."""
    flood = [f"ns1/dev-{i:05d}" for i in range(1000)]
    for i, device in enumerate(flood):
        publish = site.bridge.publish(
            TOPICS.samples(device), encode(_offer(f"run-{i}", 1, {"digits": 100, **ELSEWHERE}))
        )
        if i % 200 == 199:
            assert publish.wait(10)
    counters = site.service.counters
    wait_until("every offer", lambda: counters.offers == len(flood), timeout=60)
    edges = site.service.status()["edges"]
    assert sorted(edges) == flood[-200:]
    assert counters.devices_evicted == 800
    assert counters.offered_models_unknown == 63 * len(flood)
    assert all(e["samples"] == {"digits": 100} for e in edges.values())
    assert len(json.dumps(edges)) < 200 * 200  # before: every model's name, 1,000 devices
    for name in ("ns1/edge-a", "ns1/edge-b", "ns1/edge-c"):
        site.offer(name, _offer("run-x", 1, {"digits": 50}))
    wait_until("the honest edges", lambda: counters.offers == len(flood) + 3)
    opened = site.service.start_round("digits")
    assert {"ns1/edge-a", "ns1/edge-b", "ns1/edge-c"} <= set(opened.participants)
    assert len(site.service.status()["edges"]) == 200
