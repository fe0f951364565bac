"""serverd's federation over more devices than one round takes, on a real broker: a round
names at most ``max_participants`` and no more than its message's header holds, it is
built before it opens and published, and a model whose round cannot open, or whose tick
fails, never stops another model's."""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefed.clock import now_ms
from edgefed.federation_wire import (
    FederationTopics,
    RoundOpen,
    SampleOffer,
    decode,
    encode,
    init_head,
)
from edgefed.images.federated import Base
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from edgefed.wire import MAX_HEADER_BYTES
from serverd.federation.coordinator import Coordinator
from serverd.federation.images import VersionImager
from serverd.federation.rounds import Federation, Phase, RoundSettings
from serverd.federation.service import FederationService

TOPICS = FederationTopics()
MODELS = ("wide", "narrow")  # each a head of 4 features and 2 classes


def _long_id(i: int) -> str:
    """A device id as long as the wire allows: 63 characters, a slash, 63 more."""
    return f"{'n' * 59}{i:04d}/{'d' * 59}{i:04d}"


class Site:
    """serverd's federation of ``MODELS`` on a broker, a client offering for as many
    devices as a test names, and an edge's view of each published round."""

    def __init__(
        self,
        broker: Broker,
        interval_ms: int | None = None,
        max_participants: int = 1000,
        timeout_ms: int = 120_000,
        wide_min_clients: int = 3,
    ) -> None:
        key = Ed25519PrivateKey.generate()
        self.server = MqttClient(MqttConfig(port=broker.port, client_id="serverd"))
        self.coordinators = []
        for model in MODELS:
            needs = wide_min_clients if model == "wide" else 3
            settings = RoundSettings(needs, 3, 10, timeout_ms, max_participants=max_participants)
            self.coordinators.append(
                Coordinator(
                    self.server,
                    TOPICS,
                    Federation(model, 1, init_head(4, 2), settings),
                    key,
                    VersionImager(model, Base.pixels(4, 1, 255.0), ["no", "yes"], key),
                )
            )
        self.service = FederationService(
            self.server, TOPICS, self.coordinators, interval_ms=interval_ms
        )
        self.service.start()
        self.rounds: queue.Queue[RoundOpen] = queue.Queue()
        self.fleet = MqttClient(MqttConfig(port=broker.port, client_id="fleet", max_inflight=1000))
        self.fleet.subscribe(TOPICS.filter("round"), self._on_round)
        for client in (self.server, self.fleet):
            client.start()
            assert client.wait_connected(10)

    def _on_round(self, topic: str, payload: bytes) -> None:
        message = decode(payload)  # as an edge decodes it: a header over 64 KiB is refused
        if isinstance(message, RoundOpen):
            self.rounds.put(message)

    def offer(self, devices: list[str]) -> None:
        """Each device offers 20 samples of every model."""
        for device in devices:
            offer = SampleOffer(
                samples=dict.fromkeys(MODELS, 20), training_allowed=True, sent_ms=now_ms()
            )
            self.fleet.publish(TOPICS.samples(device), encode(offer))
        wait_until("the offers", lambda: len(self.service.available("wide")) == len(devices))

    def stop(self) -> None:
        self.fleet.stop()
        self.server.stop()


@pytest.fixture
def make_site(broker: Broker) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def make(**settings: int) -> Site:
        site = Site(broker, **settings)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.stop()


def test_a_round_over_more_devices_than_max_participants_opens_with_that_many_and_is_published(
    make_site: Callable[..., Site],
) -> None:
    site = make_site(max_participants=50)
    devices = [f"edge-{i:03d}" for i in range(120)]
    site.offer(devices)
    opened = site.service.start_round("wide")
    assert len(opened.participants) == 50 and set(opened.participants) <= set(devices)
    published = site.rounds.get(timeout=10)
    assert (published.model, published.participants) == ("wide", opened.participants)
    assert site.service.status()["models"]["wide"]["participants"] == opened.participants


def test_a_round_over_ids_too_long_for_one_message_names_those_that_fit_and_is_published(
    make_site: Callable[..., Site],
) -> None:
    """600 devices with the longest ids the wire allows: their list is 78 KB, the round
    message's header holds 64 KiB. Before, the round opened with all 600, its message
    could not be encoded (a ``ProtocolError`` out of the tick), no edge heard of it and
    it failed at its deadline, again every interval."""
    site = make_site()
    devices = [_long_id(i) for i in range(600)]
    site.offer(devices)
    opened = site.service.start_round("wide")
    assert 450 <= len(opened.participants) < 600
    assert len(opened.model_dump_json()) <= MAX_HEADER_BYTES
    assert site.rounds.get(timeout=10).participants == opened.participants


def test_a_model_whose_round_cannot_be_sent_does_not_stop_the_other_models_tick(
    make_site: Callable[..., Site], caplog: pytest.LogCaptureFixture
) -> None:
    """``wide`` needs 600 participants, more long ids than a round message holds: its
    round does not open (counted, the reason logged) and stays idle; ``narrow``'s round
    opens in the same tick and is published. Before, ``wide`` went on collecting a round
    no edge heard of and the tick stopped before ``narrow``."""
    caplog.set_level(logging.INFO, logger="serverd.federation")
    site = make_site(interval_ms=60_000, wide_min_clients=600)
    site.offer([_long_id(i) for i in range(600)])
    site.service.tick()
    wide, narrow = site.coordinators
    assert wide.federation.phase is Phase.IDLE and wide.counters.rounds_opened == 0
    assert site.service.counters.rounds_not_opened == 1
    assert any("wide: no round: the ids of" in r.getMessage() for r in caplog.records)
    assert narrow.federation.phase is Phase.COLLECTING
    assert site.rounds.get(timeout=10).model == "narrow"


def test_a_model_whose_tick_fails_is_one_outage_in_the_log_and_the_others_go_on(
    make_site: Callable[..., Site],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever fails in one model's tick (here its poll raises, as a bug would) is that
    model's outage: counted, logged once, and the other models' rounds open and close.
    Before, the exception left the tick before the models after it, on every tick."""
    site = make_site(interval_ms=60_000, timeout_ms=200)
    site.offer([f"edge-{i}" for i in range(3)])
    wide, narrow = site.coordinators

    def broken() -> None:
        raise RuntimeError("wide's state is broken")

    monkeypatch.setattr(wide, "poll", broken)
    site.service.tick()
    assert site.rounds.get(timeout=10).model == "narrow"

    def failed() -> bool:
        site.service.tick()
        return narrow.federation.rounds_failed == 1

    wait_until("narrow's round failed", failed)
    assert site.service.counters.tick_failures >= 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "federation wide: a tick failed" in errors[0].getMessage()
    assert site.service.status()["models"]["narrow"]["rounds_failed"] == 1
