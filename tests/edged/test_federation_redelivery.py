"""The round and the version are retained: each reconnect brings them again, and a
persistent session brings every version published while the edge was away, each a whole
model image. The participant trains a round once, judges a version once, and its worker
holds at most the latest round and version waiting (on main each copy was queued in full:
10 re-announcements of a 13.5 MB version while a round trained held 197 MB more)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.federated import trust
from edged.federation.adoption import HeadSlot, Served
from edged.federation.participant import Participant
from edged.federation.samples import SampleStore
from edged.federation.versions import INCOMING, VersionImages
from edgefed.federation_wire import (
    FederationTopics,
    GlobalModel,
    RoundOpen,
    encode,
    init_head,
    sha256_hex,
    signed_text,
)
from edgefed.images.federated import Base
from edgefed.images.signing import sign
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from serverd.federation.images import VersionImager

TOPICS = FederationTopics()


def _round(n: int) -> bytes:
    plan = RoundOpen(
        model="digits", round=n, base_version=1, participants=["edge-0"], deadline_ms=1
    )
    return encode(plan)


def _version(version: int, body: bytes = b"not a model image") -> bytes:
    """A version no key of the edge's signed: refused (a body of any size)."""
    header = GlobalModel(
        model="digits", version=version, round=1, sha256=sha256_hex(body), signature="ab" * 64
    )
    return encode(header, body)


def _participant(
    tmp_path: Path, mqtt: MqttClient, allowed: Callable[[], bool] = lambda: True
) -> Participant:
    store = SampleStore(tmp_path / "samples.sqlite", holdout_every=5)
    rng = np.random.default_rng(0)
    for _ in range(30):
        label = int(rng.integers(0, 2))
        x = rng.normal(0, 0.3, 8).astype(np.float32)
        x[label] += 2.0
        store.add("digits", x, label, "operator")
    slot = HeadSlot()
    slot.swap(Served(1, init_head(8, 2)))
    images = VersionImages(tmp_path / "images", [])
    return Participant(mqtt, TOPICS, "edge-0", "digits", store, slot, images, allowed=allowed)


@pytest.fixture
def server(broker: Broker) -> Iterator[MqttClient]:
    client = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="serverd"))
    client.start()
    assert client.wait_connected(30)
    yield client
    client.stop()


def test_a_reconnect_brings_the_round_and_version_again_and_neither_is_taken_up_twice(
    broker: Broker, server: MqttClient, tmp_path: Path
) -> None:
    reports: list[bytes] = []
    server.subscribe(TOPICS.adoption("edge-0"), lambda _t, data: reports.append(data))
    server.publish(TOPICS.round("digits"), _round(1), retain=True).wait(10)
    server.publish(TOPICS.model("digits"), _version(2), retain=True).wait(10)
    edge = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="edge-0"))
    participant = _participant(tmp_path, edge)
    participant.start()
    edge.start()
    try:
        wait_until("the round trained", lambda: participant.counters.rounds_trained == 1)
        wait_until("the version refused", lambda: participant.counters.versions_refused == 1)
        wait_until("its report", lambda: len(reports) == 1)
        # the same client id connecting elsewhere: the broker drops the edge's connection
        intruder = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="edge-0")
        intruder.connect(broker.host, broker.port)
        intruder.loop(2)
        intruder.disconnect()
        wait_until("the edge back", lambda: edge.counters.reconnects >= 1 and edge.connected)
        wait_until(
            "the copies seen",
            lambda: (
                participant.counters.rounds_repeated >= 1
                and participant.counters.versions_repeated >= 1
            ),
        )
    finally:
        participant.stop()
        edge.stop()
    counters = participant.counters
    assert (counters.rounds_trained, counters.versions_refused, len(reports)) == (1, 1, 1)


def test_copies_that_come_while_the_worker_trains_wait_as_the_latest_of_each(
    tmp_path: Path,
) -> None:
    """Ten versions of 1 MB and four rounds arrive during a round's training: the worker
    then takes only the last version and the last round."""
    training, release = threading.Event(), threading.Event()

    def allowed() -> bool:  # the worker is busy with round 1 until released
        training.set()
        return release.wait(30)

    edge = MqttClient(MqttConfig(client_id="edge-0"))  # never started: handed in
    participant = _participant(tmp_path, edge, allowed)
    participant.start()
    try:
        participant._on_message(TOPICS.round("digits"), _round(1))
        assert training.wait(10)
        for version in range(2, 12):
            participant._on_message(TOPICS.model("digits"), _version(version, bytes(2**20)))
        for n in range(2, 6):
            participant._on_message(TOPICS.round("digits"), _round(n))
        assert participant.counters.superseded == 9 + 3
        release.set()
        wait_until("the last round trained", lambda: participant.counters.rounds_trained == 2)
        wait_until("one version judged", lambda: participant.counters.versions_refused == 1)
    finally:
        release.set()
        participant.stop()
    assert "v11" in participant.counters.last_version_refusal
    assert participant.counters.rounds_seen == 2


def test_a_version_refused_for_a_passing_fault_is_judged_again_when_it_comes_again(
    tmp_path: Path,
) -> None:
    """No room to unpack (here a file where the unpacking directory goes) is the edge's
    fault, not the version's: the copy a reconnect brings once it is mended is judged."""
    key = Ed25519PrivateKey.generate()
    imager = VersionImager("digits", Base.pixels(8, 1, 255.0), ["0", "1"], key)
    body = imager.packed(2, init_head(8, 2))
    digest = sha256_hex(body)
    signature = sign(key, signed_text("digits", 2, digest)).hex()
    header = GlobalModel(model="digits", version=2, round=1, sha256=digest, signature=signature)
    participant = _participant(tmp_path, MqttClient(MqttConfig(client_id="edge-0")))
    participant.images = VersionImages(tmp_path / "images", [trust(key, tmp_path / "trust")])
    blocker = tmp_path / "images" / INCOMING
    blocker.parent.mkdir(exist_ok=True)
    blocker.write_text("not a directory")
    participant.start()
    try:
        participant._on_message(TOPICS.model("digits"), encode(header, body))
        wait_until("refused", lambda: participant.counters.versions_refused == 1)
        assert "cannot unpack" in participant.counters.last_version_refusal
        blocker.unlink()
        participant._on_message(TOPICS.model("digits"), encode(header, body))  # a reconnect
        wait_until("judged again", lambda: participant.counters.versions_adopted == 1)
    finally:
        participant.stop()
    assert participant.counters.versions_repeated == 0
    served = participant.slot.current
    assert served is not None and served.version == 2  # the same head: nothing worse
