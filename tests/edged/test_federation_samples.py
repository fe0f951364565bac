"""The sample store (real SQLite) and the hard-example listener feeding it."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from edged.federation.adoption import HeadSlot, Served
from edged.federation.hardexamples import HardExamples
from edged.federation.participant import Participant
from edged.federation.samples import SampleStore, SampleStoreError
from edged.federation.versions import VersionImages
from edged.offload.core import JobOutcome
from edgefed.errors import FederationError
from edgefed.federation_wire import FederationTopics, RoundOpen, encode
from edgefed.lifecycle import Status
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.wait import wait_until
from edgefed.wire import OffloadResult, new_job_id


def _vec(value: float, dim: int = 4) -> np.ndarray:
    return np.full(dim, value, np.float32)


def test_samples_survive_a_restart_and_the_holdout_is_never_trained_on(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.db", holdout_every=5)
    for i in range(1, 21):
        store.add("head", _vec(i), np.int64(i % 3), "operator")
    store.close()
    store = SampleStore(tmp_path / "s.db", holdout_every=5)
    x, y = store.training_set("head")
    hx, hy = store.holdout("head")
    assert len(y) == store.count("head") == 16 and len(hy) == 4
    assert sorted(hx[:, 0].tolist()) == [5.0, 10.0, 15.0, 20.0]
    assert not set(x[:, 0].tolist()) & set(hx[:, 0].tolist())
    np.testing.assert_array_equal(y[:3], [1, 2, 0])


def test_the_bound_drops_the_oldest_and_counts_them_across_restarts(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.db", max_samples=10, holdout_every=1000)
    for i in range(1, 16):
        store.add("head", _vec(i), 0, "server", ref=f"job{i}")
    x, _ = store.training_set("head")
    assert x[:, 0].tolist() == [float(i) for i in range(6, 16)]
    assert store.counters.dropped_oldest == 5
    store.close()
    assert SampleStore(tmp_path / "s.db", max_samples=10).counters.dropped_oldest == 5


@pytest.mark.parametrize(
    ("features", "label", "source", "reason"),
    [
        (np.zeros((2, 2)), 0, "operator", "vector"),
        (np.array([np.nan]), 0, "operator", "finite"),
        (np.array(["a"]), 0, "operator", "finite"),
        (_vec(1.0), -1, "operator", "label"),
        (_vec(1.0), 0, "camera", "source"),
        (_vec(1.0, dim=5), 0, "operator", "have 4 features"),
    ],
)
def test_bad_samples_are_refused_with_a_reason_and_lose_nothing(
    tmp_path: Path, features: np.ndarray, label: int, source: str, reason: str
) -> None:
    store = SampleStore(tmp_path / "s.db")
    store.add("head", _vec(1.0), 0, "operator")
    with pytest.raises(FederationError, match=reason):
        store.add("head", features, label, source)  # type: ignore[arg-type]
    assert store.counters.refused == 1
    assert len(store.training_set("head")[1]) + len(store.holdout("head")[1]) == 1


def corrupt_samples(path: Path) -> None:
    """Overwrite the pages of the samples table and its index in a closed store: it opens
    and migrates as before (those read other tables), then every read of a sample fails
    (SQLite's "database disk image is malformed")."""
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    roots = [
        r[0] for r in db.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name = 'samples'")
    ]
    db.close()
    assert not path.with_name(path.name + "-wal").exists()  # nothing left to shadow the pages
    with path.open("r+b") as f:
        for root in roots:
            f.seek((root - 1) * page_size)
            f.write(b"\xa5" * page_size)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_full_disk_is_a_store_error_counted_once_logged_and_the_sample_can_be_sent_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's page limit answers a write that needs new pages as a full disk does
    (SQLITE_FULL). That was a plain ``FederationError``, as for a bad sample: the API
    answered 400, nothing was counted. Now it is a ``SampleStoreError`` (the sample was
    good: try again later), counted in ``write_failures``, one outage in the log, and
    the same sample is stored once there is room."""
    caplog.set_level(logging.WARNING, logger="edged.federation")
    store = SampleStore(tmp_path / "s.db", holdout_every=1000)
    store.add("head", _vec(1.0, dim=40_000), 0, "operator")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")
    big = _vec(2.0, dim=40_000)  # 160 KB: needs pages the file may not grow
    for _ in range(3):
        with pytest.raises(SampleStoreError, match="database or disk is full"):
            store.add("head", big, 1, "operator")
    assert (store.counters.write_failures, store.counters.refused) == (3, 0)
    assert store.count("head") == 1
    errors = _errors(caplog)
    assert len(errors) == 1 and "storing a sample failed: database or disk is full" in errors[0]
    store._db.execute(f"PRAGMA max_page_count={pages * 100}")
    store.add("head", big, 1, "operator")
    assert store.training_set("head")[1].tolist() == [0, 1]


def test_a_corrupt_store_opens_then_fails_its_reads_with_a_store_error_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged file opens and migrates, so edged starts; then its reads raised a raw
    ``sqlite3.DatabaseError`` past every caller (the status API answered 500, the metrics
    went dark). Now each read is a ``SampleStoreError``, counted in ``read_failures`` and
    logged as one outage."""
    path = tmp_path / "s.db"
    store = SampleStore(path)
    for i in range(50):
        store.add("head", _vec(i, dim=512), 0, "operator")
    store.close()
    corrupt_samples(path)
    caplog.set_level(logging.WARNING, logger="edged.federation")
    store = SampleStore(path)
    for read in (store.count, store.training_set, store.holdout):
        with pytest.raises(SampleStoreError, match="malformed"):
            read("head")
    with pytest.raises(SampleStoreError, match="malformed"):
        store.add("head", _vec(1.0, dim=512), 0, "operator")
    assert (store.counters.read_failures, store.counters.write_failures) == (3, 1)
    errors = _errors(caplog)
    assert len(errors) == 2  # one outage for the reads, one for the writes
    assert "reading samples failed" in errors[0] and "storing a sample failed" in errors[1]


class _SlowFirstLook(SampleStore):
    """Holds each caller between reading a model's feature count and storing its sample
    until a second caller gets there too (or 0.5 s pass): the window the two concurrent
    first samples need."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.both_looked = threading.Barrier(2, timeout=0.5)

    def _dim(self, model: str) -> int | None:
        dim = super()._dim(model)
        # broken: the other caller could not get here meanwhile (look and store are one step)
        with contextlib.suppress(threading.BrokenBarrierError):
            self.both_looked.wait()
        return dim


def test_two_concurrent_first_samples_of_different_lengths_are_not_both_stored(
    tmp_path: Path,
) -> None:
    """The feature count was read under the lock, then the lock was let go before the
    insert: two first samples of a model with different lengths could both see "no
    samples yet" and both be stored, after which every training set failed to stack.
    Now one is stored and the other refused."""
    store = _SlowFirstLook(tmp_path / "s.db")
    outcomes: list[str] = []

    def add(dim: int) -> None:
        try:
            store.add("head", _vec(1.0, dim=dim), 0, "operator")
            outcomes.append("stored")
        except FederationError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=add, args=(dim,)) for dim in (4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes)[1] == "stored" and "features, got" in sorted(outcomes)[0]
    assert store.counters.refused == 1
    x, _ = store.training_set("head")
    assert x.shape[0] == 1


def _outcome(
    job_id: str, top: list[list[object]] | None, status: Status = Status.EXIT
) -> JobOutcome:
    result = None
    if top is not None:
        result = OffloadResult(
            job_id=job_id,
            device_id="cam-1",
            model="big",
            results=[{"top": top}],
            served_by="serverd-1",
            completed=1,
        )
    return JobOutcome(job_id, status, result, None, "")


def test_hard_examples_are_stored_with_the_servers_label(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.db", holdout_every=1000)
    listener = HardExamples(store, "head", ["background", "person"], min_score=0.6)
    jobs = [new_job_id() for _ in range(6)]
    for i, job in enumerate(jobs):
        listener.remember(job, _vec(i))
    listener(_outcome(jobs[0], [["person", 0.9]]))
    listener(_outcome(jobs[1], [["background", 0.7]]))
    listener(_outcome(jobs[2], [["person", 0.3]]))
    listener(_outcome(jobs[3], [["dog", 0.99]]))
    listener(_outcome(jobs[4], None, Status.EXPIRED))
    listener(_outcome(new_job_id(), [["person", 0.9]]))  # never offloaded by this edge
    x, y = store.training_set("head")
    assert x[:, 0].tolist() == [0.0, 1.0] and y.tolist() == [1, 0]
    c = listener.counters
    assert (c.stored, c.low_score, c.unknown_class, c.no_result) == (2, 1, 1, 1)


def test_pending_hard_examples_are_bounded(tmp_path: Path) -> None:
    listener = HardExamples(SampleStore(tmp_path / "s.db"), "head", ["a"], max_pending=2)
    for _ in range(5):
        listener.remember(new_job_id(), _vec(0))
    assert listener.counters.forgotten == 3


def test_a_round_on_a_damaged_store_is_skipped_with_its_reason_and_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A round opened for this device while its store cannot be read: the round is
    skipped (``rounds_skipped``, ``last_reason``), the worker goes on, and the log holds
    the store's one outage line, not a traceback per round."""
    path = tmp_path / "federation.sqlite"
    store = SampleStore(path)
    for i in range(10):
        store.add("digits", np.full(8, i, np.float32), 0, "operator")
    store.close()
    corrupt_samples(path)
    store = SampleStore(path)
    topics = FederationTopics()
    slot = HeadSlot()
    slot.swap(Served(1, [np.zeros((8, 2), np.float32)]))
    participant = Participant(
        MqttClient(MqttConfig(client_id="edge-0")),  # never started: the round is handed in
        topics, "edge-0", "digits", store, slot, VersionImages(tmp_path / "images", []),
    )  # fmt: skip
    participant.start()
    try:
        caplog.set_level(logging.INFO)
        for n in (1, 2):  # one after the other: a round waiting is replaced by a later one
            plan = RoundOpen(
                model="digits", round=n, base_version=1, participants=["edge-0"], deadline_ms=1
            )
            participant._on_message(topics.round("digits"), encode(plan))
            wait_until(f"round {n} skipped", lambda n=n: participant.counters.rounds_skipped == n)
    finally:
        participant.stop()
        store.close()
    assert "malformed" in participant.counters.last_reason
    assert participant.counters.rounds_trained == 0
    assert len(_errors(caplog)) == 1  # the store's outage line
    assert not [r for r in caplog.records if r.name == "edged.federation.participant"]
