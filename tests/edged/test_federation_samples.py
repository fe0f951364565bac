"""The sample store (real SQLite) and the hard-example listener feeding it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.federation.hardexamples import HardExamples
from edged.federation.samples import SampleStore
from edged.offload.core import JobOutcome
from edgefed.errors import FederationError
from edgefed.lifecycle import Status
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
