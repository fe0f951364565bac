"""A job that ran and then met a fault of serverd's own: a close the full disk refused, a
result the wire cannot carry. Each was left open for good (every redelivery dropped as a
duplicate until a restart), the second also unanswered and holding a place in the queue.
And a result larger than the broker takes (``mqtt.max_packet_bytes``), which wedged
serverd's whole link: the broker closed it for the reply, again after every reconnect.

One real serverd on a real mosquitto with one real Triton, serving two copies of the pose
detector (re-signed with a key of the test's) whose decoder keeps far more boxes:
``crowd`` keeps every anchor (2,254 detections, a 340 KB result: over the wire's 64 KB
header limit), ``busy`` keeps those scoring 0.01 or more (about 120, 18 KB: several
pages of SQLite's, within the limit). ``max_queue`` is 1, so a job serverd never lets
go of is seen at once: every later job is shed. A second serverd (``capped``) serves
``busy`` with serverd told of a broker limit of 10 KB.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefed.images import signing
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from edgefed.wire import MAX_HEADER_BYTES, OffloadErrorMessage, OffloadRequest, OffloadResult
from serverd.jobtable import OPEN
from tests.serverd.conftest import _require_triton
from tests.serverd.harness import Edge, ServerdThread, frame_jpeg, serverd_config
from tests.support.paths import IMAGES_DIR

JPEG = frame_jpeg()
PREFIX = "faults"
CAPPED_PREFIX, CAP = "capped", 10_000


def detector_copy(images: Path, name: str, score_threshold: float, key: Path) -> Path:
    """The pose detector as image ``name``: no suppression but of identical boxes, every
    detection scoring ``score_threshold`` or more kept; signed with ``key``."""
    image = images / name
    shutil.copytree(IMAGES_DIR / "pose_detector", image)
    manifest = image / "manifest.yaml"
    text = manifest.read_text()
    for old, new in (
        ("score_threshold: 0.5", f"score_threshold: {score_threshold}"),
        ("iou_threshold: 0.3", "iou_threshold: 1.0\n    weighted: false"),
    ):
        assert old in text, f"the pose detector's manifest no longer says {old!r}"
        text = text.replace(old, new)
    manifest.write_text(text)
    signature = signing.sign(signing.load_private_key(key), manifest.read_bytes())
    (image / "manifest.yaml.sig").write_bytes(signature)
    return image


@pytest.fixture(scope="module")
def detectors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``crowd`` and ``busy`` in ``images/``, signed with ``test.key``."""
    _require_triton()
    root = tmp_path_factory.mktemp("faults")
    signing.generate_key_pair(root / "test.key", root / "test.pub")
    for name, threshold in (("crowd", 0.0), ("busy", 0.01)):
        detector_copy(root / "images", name, threshold, root / "test.key")
    return root


def faulty_serverd(
    broker: Broker, root: Path, name: str, prefix: str, **mqtt: object
) -> ServerdThread:
    images = root / "images"
    models = [
        {"name": m, "image": str(images / m), "driver": {"type": "litert", "num_threads": 1}}
        for m in ("crowd", "busy")
    ]
    config = serverd_config(
        root / name,
        broker.port,
        instances=1,
        triton={"models": models},
        images={"dir": str(images), "trusted_keys": [str(root / "test.pub")]},
        prefix=prefix,
        max_queue=1,
        # the session's serverd is on the same broker: a client id of its own, or each
        # connect would take the other's session away
        mqtt={"host": "127.0.0.1", "port": broker.port, "client_id": f"serverd-{name}", **mqtt},
    )
    return ServerdThread(config)


@pytest.fixture(scope="module")
def crowded(shared_broker: Broker, detectors: Path) -> Iterator[ServerdThread]:
    with faulty_serverd(shared_broker, detectors, "faults", PREFIX) as running:
        yield running


@pytest.fixture(scope="module")
def capped(shared_broker: Broker, detectors: Path) -> Iterator[ServerdThread]:
    serverd = faulty_serverd(
        shared_broker, detectors, "capped", CAPPED_PREFIX, max_packet_bytes=CAP
    )
    with serverd as running:
        yield running


def own_device(broker: Broker, request: pytest.FixtureRequest, prefix: str) -> Edge:
    """A device of the test's own (named after it), on ``prefix``."""
    name = request.node.name.removeprefix("test_")[:50]
    return Edge(broker.port, device_id=f"cam-{name}", prefix=prefix)


def final_internal_error(
    device: Edge, serverd: ServerdThread, job: OffloadRequest
) -> tuple[str, bytes]:
    """Send ``job``; it must be answered with a final ``internal`` error, stored in the job
    table (a redelivery gets it again) with the job closed Failed: its reason, and raw."""
    device.send(job, JPEG)
    ((reply, raw),) = device.collect(1, timeout=30)
    assert isinstance(reply, OffloadErrorMessage) and reply.job_id == job.job_id
    assert reply.code == "internal" and not reply.retryable
    row = serverd.job(job.device_id, job.job_id)
    assert row is not None and row["status"] == "Failed" and row["reply"] == raw
    return reply.reason, raw


@pytest.fixture
def device(shared_broker: Broker, request: pytest.FixtureRequest) -> Iterator[Edge]:
    client = own_device(shared_broker, request, PREFIX)
    yield client
    client.close()


def test_a_job_whose_close_the_full_disk_refused_is_answered_on_every_redelivery(
    crowded: ServerdThread, device: Edge
) -> None:
    """The job is recorded, then the disk fills while it runs (SQLite's page limit: a real
    SQLITE_FULL for any write that needs a new page): its 18 KB result is sent but not
    stored, and its row stays open. Before, serverd dropped every redelivery as a
    duplicate of a running job, even once the disk had room, until a restart: an edge
    told to retry never got an answer. Now serverd, which no longer holds the job, runs it
    again: while the disk is still full, and after, when the result is stored at last."""
    table = crowded.app.jobs
    assert table is not None
    request = device.request("busy")
    key = (request.device_id, request.job_id)

    def fill_the_disk() -> int:
        """Leave two pages to spare for recording the delivery (the result needs five),
        none free inside the file (the migrations leave some: VACUUM returns them)."""
        table._db.execute("VACUUM")
        pages = int(table._db.execute("PRAGMA page_count").fetchone()[0])
        table._db.execute(f"PRAGMA max_page_count={pages + 2}")
        return pages

    pages = crowded.call(fill_the_disk)
    refused = table.failures
    try:
        device.send(request, JPEG)
        ((first, _),) = device.collect(1, timeout=30)
        row = crowded.job(*key)
        assert row is not None and row["status"] in OPEN and row["reply"] is None
        assert table.failures > refused  # the close was refused, the delivery recorded
        device.send(request, JPEG)  # the disk still full
        ((second, _),) = device.collect(1, timeout=30)
    finally:
        crowded.call(lambda: table._db.execute(f"PRAGMA max_page_count={pages * 1000}"))
    device.send(request, JPEG)  # room again
    ((third, third_raw),) = device.collect(1, timeout=30)
    for reply in (first, second, third):
        assert isinstance(reply, OffloadResult) and reply.job_id == request.job_id
        assert len(reply.results) > 50
    wait_until(
        "the result stored",
        lambda: (row := crowded.job(*key)) is not None and row["status"] == "Exit",
    )
    row = crowded.job(*key)
    assert row is not None and row["reply"] == third_raw and row["deliveries"] == 3
    device.send(request, JPEG)  # stored now: the same reply again, unrun
    ((_, fourth_raw),) = device.collect(1, timeout=30)
    assert fourth_raw == third_raw
    assert crowded.job(*key)["deliveries"] == 4  # type: ignore[index]


def test_a_result_too_large_for_the_wire_gets_a_final_error_and_the_job_is_closed(
    crowded: ServerdThread, device: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, encoding the 340 KB result raised before the close: the job was never
    answered, stayed held (with max_queue 1 every later job was shed) and open in the
    table, and each redelivery was dropped as a duplicate."""
    caplog.set_level(logging.INFO, logger="serverd.service")
    before = crowded.status()["counters"]
    crowds = [device.request("crowd"), device.request("crowd")]
    errors = []
    for request in crowds:  # one at a time: the queue holds one job
        reason, raw = final_internal_error(device, crowded, request)
        assert "items) cannot be sent" in reason and f"limit {MAX_HEADER_BYTES}" in reason
        errors.append(raw)
    # the final error is stored: a redelivery gets it again, byte for byte, unrun
    device.send(crowds[0], JPEG)
    ((_, again),) = device.collect(1, timeout=30)
    assert again == errors[0]
    # and nothing holds a place in the queue: the next job runs
    device.send(busy := device.request("busy"), JPEG)
    ((reply, _),) = device.collect(1, timeout=30)
    assert isinstance(reply, OffloadResult) and reply.job_id == busy.job_id
    after = crowded.status()["counters"]
    assert after["failed"] - before["failed"] == 2 and after["resent"] - before["resent"] == 1
    assert after["errors"] == before["errors"]
    lines = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "cannot be sent" in r.getMessage()
    ]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # once for both jobs, not per job


def test_a_result_larger_than_the_broker_takes_gets_a_final_error_and_the_link_stays_up(
    capped: ServerdThread, shared_broker: Broker, request: pytest.FixtureRequest
) -> None:
    """``busy``'s 18 KB result is over the 10 KB limit serverd is told of: it is refused
    unsent, and the job fails as one too large for the wire does (the edge hears why at
    once, and a redelivery gets the same error); serverd's link stays up for the rest."""
    device = own_device(shared_broker, request, CAPPED_PREFIX)
    try:
        job = device.request("busy")
        reason, raw = final_internal_error(device, capped, job)
        assert "cannot be sent: a publish to" in reason
        assert f"(mqtt.max_packet_bytes = {CAP})" in reason
        device.send(job, JPEG)
        ((_, again),) = device.collect(1, timeout=30)
        assert again == raw
        device.send(other := device.request("nope"), JPEG)  # an answer that fits
        ((answer, _),) = device.collect(1, timeout=30)
        assert isinstance(answer, OffloadErrorMessage) and answer.job_id == other.job_id
        mqtt = capped.app.mqtt
        assert mqtt is not None and mqtt.connected and mqtt.counters.connects == 1
        counters = capped.status()["counters"]
        assert (counters["failed"], counters["completed"], counters["errors"]) == (2, 0, 0)
    finally:
        device.close()
