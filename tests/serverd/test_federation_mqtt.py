"""A whole federation on a real mosquitto: serverd's coordinator and three edge
participants (each its own MQTT connection, SQLite sample store and worker thread) on
real handwritten digits split non-IID; a spy subscribed to ``#`` sees every message."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.federated import Site, baselines, digits_data
from edgefed.federation_upload import Reassembler, Upload
from edgefed.federation_wire import (
    FederationTopics,
    GlobalModel,
    Received,
    ReceivedModel,
    UpdateAck,
    decode,
    decode_params,
    encode,
    encode_params,
    sha256_hex,
    signed_text,
)
from edgefed.images.federated import read_head
from edgefed.images.signing import sign
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.datasets import DIGIT_FEATURES
from edgefed.testing.wait import wait_until
from edgefed.wire import new_job_id
from serverd.federation.images import VersionImager
from serverd.federation.rounds import HISTORY_LISTED_ROUNDS

ROUNDS = 30


Seen = queue.Queue[tuple[str, bytes]]


@pytest.fixture(scope="module")
def seen() -> Seen:
    """Every message the spy subscribed to ``#`` received."""
    return queue.Queue()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, seen: Seen) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("federation")
    with Site(digits_data(), directory, spy=lambda topic, payload: seen.put((topic, payload))) as s:
        yield s


def test_rounds_over_mqtt_reach_centralised_accuracy_and_no_sample_leaves(
    site: Site, seen: Seen
) -> None:
    for _ in range(ROUNDS):
        site.run_round()
    assert site.versions() == [ROUNDS + 1] * 3
    federated = site.accuracy()
    centralised, best_local = baselines(site.data, ROUNDS)
    assert federated >= centralised - 0.02, (federated, centralised)
    assert federated > best_local, (federated, best_local)
    history = site.coordinator.history()
    assert len(history) == ROUNDS
    assert all(h["accepted_count"] == 3 and h["rejected_count"] == 0 for h in history)
    listed = [h for h in history if h["devices_listed"]]  # the latest rounds name them
    assert len(listed) == HISTORY_LISTED_ROUNDS and listed == history[-HISTORY_LISTED_ROUNDS:]
    assert all(h["accepted"] == ["edge-0", "edge-1", "edge-2"] for h in listed)
    _no_raw_sample_was_published(site, seen)


def _no_raw_sample_was_published(site: Site, seen: Seen) -> None:
    messages = []
    while not seen.empty():
        messages.append(seen.get_nowait())
    assert messages
    assembler, head_shapes = Reassembler(), [(DIGIT_FEATURES, 10), (10,)]
    for topic, payload in messages:
        if "/availability/" in topic:
            continue
        message = decode(payload)  # every other message is a federation message
        if isinstance(message, Received):
            whole = assembler.add(topic, message)
            if whole is not None:  # an update holds the head's tensors and nothing else
                assert [p.shape for p in decode_params(whole.data)] == head_shapes
        elif isinstance(message, ReceivedModel):  # a version image: the head on the pixels
            assert [p.shape for p in read_head(message.body)] == head_shapes
    everything = b"".join(p for _, p in messages)
    for x, _ in site.data.edges:
        for row in x[:: max(1, len(x) // 40)]:
            assert row.astype("<f4").tobytes() not in everything


def _publish_version(
    site: Site,
    version: int,
    params: list[np.ndarray],
    key: Ed25519PrivateKey,
    image_key: Ed25519PrivateKey | None = None,
) -> None:
    """Version ``version`` as serverd would publish it, its header signed by ``key`` and
    its image by ``image_key`` (default: the same key)."""
    fed = site.coordinator.federation
    imager = VersionImager(fed.model, site.data.base(), list("0123456789"), image_key or key)
    body = imager.packed(version, params)
    digest = sha256_hex(body)
    header = GlobalModel(
        model=fed.model,
        version=version,
        round=1,
        sha256=digest,
        signature=sign(key, signed_text(fed.model, version, digest)).hex(),
    )
    topic = FederationTopics().model(fed.model)
    site.coordinator.mqtt.publish(topic, encode(header, body), retain=True)


def _reports(site: Site, version: int) -> list[dict[str, object]] | None:
    """The three edges' adoption reports of ``version``, once all three are in."""
    reports = list(site.coordinator.status()["adoptions"].values())
    return reports if len(reports) == 3 and all(r["version"] == version for r in reports) else None


def test_a_worse_or_unsigned_version_is_refused_and_the_served_one_stays(site: Site) -> None:
    before = site.versions()
    assert before[0] is not None
    worse = [np.zeros((DIGIT_FEATURES, 10), np.float32), np.zeros(10, np.float32)]
    version = before[0] + 1
    _publish_version(site, version, worse, site.key)
    reports = wait_until("three refusals", lambda: _reports(site, version))
    assert all(not r["adopted"] and "held-back accuracy" in str(r["reason"]) for r in reports)
    assert site.versions() == before
    params = site.coordinator.federation.params
    forged = before[0] + 2
    _publish_version(site, forged, params, Ed25519PrivateKey.generate())
    reports = wait_until("three refusals of a forged version", lambda: _reports(site, forged))
    assert all(not r["adopted"] and "trusted key" in str(r["reason"]) for r in reports)
    assert site.versions() == before
    swapped = before[0] + 3  # a signed header around an image signed by another key
    _publish_version(site, swapped, params, site.key, Ed25519PrivateKey.generate())
    reports = wait_until("three refusals of a foreign image", lambda: _reports(site, swapped))
    assert all(not r["adopted"] and "signature does not match" in str(r["reason"]) for r in reports)
    assert site.versions() == before


def test_a_rogue_update_is_resumed_then_refused_with_its_reason(site: Site) -> None:
    topics = FederationTopics()
    rogue = MqttClient(MqttConfig(port=site.broker.port, client_id="rogue"))
    acks: queue.Queue[bytes] = queue.Queue()
    rogue.subscribe(topics.ack("rogue"), lambda _topic, payload: acks.put(payload))
    rogue.start()
    try:
        assert rogue.wait_connected(10)
        available = {f"edge-{i}": e.store.count("digits") for i, e in enumerate(site.edges)}
        plan = site.coordinator.open_round({**available, "rogue": 500})
        data = encode_params(site.coordinator.federation.params)
        upload = Upload.of(
            new_job_id(),
            data,
            model="digits",
            round=plan.round,
            base_version=plan.base_version,
            num_samples=500,
            metrics={},
            max_chunk_bytes=len(data) // 2 + 1,
        )
        first, _ = upload.frames()
        rogue.publish(topics.update("rogue"), first)
        rogue.publish(topics.update("rogue"), upload.query())  # as after a reconnect
        ack = decode(acks.get(timeout=10))
        assert isinstance(ack, UpdateAck) and (ack.state, ack.missing) == ("partial", [1])
        tampered = encode(upload.headers[1], bytes(len(upload.chunks[1])))  # zeroed bytes
        rogue.publish(topics.update("rogue"), tampered)
        verdict = decode(acks.get(timeout=10))
        assert isinstance(verdict, UpdateAck) and verdict.state == "rejected"
        assert "sha256" in verdict.reason
        outcome = wait_until("the round to close", site.coordinator.poll, timeout=60)
        assert outcome.version is not None and "rogue" not in outcome.accepted
        assert "malformed" in outcome.rejected["rogue"]
    finally:
        rogue.stop()
