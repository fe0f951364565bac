"""The overload guard alone, over a real scheduler fed with measured latencies."""

from __future__ import annotations

from collections import Counter

import pytest

from serverd.overload import Arrival, OverloadConfig, OverloadGuard, Verdict, device_of
from serverd.scheduler import Job, Scheduler


def busy_scheduler(latency_ms: float = 10.0, capacity: int = 2) -> Scheduler:
    """One instance serving "det" that has measured ``latency_ms`` and is full."""
    scheduler = Scheduler(alpha=1.0)
    scheduler.add_instance("a", ["det"], capacity)
    for i in range(capacity):
        scheduler.submit(Job(f"warm-{i}", "det"))
    for placed in scheduler.assign():
        scheduler.complete(placed.job.job_id, "a", latency_ms)
    for i in range(capacity):
        scheduler.submit(Job(f"run-{i}", "det"))
    assert len(scheduler.assign()) == capacity
    return scheduler


def test_capacity_is_measured_from_the_instances_latency() -> None:
    guard = OverloadGuard(OverloadConfig(), busy_scheduler(10.0, capacity=2), max_queue=100)
    assert guard.rate_per_ms("det") == pytest.approx(0.2)  # 2 slots / 10 ms
    assert guard.rate_per_ms("other") == 0.0


def test_low_priority_is_shed_once_its_predicted_wait_passes_the_bound() -> None:
    scheduler = busy_scheduler(10.0, capacity=2)  # 0.2 jobs per ms
    guard = OverloadGuard(OverloadConfig(max_wait_ms=40.0), scheduler, max_queue=100)
    verdicts = []
    for i in range(12):
        job = Job(f"low-{i}", "det", priority=0)
        arrival = guard.on_arrival(job, held=2 + scheduler.queued())
        verdicts.append(arrival.verdict)
        if arrival.verdict is Verdict.ADMIT:
            scheduler.submit(job)
    # 8 queued jobs wait 40 ms: the 9th and later would wait longer
    assert verdicts == [Verdict.ADMIT] * 9 + [Verdict.SHED] * 3
    high = guard.on_arrival(Job("high", "det", priority=5), held=11)
    assert high.verdict is Verdict.ADMIT  # queued low jobs never delay it
    shed = guard.on_arrival(Job("low-x", "det", priority=0), held=11)
    assert shed.reason == "predicted wait 45 ms > 40 ms at priority 0"


def test_a_full_queue_makes_room_for_higher_priority_by_evicting_the_last_low_job() -> None:
    scheduler = busy_scheduler()
    guard = OverloadGuard(OverloadConfig(max_wait_ms=1000.0), scheduler, max_queue=5)
    for i in range(3):
        scheduler.submit(Job(f"low-{i}", "det", priority=1, deadline=100.0 + i))
    full = 5
    arrival = guard.on_arrival(Job("high", "det", priority=3), held=full)
    assert arrival.verdict is Verdict.ADMIT and arrival.evict is not None
    assert arrival.evict.job_id == "low-2"
    same = guard.on_arrival(Job("low-3", "det", priority=1), held=full)
    assert same.verdict is Verdict.SHED and "none of lower priority" in same.reason


def test_jobs_queued_too_long_behind_too_much_work_are_shed_lowest_priority_first() -> None:
    scheduler = busy_scheduler(10.0, capacity=2)  # 0.2 jobs per ms: 8 jobs ahead = 40 ms
    guard = OverloadGuard(OverloadConfig(max_wait_ms=40.0), scheduler, max_queue=100)
    arrived = {"high": 0.0} | {f"low-{i}": 5.0 + i for i in range(12)}
    scheduler.submit(Job("high", "det", priority=2))
    for i in range(12):
        scheduler.submit(Job(f"low-{i}", "det", priority=0))
    # at 50 ms low-0..low-4 are old, but less than 40 ms of work is ahead of them: they stay
    assert guard.aged(arrived, now=50.0) == []
    aged = guard.aged(arrived, now=60.0)
    assert [job.job_id for job, _ in aged] == ["low-11", "low-10", "low-9", "low-8"]
    assert "queued 47 ms at priority 0" in dict((j.job_id, w) for j, w in aged)["low-8"]
    assert guard.aged(arrived, now=39.0) == []


def test_with_no_healthy_instance_every_queued_job_would_wait_forever() -> None:
    scheduler = busy_scheduler()
    scheduler.submit(Job("queued", "det"))
    scheduler.instance_down("a")
    guard = OverloadGuard(OverloadConfig(), scheduler, max_queue=100)
    assert guard.predicted_wait_ms(Job("next", "det")) == float("inf")


def test_a_device_past_its_share_gives_way_to_the_others_whatever_its_priority() -> None:
    """Alone, a device may fill the queue (a backlog after an outage); another device's
    job then takes the place of its newest queued job, even at a lower priority, and
    while others' jobs wait its own past ``max_held_per_device`` are shed."""
    scheduler = busy_scheduler()
    config = OverloadConfig(max_wait_ms=1e9, max_held_per_device=2)
    guard = OverloadGuard(config, scheduler, max_queue=4)
    held: Counter[str] = Counter()

    def arrive(device: str, n: int, priority: int) -> Arrival:
        job = Job(f"{device} job-{n}", "det", priority=priority, deadline=100.0 + n)
        arrival = guard.on_arrival(job, sum(held.values()), held.__getitem__)
        if arrival.verdict is Verdict.ADMIT:
            scheduler.submit(job)
            held[device] += 1
        if arrival.evict is not None:
            scheduler.cancel(arrival.evict.job_id)
            held[device_of(arrival.evict)] -= 1
        return arrival

    alone = [arrive("rogue", n, 255).verdict for n in range(5)]
    assert alone == [Verdict.ADMIT] * 4 + [Verdict.SHED]  # the queue, not its share, bounds it
    other = arrive("honest", 0, 0)
    assert other.verdict is Verdict.ADMIT and other.evict is not None
    assert other.evict.job_id == "rogue job-3" and "holding over 2" in other.reason
    more = arrive("rogue", 5, 255)
    assert more.verdict is Verdict.SHED and "at most 2 while others wait" in more.reason
    assert held == {"rogue": 3, "honest": 1}


def test_frames_past_the_held_megabytes_are_queued_as_at_a_full_queue() -> None:
    """Few jobs but large frames (before latencies are measured nothing else sheds them):
    past ``max_held_mb`` a job takes the place of a lower-priority one if that frees room
    for its frame, and is shed otherwise; the held jobs' count does not matter."""
    mb = 2**20
    scheduler = busy_scheduler()
    guard = OverloadGuard(
        OverloadConfig(max_wait_ms=1e9, max_held_mb=10.0), scheduler, max_queue=100
    )
    held_bytes = 0
    for n in range(3):
        job = Job(f"low-{n}", "det", priority=1, deadline=100.0 + n, size=3 * mb)
        assert guard.on_arrival(job, 2 + n, held_bytes=held_bytes).verdict is Verdict.ADMIT
        scheduler.submit(job)
        held_bytes += job.size
    small = Job("small", "det", priority=1, size=mb)
    assert guard.on_arrival(small, 5, held_bytes=held_bytes).verdict is Verdict.ADMIT
    big = guard.on_arrival(Job("big", "det", priority=1, size=2 * mb), 5, held_bytes=held_bytes)
    assert big.verdict is Verdict.SHED and big.reason == "9 MB held, none of lower priority"
    high = guard.on_arrival(Job("high", "det", priority=3, size=4 * mb), 5, held_bytes=held_bytes)
    assert high.verdict is Verdict.ADMIT and high.evict is not None
    assert high.evict.job_id == "low-2" and high.reason == "9 MB held: made room for priority 3"
    huge = guard.on_arrival(Job("huge", "det", priority=3, size=5 * mb), 5, held_bytes=held_bytes)
    assert huge.verdict is Verdict.SHED  # one 3 MB job's room is not enough for 5 MB
    assert huge.reason == "9 MB held, no queued job it may replace frees enough"
    unbounded = OverloadGuard(OverloadConfig(max_held_mb=None), scheduler, max_queue=100)
    assert (
        unbounded.on_arrival(Job("huge", "det", size=5 * mb), 5, held_bytes=held_bytes).verdict
        is Verdict.ADMIT
    )
