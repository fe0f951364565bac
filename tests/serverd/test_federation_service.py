"""serverd's federation service with two models on one real broker: each model's updates
reach its own coordinator, both rounds run at once, edges offer both models' counts."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.federated import trust
from edged.federation.adoption import HeadSlot
from edged.federation.participant import Participant
from edged.federation.samples import SampleStore
from edged.federation.service import EdgeFederation
from edged.federation.versions import VersionImages
from edgefed.clock import now_ms
from edgefed.errors import FederationError
from edgefed.federation_upload import Upload
from edgefed.federation_wire import (
    AdoptionReport,
    FederationTopics,
    SampleOffer,
    TrainConfig,
    encode,
    encode_params,
    init_head,
)
from edgefed.images.federated import Base
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from edgefed.wire import new_job_id
from serverd.federation.coordinator import Coordinator
from serverd.federation.images import VersionImager
from serverd.federation.offers import FORGET_MS
from serverd.federation.rounds import Federation, RoundSettings
from serverd.federation.service import FederationService
from serverd.federation.versions import VersionFiles

SHAPES = {"wide": (6, 2), "narrow": (3, 3)}  # model -> (features, classes)
EDGES = ["edge-0", "edge-1", "edge-2"]


def _classes(model: str) -> list[str]:
    return [str(c) for c in range(SHAPES[model][1])]


def _coordinator(
    client: MqttClient,
    topics: FederationTopics,
    key: Ed25519PrivateKey,
    model: str,
    scratch: Path | None = None,
) -> Coordinator:
    """serverd's coordinator of ``model``, as the fleet's rounds need it (its versions'
    images built under ``scratch``)."""
    settings = RoundSettings(min_clients=3, quorum=3, min_samples=10, timeout_ms=30_000)
    features, classes = SHAPES[model]
    base = Base.pixels(features, 1, 255.0)
    return Coordinator(
        client,
        topics,
        Federation(model, 1, init_head(features, classes), settings),
        key,
        VersionImager(model, base, _classes(model), key, scratch),
        TrainConfig(epochs=2, learning_rate=0.5),
        max_chunk_bytes=1024,
    )


class Fleet:
    def __init__(
        self,
        broker: Broker,
        root: Path,
        versions: VersionFiles | None = None,
        scratch: Path | None = None,
    ) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.topics = FederationTopics()
        self.clients = [self._client(broker, "serverd")]
        self.coordinators = [
            _coordinator(self.clients[0], self.topics, self.key, model, scratch) for model in SHAPES
        ]
        self.service = FederationService(
            self.clients[0], self.topics, self.coordinators, versions=versions
        )
        self.service.start()
        rng = np.random.default_rng(0)
        self.edges = []
        for name in EDGES:
            client = self._client(broker, name)
            self.clients.append(client)
            store = SampleStore(root / f"{name}.db", holdout_every=5)
            allowed = threading.Event()
            allowed.set()
            participants = [
                Participant(
                    client,
                    self.topics,
                    name,
                    model,
                    store,
                    HeadSlot(),
                    VersionImages(root / name, [trust(self.key, root)]),
                    allowed=allowed.is_set,
                )
                for model in SHAPES
            ]
            classes = {m: _classes(m) for m in SHAPES}
            edge = EdgeFederation(client, self.topics, name, store, participants, classes, allowed)
            for model, (features, k) in SHAPES.items():
                for _ in range(40):
                    label = int(rng.integers(0, k))
                    x = rng.normal(0, 0.3, features).astype(np.float32)
                    x[label] += 2.0  # separable: the label's own feature is high
                    edge.add(model, x, label, "operator")
            edge.start()
            self.edges.append(edge)
        for client in self.clients:
            client.start()
        for client in self.clients:  # subscribed: a message sent before would be lost
            assert client.wait_connected(30), client.config.client_id

    def _client(self, broker: Broker, name: str) -> MqttClient:
        return MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id=name))

    def versions(self, model: str) -> list[int | None]:
        out = []
        for edge in self.edges:
            served = edge.participants[model].slot.current
            out.append(served.version if served else None)
        return out

    def on(self, model: str, version: int) -> bool:
        """Every edge serves ``version`` of ``model`` (the service's timer ticks here)."""
        self.service.tick()
        return self.versions(model) == [version] * len(self.edges)

    def closed(self, model: str, rounds: int) -> bool:
        """serverd closed ``rounds`` rounds of ``model`` (the service's timer ticks here)."""
        self.service.tick()
        return len(self.service.history(model)) == rounds

    def stop(self) -> None:
        for edge in self.edges:
            edge.stop()
        for client in self.clients:
            client.stop()


@pytest.fixture
def fleet(broker: Broker, tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(broker, tmp_path)
    yield running
    running.stop()


def test_two_models_federate_at_once_each_on_its_own_coordinator(fleet: Fleet) -> None:
    for model in SHAPES:
        wait_until(f"{model} v1 everywhere", lambda m=model: fleet.versions(m) == [1, 1, 1])
        wait_until(f"{model} offers", lambda m=model: len(fleet.service.available(m)) == 3)
    assert fleet.service.available("wide") == dict.fromkeys(EDGES, 32)
    for model in SHAPES:
        fleet.service.start_round(model)
    for model in SHAPES:
        wait_until(f"{model} v2 everywhere", lambda m=model: fleet.on(m, 2))
    for coordinator in fleet.coordinators:
        (record,) = coordinator.history()
        assert record["accepted"] == EDGES and record["rejected"] == {}
    assert fleet.service.counters.unknown_model == 0


def test_an_update_of_a_model_not_federated_is_counted_and_not_answered(fleet: Fleet) -> None:
    wait_until("offers", lambda: len(fleet.service.available("wide")) == 3)
    upload = Upload.of(
        new_job_id(),
        encode_params(init_head(2, 2)),
        model="elsewhere",
        round=1,
        base_version=1,
        num_samples=5,
        metrics={},
        max_chunk_bytes=1024,
    )
    for frame in upload.frames():
        fleet.clients[1].publish(fleet.topics.update("edge-0"), frame)
    wait_until("counted", lambda: fleet.service.counters.unknown_model == 1)
    assert all(c.counters.updates_rejected == 0 for c in fleet.coordinators)


def test_a_device_whose_twin_forbids_training_offers_nothing(fleet: Fleet) -> None:
    wait_until("offers", lambda: len(fleet.service.available("narrow")) == 3)
    fleet.edges[1].set_allowed(False)
    wait_until(
        "edge-1 out", lambda: sorted(fleet.service.available("narrow")) == ["edge-0", "edge-2"]
    )
    assert fleet.service.status()["edges"]["edge-1"]["samples"] == {"wide": 0, "narrow": 0}


def test_a_new_version_the_disk_refuses_is_saved_once_it_has_room(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A round closes while the versions cannot be written (a file stands where their
    directory goes, as a full disk refuses them): the edges adopt it all the same, the
    log says so once, and the next tick after the disk has room saves it, so a restarted
    serverd goes on from it (its edges would refuse an older one)."""
    blocked = tmp_path / "versions"
    blocked.write_text("not a directory")
    running = Fleet(broker, tmp_path / "fleet", versions=VersionFiles(blocked))
    try:
        wait_until("offers", lambda: len(running.service.available("wide")) == 3)
        running.service.start_round("wide")
        wait_until("wide v2 everywhere", lambda: running.on("wide", 2))
        running.service.tick()
        assert running.service.status()["unsaved_versions"] == {"wide": 2}
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "saving a new global version failed" in errors[0]
        blocked.unlink()
        running.service.tick()
        assert running.service.status()["unsaved_versions"] == {}
        saved = VersionFiles(blocked).load("wide")
        assert saved is not None and saved[0] == 2
    finally:
        running.stop()


def test_a_new_version_whose_image_cannot_be_built_is_saved_and_published_once_it_can(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A round closes while the disk under both the saved versions and the directory its
    image is built in is full (a file stands where each directory goes): the version is
    kept as unsaved, the log says once that it cannot be published, no round opens on a
    version no edge has, and once there is room it is saved and then published, and the
    edges adopt it. Before, the failed build raised out of the tick: the version was
    neither saved nor published, and rounds went on from a base no edge served."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    blocked = tmp_path / "versions"
    blocked.write_text("not a directory")
    running = Fleet(broker, tmp_path / "fleet", VersionFiles(blocked), scratch)
    wide = running.coordinators[0]
    try:
        wait_until("offers", lambda: len(running.service.available("wide")) == 3)
        wait_until("wide v1 everywhere", lambda: running.versions("wide") == [1, 1, 1])
        scratch.rmdir()
        scratch.write_text("the disk is full")
        running.service.start_round("wide")
        wait_until("the round closed", lambda: running.closed("wide", 1))
        running.service.tick()
        assert wide.federation.version == 2 and running.versions("wide") == [1, 1, 1]
        assert running.service.status()["unsaved_versions"] == {"wide": 2}
        assert wide.counters.publish_failures == 2 and wide.counters.versions_published == 1
        assert running.service.counters.tick_failures == 0
        errors = sorted(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
        assert len(errors) == 2, errors
        assert "federation wide: publishing a version failed" in errors[0]
        assert "saving a new global version failed" in errors[1]
        with pytest.raises(FederationError, match="v2 of wide is not published yet"):
            running.service.start_round("wide")

        blocked.unlink()  # room on the disk of the versions: saved, still not published
        running.service.tick()
        assert running.service.status()["unsaved_versions"] == {}
        saved = VersionFiles(blocked).load("wide")
        assert saved is not None and saved[0] == 2
        assert running.versions("wide") == [1, 1, 1]

        scratch.unlink()  # and under the image's: published, adopted
        scratch.mkdir()
        wait_until("wide v2 everywhere", lambda: running.on("wide", 2))
        assert wide.counters.versions_published == 2
        assert running.service.status()["models"]["wide"]["counters"]["publish_failures"] == 3
    finally:
        running.stop()


def test_a_device_gone_for_a_week_leaves_the_status(fleet: Fleet) -> None:
    """Every device ever seen stayed in serverd's offers and adoption reports for ever
    (a fleet that churns grows them, and the status lists them all)."""
    offer = SampleOffer(samples={"wide": 40}, training_allowed=True, sent_ms=now_ms())
    report = AdoptionReport(model="wide", version=2, adopted=True)
    server = fleet.clients[0]
    server.publish(fleet.topics.samples("edge-9"), encode(offer), retain=True).wait(5)
    server.publish(fleet.topics.adoption("edge-9"), encode(report)).wait(5)
    server.publish(fleet.topics.adoption("edge-0"), encode(report)).wait(5)
    wide = fleet.coordinators[0]
    wait_until("reports", lambda: {"edge-0", "edge-9"} <= set(wide.adoptions))
    wait_until("offers", lambda: len(fleet.service.status()["edges"]) == 4)
    week_on = now_ms() + FORGET_MS + 60_000
    fleet.service.clock = lambda: week_on  # a week later, the three edges still offering
    for edge in fleet.edges:
        edge.changed()
    wait_until("offers again", lambda: _seen(fleet, EDGES) == [week_on] * len(EDGES))
    fleet.service.tick()
    assert sorted(fleet.service.status()["edges"]) == EDGES
    assert "edge-0" in wide.adoptions and "edge-9" not in wide.adoptions
    server.publish(fleet.topics.samples("edge-9"), b"", retain=True).wait(5)


def _seen(fleet: Fleet, devices: list[str]) -> list[int | None]:
    edges = fleet.service.status()["edges"]
    return [edges[d]["seen_ms"] if d in edges else None for d in devices]


def test_offers_are_dated_on_serverds_clock_and_copies_delivered_again_change_nothing(
    tmp_path: Path,
) -> None:
    """An offer that follows one of the same edged run was sent when it arrived, whatever
    the edge's clock: a device three hours behind (no NTP) was never chosen. The first
    heard of a run, and a copy of one heard before (retained by the broker, sent again by
    a bridge after a reconnect), are as old as they say: a device gone for a week is not
    counted as offering again when serverd restarts or a bridge reconnects."""
    topics = FederationTopics()

    def offer(sent_ms: int, run: str, seq: int) -> bytes:
        samples = {"wide": 40}
        return encode(
            SampleOffer(samples=samples, training_allowed=True, sent_ms=sent_ms, run=run, seq=seq)
        )

    with Broker(tmp_path / "broker") as broker:
        edge = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="edge-9"))
        server = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="serverd"))
        wide = _coordinator(server, topics, Ed25519PrivateKey.generate(), "wide")
        service = FederationService(server, topics, [wide], offer_ttl_ms=120_000)
        edge.start()
        try:
            assert edge.wait_connected(10)
            gone = now_ms() - FORGET_MS - 60_000
            stored = offer(gone, "r1", 5)
            assert edge.publish(topics.samples("edge-9"), stored, retain=True).wait(5)
            service.start()
            server.start()
            wait_until("the stored offer", lambda: "edge-9" in service.status()["edges"])
            assert abs(service.status()["edges"]["edge-9"]["seen_ms"] - gone) < 1_000
            assert service.available("wide") == {}
            service.tick()
            assert service.status()["edges"] == {}

            behind = now_ms() - 3 * 3_600_000
            for seq in (1, 2):  # edged restarted: a new run, its clock three hours behind
                assert edge.publish(topics.samples("edge-9"), offer(behind, "r2", seq)).wait(5)
                wait_until("the offer", lambda s=seq: _offer_seq(service, "edge-9") == s)
                behind += 30_000
            assert service.available("wide") == {"edge-9": 40}  # dated on its arrival
            seen = service.status()["edges"]["edge-9"]["seen_ms"]

            later = now_ms() + 600_000
            service.clock = lambda: later  # ten minutes on, a bridge sends the offer again
            assert edge.publish(topics.samples("edge-9"), offer(behind - 30_000, "r2", 2)).wait(5)
            wait_until("the copy", lambda: service.counters.offers_repeated == 1)
            assert service.status()["edges"]["edge-9"]["seen_ms"] == seen
            assert service.available("wide") == {}  # as stale as the offer it copies

            # edged restarts (run r3); a late copy of r2's offer then replaces nothing
            for seq in (1, 2):
                assert edge.publish(topics.samples("edge-9"), offer(later, "r3", seq)).wait(5)
                wait_until("r3's offer", lambda s=seq: _offer_seq(service, "edge-9") == s)
            assert service.status()["edges"]["edge-9"]["run"] == "r3"
            assert edge.publish(topics.samples("edge-9"), offer(behind - 30_000, "r2", 2)).wait(5)
            wait_until("the late copy", lambda: service.counters.offers_repeated == 2)
            assert service.status()["edges"]["edge-9"]["run"] == "r3"
            assert service.available("wide") == {"edge-9": 40}

            # a bridge sends a run serverd never heard (a week old): stale, and r3's next
            # offer is live again (no run is shut out for having been replaced)
            assert edge.publish(topics.samples("edge-9"), offer(gone, "r0", 9)).wait(5)
            wait_until("the old run", lambda: service.status()["edges"]["edge-9"]["run"] == "r0")
            assert service.available("wide") == {}
            assert edge.publish(topics.samples("edge-9"), offer(later, "r3", 3)).wait(5)
            wait_until("r3 again", lambda: service.available("wide") == {"edge-9": 40})
        finally:
            edge.publish(topics.samples("edge-9"), b"", retain=True).wait(5)
            edge.stop()
            server.stop()


def _offer_seq(service: FederationService, device: str) -> int | None:
    edges = service.status()["edges"]
    return edges[device]["seq"] if device in edges else None


def test_a_flood_of_bad_federation_messages_is_counted_and_logged_in_a_few_lines(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serverd.federation")
    device = fleet.clients[1]  # edge-0's connection, on its own update topic
    for _ in range(300):  # each one the broker's (acknowledged) before the next
        assert device.publish(fleet.topics.update("edge-0"), b"not a frame").wait(5)
    wait_until("all counted", lambda: fleet.service.counters.bad_messages >= 300)
    bad = [r for r in caplog.records if "bad message" in r.getMessage()]
    assert 1 <= len(bad) <= 2, len(bad)
