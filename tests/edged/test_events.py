"""Object events (new / update / end) from the real tracker, published on a real mosquitto."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.eventbus import EventBus, EventBusConfig
from edged.events import ObjectEvent, ObjectEvents
from edged.framejob import FrameJob
from edged.motion import GateResult
from edged.perception import CameraPerception, PerceptionConfig
from edged.regionplan import Plan
from edged.ring import Frame
from edgefed.models.types import Detection
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.edgecore import Subscriber
from tests.support.paths import VTEST

TOPIC = "demo/user/edgefed/events/object/demo/edge-01"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    cap = cv2.VideoCapture(str(VTEST))
    ok, frame = cap.read()
    cap.release()
    assert ok, f"cannot read {VTEST}"
    return frame


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def client(broker: Broker) -> Iterator[MqttClient]:
    c = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="edged-objects"))
    c.start()
    assert c.wait_connected(10)
    yield c
    c.stop()


def frame_job(index: int, image: np.ndarray) -> FrameJob:
    frame = Frame("cam1", index, 10.0 + index / 10, 1_700_000_000.0 + index / 10, image)
    gate = GateResult(True, 500, 0.01, np.zeros((4, 4), np.uint8), [])
    return FrameJob(frame=frame, gate=gate, motion_regions=[])


def test_new_update_end_on_the_broker(
    broker: Broker, client: MqttClient, image: np.ndarray
) -> None:
    listener = Subscriber(broker, "demo/user/edgefed/events/object/#")
    bus = EventBus(EventBusConfig(), client, "demo/edge-01", stats=dict)
    events = ObjectEvents("demo/edge-01", publish=bus.publish_object, update_interval_s=0.0)
    perception = CameraPerception(PerceptionConfig(), 224, image.shape)
    everywhere = Plan([(0.0, 0.0, 768.0, 576.0)], [], [])
    try:
        # a person walks right for 6 frames, growing more certain, then is looked for in
        # vain until the tracker ends the track
        for i in range(6):
            box = (100.0 + 4 * i, 200.0, 180.0 + 4 * i, 300.0)
            job = frame_job(i, image)
            det = Detection("person", 0.72 + 0.05 * i, box)
            tracked, update = perception.observe([det], job.frame.ts, everywhere, image)
            assert tracked[0].track_id == 1
            events(job, update)
        for i in range(6, 6 + PerceptionConfig().tracker.max_misses):
            job = frame_job(i, image)
            _, update = perception.observe([], job.frame.ts, everywhere, image)
            events(job, update)
        received = []
        while not received or received[-1][1]["type"] != "end":
            received.append(listener.get())
    finally:
        listener.close()
    assert {topic for topic, _ in received} == {TOPIC}
    kinds = [e["type"] for _, e in received]
    assert kinds[0] == "new" and kinds[-1] == "end"
    assert set(kinds[1:-1]) == {"update"}  # the snapshot improved on every frame
    end = received[-1][1]
    assert end["track_id"] == 1 and end["camera"] == "cam1" and end["label"] == "person"
    assert end["duration_s"] == pytest.approx(0.5)
    assert end["start_time"] == pytest.approx(1_700_000_000.0)
    assert end["end_time"] == pytest.approx(1_700_000_000.5)
    snapshot = cv2.imdecode(np.frombuffer(base64.b64decode(end["snapshot_jpeg"]), np.uint8), 1)
    assert snapshot is not None
    assert snapshot.shape[0] == pytest.approx(120, abs=4)  # the best box (100 px) + 10% pad
    logged = events.recent()
    assert [e["type"] for e in logged] == kinds
    assert all("snapshot_jpeg" not in e for e in logged)
    assert bus.status()["objects_published"] == len(kinds)


def test_a_one_off_detection_makes_no_event_and_leaves_no_snapshot(image: np.ndarray) -> None:
    sent: list[object] = []
    events = ObjectEvents("edge-01", publish=sent.append)
    perception = CameraPerception(PerceptionConfig(), 224, image.shape)
    everywhere = Plan([(0.0, 0.0, 768.0, 576.0)], [], [])
    held = []
    for i, dets in enumerate([[Detection("person", 0.9, (10, 10, 60, 90))], [], []]):
        job = frame_job(i, image)
        _, update = perception.observe(dets, job.frame.ts, everywhere, image)
        events(job, update)
        held.append(events.snapshots_held)
    # its snapshot goes with the track (one JPEG per one-off detection grew edged's memory)
    assert sent == [] and held == [1, 0, 0]


def test_updates_out_of_order_leave_no_snapshot_and_no_event_after_end(image: np.ndarray) -> None:
    """With two workers on the tracked detector, a frame's update can reach the listener
    after a later frame's: an ``end`` overtaking an ``improved`` kept that track's
    snapshot for ever (one JPEG per person on a busy camera). Updates of an ended track
    are ignored, so nothing is held and no event follows its ``end``."""
    perception = CameraPerception(PerceptionConfig(), 224, image.shape)
    everywhere = Plan([(0.0, 0.0, 768.0, 576.0)], [], [])
    updates = []
    for i in range(40):
        box = (100.0 + 4 * i, 100.0, 160.0 + 4 * i, 220.0)
        dets = [Detection("person", 0.8 + 0.01 * i, box)] if i < 8 else []
        job = frame_job(i, image)
        _, update = perception.observe(dets, job.frame.ts, everywhere, image)
        updates.append((job, update))
    end = next(i for i, (_, u) in enumerate(updates) if u.ended)
    late = max(i for i, (_, u) in enumerate(updates[:end]) if u.improved)
    order = [*range(late), *range(late + 1, end + 1), late, *range(end + 1, len(updates))]
    sent: list[ObjectEvent] = []
    events = ObjectEvents("edge-01", publish=sent.append, update_interval_s=0.0)
    for i in order:
        events(*updates[i])
    assert events.snapshots_held == 0
    kinds = [e.type for e in sent]
    assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("end") == 1, kinds
