"""A whole federation on a real mosquitto: serverd's coordinator and three edge
participants (each its own MQTT connection, SQLite sample store and worker thread) on
real handwritten digits split non-IID; a spy subscribed to ``#`` sees every message."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.federation.adoption import HeadSlot
from edged.federation.participant import Participant
from edged.federation.samples import SampleStore
from edged.federation.trainer import TrainSettings, accuracy, init_head, train
from edgefed.federation_upload import Reassembler
from edgefed.federation_wire import (
    FederationTopics,
    GlobalModel,
    Received,
    ReceivedModel,
    TrainConfig,
    decode,
    decode_params,
    encode,
    encode_params,
    sha256_hex,
    signed_text,
)
from edgefed.images.signing import sign
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.datasets import digits, non_iid_split, train_test_split
from edgefed.testing.wait import wait_until
from serverd.federation.aggregate import AggregationSettings
from serverd.federation.coordinator import Coordinator
from serverd.federation.rounds import Federation, RoundSettings

ROUNDS = 12
MODEL = "digits"


@dataclass
class Site:
    coordinator: Coordinator
    edges: list[Participant]
    spy: queue.Queue[tuple[str, bytes]]
    key: Ed25519PrivateKey
    data: list[tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]
    clients: list[MqttClient]


def _client(broker: Broker, name: str) -> MqttClient:
    return MqttClient(MqttConfig(port=broker.port, client_id=name))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("federation")
    x, y = digits()
    xtr, ytr, xte, yte = train_test_split(x, y, test_share=0.2, seed=0)
    parts = non_iid_split(ytr, edges=3, own_share=0.8, seed=1)
    key = Ed25519PrivateKey.generate()
    topics = FederationTopics()
    with Broker(tmp / "broker") as broker:
        spy_client = _client(broker, "spy")
        spy: queue.Queue[tuple[str, bytes]] = queue.Queue()
        spy_client.subscribe("#", lambda t, p: spy.put((t, p)))
        spy_client.start()
        assert spy_client.wait_connected(10)
        server_mqtt = _client(broker, "serverd")
        settings = RoundSettings(
            min_clients=3,
            quorum=3,
            min_samples=100,
            timeout_ms=60_000,
            aggregation=AggregationSettings(strategy="krum", krum_malicious=0, krum_keep=3),
        )
        federation = Federation(MODEL, 1, init_head(400, 10), settings)
        coordinator = Coordinator(
            server_mqtt,
            topics,
            federation,
            key,
            TrainConfig(epochs=3, learning_rate=0.1),
            max_chunk_bytes=4096,
        )
        server_mqtt.start()
        assert server_mqtt.wait_connected(10)
        coordinator.start()
        edges, clients, data = [], [spy_client, server_mqtt], []
        for i, rows in enumerate(parts):
            store = SampleStore(tmp / f"edge-{i}.db", holdout_every=10)
            for features, label in zip(xtr[rows], ytr[rows], strict=True):
                store.add(MODEL, features, int(label), "operator")
            data.append(store.training_set(MODEL))
            mqtt = _client(broker, f"edge-{i}")
            edge = Participant(
                mqtt, topics, f"edge-{i}", MODEL, store, HeadSlot(), [key.public_key()]
            )
            edge.start()
            mqtt.start()
            edges.append(edge)
            clients.append(mqtt)
        yield Site(coordinator, edges, spy, key, data, (xte, yte), clients)
        for edge in edges:
            edge.stop()
        for c in clients:
            c.stop()


def _versions(site: Site) -> list[int | None]:
    return [e.slot.current.version if e.slot.current else None for e in site.edges]


def _round(site: Site) -> None:
    site.coordinator.open_round(
        {f"edge-{i}": e.store.count(MODEL) for i, e in enumerate(site.edges)}
    )
    outcome = wait_until("the round to close", site.coordinator.poll, timeout=60)
    assert outcome.version is not None, outcome.record()
    wait_until(
        f"every edge on v{outcome.version}", lambda: _versions(site) == [outcome.version] * 3
    )


def test_rounds_over_mqtt_reach_centralised_accuracy_and_no_sample_leaves(site: Site) -> None:
    wait_until("every edge on v1", lambda: _versions(site) == [1, 1, 1])
    for _ in range(ROUNDS):
        _round(site)
    xte, yte = site.test
    served = site.edges[0].slot.current
    assert served is not None and served.version == ROUNDS + 1
    federated = accuracy(served.params, xte, yte)
    union_x = np.concatenate([x for x, _ in site.data])
    union_y = np.concatenate([y for _, y in site.data])
    long = TrainSettings(epochs=30, learning_rate=0.1)
    centralised = accuracy(train(init_head(400, 10), union_x, union_y, long).params, xte, yte)
    local = [accuracy(train(init_head(400, 10), x, y, long).params, xte, yte) for x, y in site.data]
    assert federated >= centralised - 0.02, (federated, centralised)
    assert federated > max(local), (federated, local)
    history = site.coordinator.history()
    assert len(history) == ROUNDS and all(
        h["accepted"] == ["edge-0", "edge-1", "edge-2"] for h in history
    )
    _no_raw_sample_was_published(site)


def _no_raw_sample_was_published(site: Site) -> None:
    messages = []
    while not site.spy.empty():
        messages.append(site.spy.get_nowait())
    assert messages
    assembler, head_shapes = Reassembler(), [(400, 10), (10,)]
    for topic, payload in messages:
        if "/availability/" in topic:
            continue
        message = decode(payload)  # every other message is a federation message
        if isinstance(message, Received):
            whole = assembler.add(topic, message)
            if whole is not None:  # an update holds the head's tensors and nothing else
                assert [p.shape for p in decode_params(whole.data)] == head_shapes
        elif isinstance(message, ReceivedModel):
            assert [p.shape for p in decode_params(message.body)] == head_shapes
    everything = b"".join(p for _, p in messages)
    for x, _ in site.data:
        for row in x[:: max(1, len(x) // 40)]:
            assert row.astype("<f4").tobytes() not in everything


def _publish_version(
    site: Site, version: int, params: list[np.ndarray], key: Ed25519PrivateKey
) -> None:
    fed = site.coordinator.federation
    body = encode_params(params)
    digest = sha256_hex(body)
    header = GlobalModel(
        model=MODEL,
        version=version,
        round=1,
        sha256=digest,
        signature=sign(key, signed_text(MODEL, version, digest)).hex(),
    )
    site.clients[1].publish(FederationTopics().model(fed.model), encode(header, body), retain=True)


def _reports(site: Site, version: int) -> list[dict[str, object]] | None:
    """The three edges' adoption reports of ``version``, once all three are in."""
    reports = list(site.coordinator.status()["adoptions"].values())
    return reports if len(reports) == 3 and all(r["version"] == version for r in reports) else None


def test_a_worse_or_unsigned_version_is_refused_and_the_served_one_stays(site: Site) -> None:
    before = _versions(site)
    assert before[0] is not None
    worse = [np.zeros((400, 10), np.float32), np.zeros(10, np.float32)]
    version = before[0] + 1
    _publish_version(site, version, worse, site.key)
    reports = wait_until("three refusals", lambda: _reports(site, version))
    assert all(not r["adopted"] and "held-back accuracy" in str(r["reason"]) for r in reports)
    assert _versions(site) == before
    params = site.coordinator.federation.params
    forged = before[0] + 2
    _publish_version(site, forged, params, Ed25519PrivateKey.generate())
    reports = wait_until("three refusals of a forged version", lambda: _reports(site, forged))
    assert all(not r["adopted"] and "trusted key" in str(r["reason"]) for r in reports)
    assert _versions(site) == before
