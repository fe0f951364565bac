"""Overload control: which jobs serverd sheds when offered more than Triton can run.

Pure and sans-io, like the scheduler it reads: the service asks ``on_arrival`` whether
to queue a new job (and which queued job, if any, makes room for it) and ``aged`` which
queued jobs have waited too long. Nothing here touches a clock or a socket.

Policy:
- capacity is measured, not configured: each healthy instance that serves the model
  runs ``capacity`` jobs at once at its moving-average latency, so together they finish
  ``sum(capacity / ema_ms)`` jobs per ms (Little's law on what the scheduler measured);
- a job's predicted wait is the number of queued jobs that go before it (its priority or
  higher: lower ones never delay it) over that rate; a job whose predicted wait exceeds
  ``max_wait_ms`` is shed on arrival, so low priority is shed first and high priority
  only when high priority alone exceeds capacity;
- the queue is bounded by ``max_queue`` jobs held and by ``max_held_mb`` of their frames:
  a job arriving at a full queue takes the place of the newest queued job of the lowest
  priority below its own (if that makes room for its bytes), or is shed;
  a device may hold more than ``max_held_per_device`` jobs only while nobody else's
  wait: then its new jobs are shed, and at a full queue its newest queued job makes
  room for another device's, whatever their priorities (the priority is the device's
  to say: unbounded, one device could take the queue);
- a queued job older than ``max_wait_ms`` is shed if more than ``max_wait_ms`` of work
  is still ahead of it (jobs of higher priority kept overtaking it); after a stall of the
  host, the jobs at the head of the queue run instead of being shed with the rest;
- recovery needs no action: when load falls the queue drains, predicted waits fall and
  every job is admitted again.
A shed job is answered at once with the ``shed`` error code: the edge closes it Expired
and keeps its local result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import Field

from edgefed.config import Strict
from serverd.scheduler import Job, Scheduler


class OverloadConfig(Strict):
    """Admission control and load shedding (see ``serverd.overload``)."""

    max_wait_ms: float = Field(
        3000.0,
        gt=0,
        description="A job may wait this long in serverd's queue: one predicted to wait "
        "longer is shed on arrival, one queued longer is shed (lowest priority first); "
        "the default stays under the edge's default 5 s job lifetime; set it from the "
        "round-trip target (docs/scaling.md)",
    )

    max_held_per_device: int | None = Field(
        100,
        ge=1,
        description="Jobs one device may hold (queued + in flight) while other devices' "
        "jobs wait; past it its new jobs are shed and, at a full queue, its newest make "
        "room for the others', so that one device (the priority is its own to say) cannot "
        "take the queue; alone it may hold up to max_queue (None: no bound; a device at the "
        "documented 0.6 offloads/s holds about 2)",
    )

    max_held_mb: float | None = Field(
        1024.0,
        gt=0,
        description="Megabytes of frames serverd may hold (queued + in flight); past it a "
        "job is queued as at a full queue (max_queue), so that large frames cannot take "
        "the server's memory before latencies are measured (None: no bound; 1000 queued "
        "8 MiB requests would be 8 GiB)",
    )


def device_of(job: Job) -> str:
    """The device of a held job (its queue id is ``<device> <job id>``)."""
    return job.job_id.split(" ", 1)[0]


class Verdict(Enum):
    ADMIT = "admit"
    SHED = "shed"


@dataclass(frozen=True)
class Arrival:
    """What to do with an arriving job; ``evict`` is a queued job shed to make room."""

    verdict: Verdict
    reason: str = ""
    evict: Job | None = None


class OverloadGuard:
    """Admission and shedding decisions over ``scheduler``'s queue and measurements."""

    def __init__(self, config: OverloadConfig, scheduler: Scheduler, max_queue: int) -> None:
        self._config = config
        self._scheduler = scheduler
        self._max_queue = max_queue
        self._shed: dict[int, int] = {}  # jobs shed by priority

    def rate_per_ms(self, model: str) -> float:
        """Jobs of ``model`` the healthy instances finish per ms, from measured latency."""
        s = self._scheduler
        return sum(
            i.capacity / s.expected_ms(i.name, model)
            for i in s.instances()
            if i.healthy and model in i.models
        )

    def predicted_wait_ms(self, job: Job) -> float:
        """How long ``job`` would wait in the queue if it were queued now."""
        ahead = self._scheduler.ahead_of(job.priority)
        if ahead == 0:
            return 0.0
        rate = self.rate_per_ms(job.model)
        return ahead / rate if rate > 0 else float("inf")

    def on_arrival(
        self,
        job: Job,
        held: int,
        held_by: Callable[[str], int] = lambda device: 0,
        held_bytes: int = 0,
    ) -> Arrival:
        """Admit ``job`` (``held`` jobs are queued or in flight, ``held_by(device)`` of
        them a device's, their frames ``held_bytes``) or shed it."""
        cap = self._config.max_held_per_device
        mine = held_by(device_of(job))
        if cap is not None and mine >= cap and held > mine:  # others' jobs are waiting
            return Arrival(
                Verdict.SHED, f"its device holds {mine} jobs (at most {cap} while others wait)"
            )
        wait = self.predicted_wait_ms(job)
        if wait > self._config.max_wait_ms:
            return Arrival(
                Verdict.SHED,
                f"predicted wait {wait:.0f} ms > {self._config.max_wait_ms:.0f} ms "
                f"at priority {job.priority}",
            )
        bound = self._config.max_held_mb
        room = None if bound is None else int(bound * 2**20) - held_bytes - job.size
        if held < self._max_queue and (room is None or room >= 0):
            return Arrival(Verdict.ADMIT)
        full = f"{held} jobs held" if room is None or room >= 0 else f"{held_bytes >> 20} MB held"
        crowding = None if cap is None else self._crowding(job, cap, held_by)
        victim = crowding or self._scheduler.newest_below(job.priority)
        if victim is None:
            return Arrival(Verdict.SHED, f"{full}, none of lower priority")
        if room is not None and room + victim.size < 0:
            return Arrival(Verdict.SHED, f"{full}, no queued job it may replace frees enough")
        why = f", its device holding over {cap}" if crowding else f" for priority {job.priority}"
        return Arrival(Verdict.ADMIT, f"{full}: made room{why}", evict=victim)

    def _crowding(self, job: Job, cap: int, held_by: Callable[[str], int]) -> Job | None:
        """The newest queued job of another device that holds ``cap`` jobs or more."""
        device = device_of(job)
        for queued in reversed(self._scheduler.queued_jobs()):
            other = device_of(queued)
            if other != device and held_by(other) >= cap:
                return queued
        return None

    def count_shed(self, priority: int) -> None:
        self._shed[priority] = self._shed.get(priority, 0) + 1

    def status(self) -> dict[str, dict[Any, Any]]:
        """Jobs shed by priority and the measured capacity (jobs/s) by model."""
        return {
            "shed": dict(sorted(self._shed.items())),
            "capacity_per_s": {
                m: round(self.rate_per_ms(m) * 1000, 1) for m in sorted(self._scheduler.models())
            },
        }

    def aged(self, queued_at: Mapping[str, float], now: float) -> list[tuple[Job, str]]:
        """Queued jobs older than the wait bound that still have more than the bound's
        worth of work ahead of them, lowest priority first, with the reason; ``queued_at``
        is each job's time (ms) in the queue."""
        bound = self._config.max_wait_ms
        old = []
        for ahead, job in enumerate(self._scheduler.queued_jobs()):
            waited = now - queued_at.get(job.job_id, now)
            rate = self.rate_per_ms(job.model)
            if waited > bound and (rate <= 0 or ahead / rate > bound):
                old.append((job, f"queued {waited:.0f} ms at priority {job.priority}"))
        return old[::-1]
