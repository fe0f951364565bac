"""The dynamic scheduler: queue order, least-work placement, health and re-placement."""

from __future__ import annotations

from collections import Counter

import pytest

from serverd.scheduler import Job, Scheduler


def make(instances: dict[str, int], models: tuple[str, ...] = ("det",), **kw: float) -> Scheduler:
    s = Scheduler(**kw)  # type: ignore[arg-type]
    for name, capacity in instances.items():
        s.add_instance(name, models, capacity)
    return s


def test_higher_priority_then_earlier_deadline_then_arrival() -> None:
    s = make({"a": 1})
    s.submit(Job("low-early", "det", priority=0, deadline=10))
    s.submit(Job("high-late", "det", priority=5, deadline=90))
    s.submit(Job("high-early", "det", priority=5, deadline=20))
    s.submit(Job("low-early-2", "det", priority=0, deadline=10))
    order = []
    for _ in range(4):
        (a,) = s.assign()
        order.append(a.job.job_id)
        assert s.complete(a.job.job_id, "a", 1.0)
    assert order == ["high-early", "high-late", "low-early", "low-early-2"]


def test_least_outstanding_work_spreads_evenly_on_equal_instances() -> None:
    s = make({"a": 8, "b": 8})
    for i in range(8):
        s.submit(Job(f"j{i}", "det"))
    placed = Counter(a.instance for a in s.assign())
    assert placed == {"a": 4, "b": 4}


def test_measured_latency_weights_the_work() -> None:
    s = make({"fast": 8, "slow": 8})
    s.submit(Job("warm-1", "det"))
    s.submit(Job("warm-2", "det"))
    for a in s.assign():
        s.complete(a.job.job_id, a.instance, 5.0 if a.instance == "fast" else 20.0)
    assert s.expected_ms("fast", "det") == 5.0 and s.expected_ms("slow", "det") == 20.0
    for i in range(10):
        s.submit(Job(f"j{i}", "det"))
    placed = Counter(a.instance for a in s.assign())
    # expected finish (n+1)*5 ms against (m+1)*20 ms: the fast one takes four for one
    assert placed == {"fast": 8, "slow": 2}


def test_ema_moves_towards_new_measurements() -> None:
    s = make({"a": 1}, alpha=0.5)
    for job_id, ms in (("j1", 10.0), ("j2", 20.0)):
        s.submit(Job(job_id, "det"))
        s.assign()
        s.complete(job_id, "a", ms)
    assert s.expected_ms("a", "det") == pytest.approx(15.0)


def test_unknown_latency_falls_back_to_other_instances_then_prior() -> None:
    s = make({"a": 2, "b": 2}, prior_ms=7.0)
    assert s.expected_ms("b", "det") == 7.0
    s.submit(Job("j", "det"))
    (a,) = s.assign()
    s.complete("j", a.instance, 30.0)
    other = "b" if a.instance == "a" else "a"
    assert s.expected_ms(other, "det") == 30.0


def test_unhealthy_instances_are_skipped_and_capacity_holds_jobs_in_queue() -> None:
    s = make({"a": 2, "b": 2})
    s.instance_down("a")
    for i in range(3):
        s.submit(Job(f"j{i}", "det"))
    assigned = s.assign()
    assert {a.instance for a in assigned} == {"b"}
    assert len(assigned) == 2 and s.queued() == 1
    s.instance_up("a")
    (last,) = s.assign()
    assert last.instance == "a" and last.job.job_id == "j2"


def test_jobs_only_go_to_instances_that_serve_their_model() -> None:
    s = Scheduler()
    s.add_instance("det-only", ["det"], 4)
    s.add_instance("cls-only", ["cls"], 4)
    s.submit(Job("c", "cls"))
    s.submit(Job("d", "det"))
    placed = {a.job.job_id: a.instance for a in s.assign()}
    assert placed == {"c": "cls-only", "d": "det-only"}
    assert s.serves("det") and not s.serves("pose")
    assert s.models() == {"det", "cls"}


def test_a_busy_model_does_not_block_jobs_of_another_model() -> None:
    s = Scheduler()
    s.add_instance("det-only", ["det"], 1)
    s.add_instance("cls-only", ["cls"], 1)
    s.submit(Job("d1", "det", priority=9))
    s.submit(Job("d2", "det", priority=9))
    s.submit(Job("c1", "cls", priority=0))
    assert {a.job.job_id for a in s.assign()} == {"d1", "c1"}


def test_instance_death_requeues_its_jobs_which_are_replaced_elsewhere() -> None:
    s = make({"a": 4, "b": 5})
    for i in range(8):
        s.submit(Job(f"j{i}", "det"))
    first = s.assign()
    on_a = {a.job.job_id for a in first if a.instance == "a"}
    assert len(on_a) == 4 and s.queued() == 0
    result = s.instance_down("a")
    assert {j.job_id for j in result.requeued} == on_a and not result.exhausted
    # b has one free slot: one job is re-placed now, the others wait in the queue
    (moved,) = s.assign()
    assert moved.instance == "b" and moved.attempt == 1 and moved.job.job_id in on_a
    assert s.queued() == 3
    # a late answer from the dead instance is stale and dropped
    assert not s.complete(moved.job.job_id, "a", 1.0)
    for a in first:
        if a.instance == "b":
            assert s.complete(a.job.job_id, "b", 1.0)
    rest = s.assign()
    assert {a.instance for a in rest} == {"b"}
    assert {a.job.job_id for a in rest} | {moved.job.job_id} == on_a
    assert s.queued() == 0


def test_a_job_replaced_too_often_is_exhausted() -> None:
    s = make({"a": 1, "b": 1}, max_attempts=1)
    s.submit(Job("j", "det"))
    (first,) = s.assign()
    assert s.instance_down(first.instance).requeued
    (second,) = s.assign()
    result = s.instance_down(second.instance)
    assert [j.job_id for j in result.exhausted] == ["j"] and not result.requeued
    assert s.queued() == 0 and s.inflight() == 0


def test_expire_returns_late_queued_jobs_only() -> None:
    s = make({"a": 1})
    s.submit(Job("running", "det", deadline=5))
    s.assign()
    s.submit(Job("late", "det", deadline=5))
    s.submit(Job("fine", "det", deadline=50))
    assert [j.job_id for j in s.expire(10)] == ["late"]
    assert s.queued() == 1 and s.inflight() == 1


def test_queue_position_and_duplicates() -> None:
    s = make({"a": 1})
    s.instance_down("a")
    s.submit(Job("x", "det", priority=1))
    s.submit(Job("y", "det", priority=2))
    assert s.position("y") == 0 and s.position("x") == 1 and s.position("z") is None
    with pytest.raises(ValueError, match="already scheduled"):
        s.submit(Job("x", "det"))
    assert s.cancel("x") is not None and s.cancel("x") is None


def test_invalid_setup_is_refused() -> None:
    with pytest.raises(ValueError):
        Scheduler(alpha=0)
    s = make({"a": 1})
    with pytest.raises(ValueError):
        s.add_instance("a", ["det"], 1)
    with pytest.raises(ValueError):
        s.add_instance("b", ["det"], 0)
