"""The joint-inference loop feeding the sample store: a frame the dispatcher offloads
keeps its EfficientNet-Lite0 features (the real model, a vtest.avi frame) until serverd's
answer closes the job; a confident answer of a known class stores a sample labelled
with it, anything else stores nothing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.api.schemas import FederationStatus
from edged.federation.features import FeatureExtractor
from edged.federation.hardexamples import HardExamples
from edged.federation.samples import SampleStore
from edged.federation.service import EdgeFederation
from edged.offload.core import JobOutcome
from edgefed.federation_wire import FederationTopics
from edgefed.images.recipe import load_recipe
from edgefed.images.verify import verify_image
from edgefed.lifecycle import Status
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.wire import OffloadResult, new_job_id
from tests.support.paths import IMAGES_DIR, REPO, TRUST_DIR, VTEST

CLASSES = ["background", "person"]


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[EdgeFederation]:
    manifest = verify_image(IMAGES_DIR / "efficientnet_lite0", [TRUST_DIR / "dev-signing.pub"])
    trainable = load_recipe(REPO / "firmware-images/recipes/efficientnet_lite0.yaml").trainable
    assert trainable is not None
    hook = FeatureExtractor(
        IMAGES_DIR / "efficientnet_lite0" / manifest.model_file, manifest.input, trainable
    )
    store = SampleStore(tmp_path / "samples.db")
    allowed = threading.Event()
    allowed.set()
    fed = EdgeFederation(
        MqttClient(MqttConfig(client_id="unused")),  # never started: no round here
        FederationTopics(),
        "edge-0",
        store,
        [],
        {"crowd": CLASSES},
        allowed,
        hard_examples={"scene": (HardExamples(store, "crowd", CLASSES, 0.5), hook)},
    )
    yield fed
    store.close()


def _frame() -> np.ndarray:
    capture = cv2.VideoCapture(str(VTEST))
    ok, frame = capture.read()
    capture.release()
    assert ok, f"{VTEST} is missing"
    return frame


def _answer(job_id: str, top: list[list[object]], status: Status = Status.EXIT) -> JobOutcome:
    result = OffloadResult(
        job_id=job_id,
        device_id="edge-0",
        model="scene",
        results=[{"type": "classification", "top": top}],
        served_by="server-01/local-0",
        completed=1,
    )
    return JobOutcome(job_id, status, result if status is Status.EXIT else None, None, "", "scene")


def test_a_confident_server_answer_stores_the_offloaded_frames_features(
    federation: EdgeFederation,
) -> None:
    frame, job = _frame(), new_job_id()
    federation.on_offload("scene", job, frame)
    federation.on_outcome(_answer(job, [["person", 0.9], ["background", 0.1]]))
    x, y = federation.store.training_set("crowd")
    assert y.tolist() == [1]
    hook = federation.hard_examples["scene"][1]
    np.testing.assert_allclose(x[0], hook(frame), rtol=1e-5)
    assert federation.status()["hard_examples"]["scene"]["stored"] == 1
    shown = FederationStatus.model_validate(federation.status())  # as GET /api/v1/status has it
    assert shown.hard_examples["scene"]["stored"] == 1


def test_unsure_failed_unknown_or_unremembered_answers_store_nothing(
    federation: EdgeFederation,
) -> None:
    frame = _frame()
    jobs = [new_job_id() for _ in range(4)]
    for job in jobs[:3]:
        federation.on_offload("scene", job, frame)
    federation.on_offload("other-model", new_job_id(), frame)  # not a federated source
    federation.on_outcome(_answer(jobs[0], [["person", 0.3]]))
    federation.on_outcome(_answer(jobs[1], [["car", 0.99]]))
    federation.on_outcome(_answer(jobs[2], [], Status.FAILED))
    federation.on_outcome(_answer(jobs[3], [["person", 0.99]]))  # never offloaded here
    assert federation.store.count("crowd") == 0
    counters = federation.status()["hard_examples"]["scene"]
    assert (counters["low_score"], counters["unknown_class"], counters["no_result"]) == (1, 1, 1)


def test_a_full_sample_store_costs_the_answers_counted_and_logged_once_not_once_each(
    federation: EdgeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's page limit answers a write that needs new pages as a full disk does
    (SQLITE_FULL). Each confident answer then logged a warning of its own and was counted
    as ``refused``, as a bad sample is; now it is a ``store_failures`` (and the store's
    ``write_failures``), the log says so once, and answers are stored again once there
    is room."""
    store = federation.store
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")
    caplog.set_level(logging.WARNING, logger="edged.federation")
    frame = _frame()

    def answered() -> None:
        job = new_job_id()
        federation.on_offload("scene", job, frame)
        federation.on_outcome(_answer(job, [["person", 0.9]]))  # the offload client's listener

    for _ in range(4):
        answered()
    status = federation.status()
    counters = status["hard_examples"]["scene"]
    assert (counters["store_failures"], counters["refused"], counters["stored"]) == (4, 0, 0)
    assert status["samples"]["write_failures"] == 4
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "database or disk is full" in lines[0]
    store._db.execute(f"PRAGMA max_page_count={pages * 100}")
    answered()
    assert federation.store.training_set("crowd")[1].tolist() == [1]


def test_frames_the_features_hook_cannot_read_are_one_outage_in_the_log(
    federation: EdgeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    """Each offloaded frame the hook failed on logged a line and a traceback of its own;
    now the failures are one outage (and each costs only its sample)."""
    caplog.set_level(logging.WARNING, logger="edged.federation")
    jobs = [new_job_id() for _ in range(5)]
    for job in jobs:
        federation.on_offload("scene", job, np.zeros((0, 0, 3), np.uint8))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert lines[0].startswith("federation: the features of an offloaded frame failed")
    job = new_job_id()
    federation.on_offload("scene", job, _frame())  # a readable frame is remembered again
    federation.on_outcome(_answer(job, [["person", 0.9]]))
    assert federation.store.training_set("crowd")[1].tolist() == [1]
