"""serverd's federation against hostile updates, on a real broker: devices that speak the
wire by hand send chunk counts that cannot be right, chunks from outside the open round,
more than one update at a time, values that overflow the model's dtype and parameter
headers that do not parse; serverd refuses each with its reason and keeps running. And
honest updates more than its reassembly holds at once, which wait for room."""

from __future__ import annotations

import json
import math
import queue
import struct
from collections.abc import Iterator

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefed import federation_upload
from edgefed.federation_upload import (
    CHUNK_OVERHEAD_BYTES,
    MAX_PENDING_BYTES,
    UPDATE_OVERHEAD_BYTES,
    Upload,
)
from edgefed.federation_wire import (
    MAX_UPDATE_BYTES,
    MAX_VERSION_FRAME_BYTES,
    AdoptionReport,
    FederationTopics,
    GlobalModel,
    ReceivedModel,
    UpdateAck,
    decode,
    encode,
    encode_params,
    init_head,
)
from edgefed.images.federated import Base
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from edgefed.wire import new_job_id
from serverd.federation.aggregate import AggregationSettings
from serverd.federation.coordinator import Coordinator
from serverd.federation.images import VersionImager
from serverd.federation.rounds import Federation, RoundSettings
from serverd.federation.service import FederationService

MODEL = "head"
SIDE = 32  # the head reads 32 x 32 grey pixels: 1024 features, two classes
CHUNK = 2048  # an honest update (8 KiB of weights) comes in five chunks
TOPICS = FederationTopics()


class Device:
    """A device on its own connection, sending what a test gives it; serverd's acks to it
    wait in ``acks``."""

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.client = MqttClient(MqttConfig(port=port, client_id=name))
        self.acks: queue.Queue[UpdateAck] = queue.Queue()
        self.client.subscribe(TOPICS.ack(name), self._on_ack)
        self.client.start()
        assert self.client.wait_connected(10)

    def _on_ack(self, _topic: str, payload: bytes) -> None:
        message = decode(payload)
        if isinstance(message, UpdateAck):
            self.acks.put(message)

    def send(self, *frames: bytes) -> None:
        for data in frames:
            self.client.publish(TOPICS.update(self.name), data)

    def ack(self) -> UpdateAck:
        return self.acks.get(timeout=10)

    def upload(self, data: bytes, round_id: int = 1, num_samples: int = 50) -> Upload:
        return Upload.of(
            new_job_id(),
            data,
            model=MODEL,
            round=round_id,
            base_version=1,
            num_samples=num_samples,
            metrics={},
            max_chunk_bytes=CHUNK,
        )


class Server:
    """serverd's federation of one model (its service and coordinator) on a broker."""

    def __init__(
        self, port: int, settings: RoundSettings, max_pending_bytes: int = MAX_PENDING_BYTES
    ) -> None:
        key = Ed25519PrivateKey.generate()
        self.client = MqttClient(MqttConfig(port=port, client_id="serverd"))
        imager = VersionImager(MODEL, Base.pixels(SIDE, SIDE, 255.0), ["no", "yes"], key)
        federation = Federation(MODEL, 1, init_head(SIDE * SIDE, 2), settings)
        self.coordinator = Coordinator(
            self.client,
            TOPICS,
            federation,
            key,
            imager,
            max_chunk_bytes=CHUNK,
            max_pending_bytes=max_pending_bytes,
        )
        self.service = FederationService(self.client, TOPICS, [self.coordinator])
        self.service.start()
        self.versions: queue.Queue[GlobalModel] = queue.Queue()
        self.client.subscribe(TOPICS.model(MODEL), self._on_version)
        self.client.start()
        assert self.client.wait_connected(10)
        assert self.versions.get(timeout=10).version == 1

    def _on_version(self, _topic: str, payload: bytes) -> None:
        message = decode(payload, MAX_VERSION_FRAME_BYTES)
        if isinstance(message, ReceivedModel):
            self.versions.put(message.model)

    def rejected(self) -> dict[str, str]:
        rejected: dict[str, str] = self.coordinator.status()["rejected"]
        return rejected


EDGES = ("edge-a", "edge-b", "edge-c")


@pytest.fixture
def site(broker: Broker) -> Iterator[tuple[Server, dict[str, Device]]]:
    server, devices = _site(broker, RoundSettings(min_clients=2, quorum=2, min_samples=1))
    yield server, devices
    _stop(server, devices)


def _site(
    broker: Broker, settings: RoundSettings, max_pending_bytes: int = MAX_PENDING_BYTES
) -> tuple[Server, dict[str, Device]]:
    server = Server(broker.port, settings, max_pending_bytes)
    devices = {name: Device(broker.port, name) for name in (*EDGES, "outsider")}
    server.coordinator.open_round(dict.fromkeys(EDGES, 50))
    return server, devices


def _stop(server: Server, devices: dict[str, Device]) -> None:
    for device in devices.values():
        device.client.stop()
    server.client.stop()


def _honest(value: float = 0.01) -> bytes:
    return encode_params([np.full((SIDE * SIDE, 2), value, np.float32), np.zeros(2, np.float32)])


def _chunk(upload: Upload, **changes: object) -> bytes:
    """The first chunk of ``upload`` with ``changes`` to its header and a one-byte body."""
    return encode(upload.headers[0].model_copy(update=changes), b"x")


def test_a_chunk_count_that_cannot_be_right_is_refused_and_a_query_answers_at_once(
    site: tuple[Server, dict[str, Device]],
) -> None:
    """One chunk claiming 10**15 chunks of a one-byte update, then a query about it: the
    chunk is refused as it is decoded (before, the query's answer listed 10**15 indices
    on serverd's loop and never came); chunks larger than serverd's chunking are refused
    with the reason and recorded."""
    server, devices = site
    edge = devices["edge-a"]
    upload = edge.upload(_honest())
    edge.send(_chunk(upload, count=10**15, total_bytes=1), upload.query())
    ack = edge.ack()
    assert (ack.state, ack.missing) == ("unknown", [])
    assert server.service.counters.bad_messages == 1
    edge.send(_chunk(upload, count=4, total_bytes=8 * CHUNK))  # chunks of 4 KiB
    ack = edge.ack()
    assert ack.state == "rejected" and "4 chunks" in ack.reason and "need 8" in ack.reason
    assert server.rejected()["edge-a"] == ack.reason


def test_resending_goes_on_past_the_chunks_one_ack_lists(
    site: tuple[Server, dict[str, Device]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack lists a bounded number of missing chunks; the edge sends what it lists and
    nothing more, so once those are in serverd lists the next ones until the update is
    whole (before, the chunks past the first list were never asked for)."""
    monkeypatch.setattr(federation_upload, "MAX_MISSING_LISTED", 2)
    _, devices = site
    edge = devices["edge-b"]
    upload = edge.upload(_honest())
    assert len(upload.chunks) == 5
    edge.send(upload.frames([0])[0], upload.query())  # the rest lost with the connection
    listed = []
    while not upload.done:
        ack = edge.ack()
        listed.append(ack.missing)
        edge.send(*upload.on_ack(ack))
    assert listed == [[1, 2], [3, 4], []]
    assert upload.verdict is not None and upload.verdict.state == "accepted"


def test_chunks_from_outside_the_open_round_are_dropped_without_reassembly(
    site: tuple[Server, dict[str, Device]],
) -> None:
    """Chunks from a device the round did not select, tagged for another round, or from a
    participant that already answered are counted and dropped, never held; the last chunk
    of such an update is answered with the reason, which is not the device's answer."""
    server, devices = site
    outsider, early = devices["outsider"], devices["edge-a"]
    strange = outsider.upload(_honest())
    ahead = early.upload(_honest(), round_id=2)
    outsider.send(strange.frames([0])[0], strange.query())
    early.send(ahead.frames([0])[0], ahead.query())
    assert outsider.ack().state == early.ack().state == "unknown"  # nothing held
    assert server.coordinator.counters.chunks_dropped == 2
    assert server.coordinator.status()["reassembly"]["updates"] == 0
    outsider.send(strange.frames([4])[0])
    ack = outsider.ack()
    assert ack.state == "rejected" and ack.reason == "outsider is not a participant of round 1"
    honest = early.upload(_honest())
    early.send(*honest.frames())
    assert early.ack().state == "accepted"
    early.send(*honest.frames())  # again, after its answer
    ack = early.ack()
    assert ack.state == "rejected" and "already answered" in ack.reason
    assert server.coordinator.counters.chunks_dropped == 8
    assert server.rejected() == {}


def test_a_device_holds_one_update_no_larger_than_the_model_allows(
    site: tuple[Server, dict[str, Device]],
) -> None:
    """A participant starting update after update holds only its newest one (it may have
    restarted and trained again); one claiming more bytes than an update of the model can
    have is refused at its first chunk; each held update is charged its whole size and a
    fixed overhead."""
    server, devices = site
    edge, greedy = devices["edge-a"], devices["edge-b"]
    uploads = [edge.upload(_honest()) for _ in range(3)]
    for upload in uploads:
        edge.send(upload.frames([0])[0])
    edge.send(*(u.query() for u in uploads))
    assert [edge.ack().state for _ in uploads] == ["unknown", "unknown", "partial"]
    held = server.coordinator.status()["reassembly"]
    assert held["updates"] == 1 and held["bytes"] > len(_honest())
    count = math.ceil(MAX_UPDATE_BYTES / CHUNK)
    big = greedy.upload(_honest())
    greedy.send(_chunk(big, count=count, total_bytes=MAX_UPDATE_BYTES))
    ack = greedy.ack()
    assert ack.state == "rejected" and f"{MAX_UPDATE_BYTES} bytes" in ack.reason
    assert server.rejected()["edge-b"] == ack.reason
    assert server.coordinator.status()["reassembly"]["updates"] == 1


def test_values_that_do_not_fit_the_models_dtype_are_refused(
    site: tuple[Server, dict[str, Device]],
) -> None:
    """float64 values of 1e300 are finite but not in float32, the model's dtype: refused
    (before, they were accepted and the new version was all inf, refused by every edge)."""
    server, devices = site
    huge = encode_params([np.full((SIDE * SIDE, 2), 1e300), np.zeros(2)])
    devices["edge-a"].send(*devices["edge-a"].upload(huge).frames())
    ack = devices["edge-a"].ack()
    assert ack.state == "rejected" and "float32" in ack.reason
    for name in ("edge-b", "edge-c"):
        devices[name].send(*devices[name].upload(_honest()).frames())
        assert devices[name].ack().state == "accepted"
    outcome = server.coordinator.poll()
    assert outcome is not None and outcome.version == 2 and outcome.params is not None
    assert all(np.all(np.isfinite(p)) for p in outcome.params)
    assert server.versions.get(timeout=10).version == 2


def test_a_non_finite_aggregate_fails_the_round_and_the_model_stays(broker: Broker) -> None:
    """Privacy noise far beyond float32 (a misconfiguration) makes every coordinate inf:
    the round fails with the reason, no version is published, the global model stays."""
    noisy = AggregationSettings(strategy="fedavg", clip_norm=1.0, noise_multiplier=1e40)
    settings = RoundSettings(min_clients=2, quorum=2, min_samples=1, aggregation=noisy)
    server, devices = _site(broker, settings)
    try:
        for name in EDGES:
            devices[name].send(*devices[name].upload(_honest()).frames())
            assert devices[name].ack().state == "accepted"
        outcome = server.coordinator.poll()
        assert outcome is not None and outcome.version is None
        assert "not finite" in outcome.failure
        assert server.coordinator.federation.version == 1
        assert np.all(server.coordinator.federation.params[0] == 0)
        assert server.coordinator.history()[-1]["failure"] == outcome.failure
        assert server.coordinator.counters.versions_published == 1
        with pytest.raises(queue.Empty):
            server.versions.get(timeout=0.5)
    finally:
        _stop(server, devices)


def test_an_adoption_report_with_numbers_json_cannot_carry_is_a_bad_message(
    site: tuple[Server, dict[str, Device]],
) -> None:
    """NaN and Infinity are no JSON numbers: a report holding them was kept, and serverd's
    status (``/api/v1/status``, ``/api/v1/federation``) became invalid JSON. Such a
    report is counted as a bad message and dropped; the device's next report is kept."""
    server, devices = site
    edge = devices["edge-a"]
    report = AdoptionReport(
        model=MODEL, version=2, adopted=False, holdout_accuracy=0.5, current_accuracy=123456.0
    )
    for old, new in ((b"0.5", b"NaN"), (b"123456.0", b"Infinity")):  # as long: a whole frame
        edge.client.publish(TOPICS.adoption(edge.name), encode(report).replace(old, new))
    edge.client.publish(TOPICS.adoption(edge.name), encode(report))
    wait_until("the good report", lambda: edge.name in server.coordinator.adoptions)
    assert server.service.counters.bad_messages == 2
    status = json.loads(json.dumps(server.service.status(), allow_nan=False))
    assert status["models"][MODEL]["adoptions"][edge.name]["holdout_accuracy"] == 0.5


def _params_with(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I", len(header)) + header + body


def _shape(shape: list[int]) -> bytes:
    """Parameters of one float32 tensor of ``shape`` and no bytes."""
    return _params_with(json.dumps([{"dtype": "float32", "shape": shape}]).encode())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_shape([65536] * 4), "spans more than"),
        (_shape([0, 2**26, 2**26, 2**26, 2**26]), "spans more than"),
        (_shape([True, 1]), "invalid shape"),
        (_params_with(b"[" * 5000 + b"]" * 5000), "nested too deep"),
    ],
    ids=[
        "element-count-overflows-int64",
        "no-elements-but-past-numpys-sizes",
        "a-bool-dimension",
        "deeply-nested-header",
    ],
)
def test_malformed_parameters_are_refused_with_the_reason(
    site: tuple[Server, dict[str, Device]], data: bytes, reason: str
) -> None:
    """Parameters whose header overflows numpy's sizes or Python's parser are refused and
    recorded (before, the handler failed with a traceback and the device had no answer:
    a shape with a zero passed the byte count and numpy could not shape it; ``true`` passed
    as the integer 1 and numpy refused it)."""
    server, devices = site
    edge = devices["edge-c"]
    edge.send(*edge.upload(data).frames())
    ack = edge.ack()
    assert ack.state == "rejected" and ack.reason.startswith("malformed: ")
    assert reason in ack.reason
    assert server.rejected()["edge-c"] == ack.reason


def test_an_update_there_is_no_room_for_waits_and_is_not_held_against_the_device(
    broker: Broker,
) -> None:
    """Two participants upload at once and the reassembly holds one update: the second's
    chunks are counted and dropped unread, with no answer, and once the first is whole the
    second is told to send its update again (``unknown``), which is accepted. Before, it
    was rejected as malformed ("reassembly is full") and that was its answer to the round:
    serverd's own load counted as the device's fault."""
    sizes = len(_honest()), math.ceil(len(_honest()) / CHUNK)
    cost = sizes[0] + UPDATE_OVERHEAD_BYTES + sizes[1] * CHUNK_OVERHEAD_BYTES
    settings = RoundSettings(min_clients=2, quorum=2, min_samples=1)
    server, devices = _site(broker, settings, max_pending_bytes=cost * 3 // 2)
    try:
        first, second = devices["edge-a"], devices["edge-b"]
        uploads = first.upload(_honest()), second.upload(_honest(0.02))
        first.send(uploads[0].frames([0])[0])
        wait_until("one held", lambda: server.coordinator.status()["reassembly"]["updates"] == 1)
        second.send(*uploads[1].frames())
        counters = server.coordinator.counters
        wait_until("no room", lambda: counters.chunks_no_room == len(uploads[1].chunks))
        assert server.coordinator.status()["reassembly"]["waiting"] == 1
        first.send(*uploads[0].frames()[1:])
        assert first.ack().state == "accepted"
        again = second.ack()
        assert (again.state, again.update_id) == ("unknown", uploads[1].update_id)
        second.send(*uploads[1].on_ack(again))
        assert second.ack().state == "accepted"
        assert server.rejected() == {}
        assert server.coordinator.status()["received"] == ["edge-a", "edge-b"]
        assert second.acks.empty() and counters.updates_rejected == 0
    finally:
        _stop(server, devices)
