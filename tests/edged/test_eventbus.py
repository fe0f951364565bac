"""EventBus topics, the frame-event rate limit and publishing on a real mosquitto."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from edged.eventbus import EventBus, EventBusConfig, TokenBucket, event_topics
from edged.framejob import FrameJob
from edged.motion import GateResult
from edged.ring import Frame
from edged.twin.service import Rejection, TwinOutcome
from edgefed.models.types import Classification, Detection, Landmarks
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.edgecore import Subscriber, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_default_topics_are_forwarded_and_routable() -> None:
    t = event_topics(EventBusConfig().prefix, "demo/edge-01")
    assert t.frame == "demo/user/edgefed/events/frame/demo/edge-01"
    assert t.stats == "demo/user/edgefed/events/stats/demo/edge-01"
    assert t.twin == "demo/user/edgefed/events/twin/demo/edge-01"
    single = event_topics(EventBusConfig().prefix, "edge-01")
    assert single.frame == "default/user/edgefed/events/frame/edge-01"
    upload = event_topics("$hw/events/upload/edgefed", "edge-01")
    assert upload.stats == "$hw/events/upload/edgefed/events/stats/edge-01"


@pytest.mark.parametrize("prefix", ["", "a//b", "a/+/b", "a/#", "/a"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValidationError):
        EventBusConfig(prefix=prefix)


def test_token_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5
    assert [bucket.allow(), bucket.allow()] == [True, False]
    clock.now += 100
    assert sum(bucket.allow() for _ in range(10)) == 3


def job(index: int) -> FrameJob:
    frame = Frame("cam1", index, 1.0, 1_700_000_000.1234, np.zeros((8, 8, 3), np.uint8))
    gate = GateResult(True, 120, 0.0123456, np.zeros((4, 4), np.uint8), [(0, 0, 4, 4)])
    j = FrameJob(frame=frame, gate=gate, motion_regions=[])
    j.results = {
        "person": [
            Detection("person", 0.91234, (0, 0, 2, 2)),
            Detection("person", 0.6, (2, 2, 4, 4)),
        ],
        "pose": [Landmarks((0, 0, 2, 2), 0.9, ())],
        "scene": [Classification((("espresso", 0.96), ("cup", 0.02)))],
    }
    j.latency_ms = {"person": 4.567, "pose": 7.1, "scene": 6.4}
    j.errors = {"face": "DriverError: device lost"}
    j.dropped = ["ocr"]
    return j


@pytest.fixture
def client(broker: Broker) -> Iterator[MqttClient]:
    c = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="edged-events"))
    c.start()
    assert c.wait_connected(10)
    yield c
    c.stop()


def test_frame_events_are_summaries_and_rate_limited(broker: Broker, client: MqttClient) -> None:
    listener = Subscriber(broker, "demo/user/edgefed/events/#")
    clock = Clock()
    config = EventBusConfig(frame_events_per_s=1.0, frame_burst=2)
    bus = EventBus(config, client, "demo/edge-01", stats=dict, clock=clock)
    try:
        for i in range(5):
            bus(job(i))
        clock.now += 1.0
        bus(job(5))
        received = [listener.get() for _ in range(3)]
    finally:
        listener.close()
    assert {t for t, _ in received} == {"demo/user/edgefed/events/frame/demo/edge-01"}
    events = [e for _, e in received]
    assert [e["frame"] for e in events] == [0, 1, 5]
    assert [e["suppressed"] for e in events] == [0, 0, 3]
    first = events[0]
    assert first["type"] == "frame"
    assert first["device_id"] == "demo/edge-01"
    assert first["camera"] == "cam1"
    assert first["motion_ratio"] == 0.01235
    assert first["models"] == {
        "person": {"count": 2, "labels": {"person": 2}, "top_score": 0.9123},
        "pose": {"count": 1, "labels": {}, "top_score": None},
        "scene": {"count": 1, "labels": {"espresso": 1}, "top_score": 0.96},
    }
    assert first["latency_ms"] == {"person": 4.57, "pose": 7.1, "scene": 6.4}
    assert first["errors"] == {"face": "DriverError: device lost"}
    assert first["dropped"] == ["ocr"]
    assert bus.counters.frames_published == 3
    assert bus.counters.frames_suppressed == 3


def test_stats_are_published_periodically(broker: Broker, client: MqttClient) -> None:
    listener = Subscriber(broker, "default/user/edgefed/events/stats/#")
    calls = {"n": 0}

    def stats() -> dict[str, Any]:
        calls["n"] += 1
        return {"pipeline": {"frames_completed": calls["n"]}}

    bus = EventBus(EventBusConfig(stats_interval_s=0.05), client, "edge-01", stats=stats)
    bus.start()
    try:
        first = listener.get()
        second = listener.get()
    finally:
        bus.stop()
        listener.close()
    assert first[0] == "default/user/edgefed/events/stats/edge-01"
    assert first[1]["type"] == "stats" and first[1]["device_id"] == "edge-01"
    assert (
        second[1]["stats"]["pipeline"]["frames_completed"]
        > first[1]["stats"]["pipeline"]["frames_completed"]
    )
    assert isinstance(second[1]["timestamp"], int)


def test_twin_outcomes_are_published(broker: Broker, client: MqttClient) -> None:
    listener = Subscriber(broker, "demo/user/edgefed/events/twin/#")
    bus = EventBus(EventBusConfig(), client, "demo/edge-01", stats=dict)
    outcome = TwinOutcome(
        device_id="demo/edge-01",
        timestamp=1,
        source="delta",
        event_id="e1",
        applied={"log_level": "DEBUG"},
        rejected={"motion_threshold": Rejection(value="300", reason="out of range")},
    )
    bus.publish_twin(outcome)
    try:
        topic, event = listener.get()
    finally:
        listener.close()
    assert topic == "demo/user/edgefed/events/twin/demo/edge-01"
    assert event["rejected"] == {"motion_threshold": {"value": "300", "reason": "out of range"}}
    assert bus.status()["twin_published"] == 1


def test_nothing_is_queued_while_the_broker_is_away(broker: Broker, client: MqttClient) -> None:
    bus = EventBus(EventBusConfig(), client, "edge-01", stats=dict)
    broker.stop()
    wait_until(lambda: not client.connected)
    bus(job(1))
    bus.publish_stats()
    assert bus.counters.skipped_offline == 2
    assert bus.counters.frames_published == 0


def test_offload_results_are_published(broker: Broker, client: MqttClient) -> None:
    listener = Subscriber(broker, "demo/user/edgefed/events/offload/#")
    bus = EventBus(EventBusConfig(), client, "demo/edge-01", stats=dict)
    record = {
        "type": "offload_result",
        "job_id": "job-0000001",
        "camera": "cam1",
        "frame": 7,
        "model": "person",
        "status": "Exit",
        "served_by": "serverd/triton-0",
        "result": [{"type": "detection", "label": "person", "score": 0.9}],
    }
    bus.publish_offload_result(record)
    bus.publish_offload_result({**record, "job_id": "job-0000002", "masked": 2})
    try:
        (topic, event), (_, masked) = listener.get(), listener.get()
    finally:
        listener.close()
    assert topic == "demo/user/edgefed/events/offload/demo/edge-01"
    stamped = {"device_id": "demo/edge-01", "timestamp": event["timestamp"]}
    assert event == {**record, **stamped, "masked": 0}  # masked: always there, 0 when none
    assert (masked["job_id"], masked["masked"]) == ("job-0000002", 2)
    assert bus.status()["offload_published"] == 2
