"""The dynamic scheduler: which queued job runs next, and on which Triton instance.

Pure and sans-io: the service feeds it events (a job arrived, an instance finished a
job in so many ms, an instance went down or came back) and asks ``assign(now)`` for
the next placements. Nothing here touches a clock, a socket or a thread.

Policy:
- queue order: higher priority first, then earlier deadline, then arrival;
- placement: among healthy instances that serve the job's model and have a free slot,
  the one with the least outstanding work, where work is each in-flight job's expected
  latency on that instance (an exponential moving average per instance and model,
  falling back to the model's average on the other instances, then to a prior); ties go
  to fewer in-flight jobs, then to the instance name;
- an instance that goes down has its in-flight jobs put back in the queue (they keep
  their place by priority); a job re-placed more than ``max_attempts`` times fails;
- queued jobs whose deadline has passed are handed back by ``expire(now)``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Job:
    """What the scheduler knows of a job; ``deadline`` uses the caller's clock."""

    job_id: str
    model: str
    priority: int = 0
    deadline: float = math.inf
    size: int = 0  # bytes held for it (its frame): the overload guard bounds the total


@dataclass(frozen=True)
class Assignment:
    job: Job
    instance: str
    attempt: int  # 0 for the first placement, +1 for each re-placement


@dataclass
class InstanceState:
    """One Triton endpoint as the scheduler sees it."""

    name: str
    models: frozenset[str]
    capacity: int
    healthy: bool = True
    inflight: dict[str, Job] = field(default_factory=dict)
    ema_ms: dict[str, float] = field(default_factory=dict)
    completed: int = 0

    def free(self) -> bool:
        return self.healthy and len(self.inflight) < self.capacity

    def summary(self) -> dict[str, Any]:
        """What the status API shows of the instance."""
        return {
            "healthy": self.healthy,
            "in_flight": len(self.inflight),
            "completed": self.completed,
            "ema_ms": {m: round(v, 3) for m, v in self.ema_ms.items()},
        }


@dataclass(frozen=True)
class Requeue:
    """What ``instance_down`` did: jobs put back in the queue, jobs out of attempts."""

    requeued: list[Job]
    exhausted: list[Job]


class Scheduler:
    """Queue + instance table; every method is O(queue x instances) at worst."""

    def __init__(self, alpha: float = 0.2, prior_ms: float = 10.0, max_attempts: int = 3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self._alpha = alpha
        self._prior_ms = prior_ms
        self._max_attempts = max_attempts
        self._instances: dict[str, InstanceState] = {}
        self._queue: list[_Entry] = []  # sorted by (-priority, deadline, arrival)
        self._queued: dict[str, _Entry] = {}
        self._attempts: dict[str, int] = {}
        self._order: dict[str, int] = {}  # arrival number, kept across re-placements
        self._seq = itertools.count()

    # -- instances -------------------------------------------------------------------------
    def add_instance(
        self, name: str, models: Iterable[str], capacity: int, healthy: bool = True
    ) -> None:
        if name in self._instances:
            raise ValueError(f"instance {name!r} already exists")
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._instances[name] = InstanceState(name, frozenset(models), capacity, healthy)

    def set_models(self, name: str, models: Iterable[str]) -> None:
        self._instances[name].models = frozenset(models)

    def instance_up(self, name: str) -> None:
        self._instances[name].healthy = True

    def instance_down(self, name: str) -> Requeue:
        """Mark unhealthy and put its in-flight jobs back in the queue."""
        instance = self._instances[name]
        instance.healthy = False
        jobs = list(instance.inflight.values())
        instance.inflight.clear()
        requeued, exhausted = [], []
        for job in jobs:
            attempts = self._attempts.get(job.job_id, 0) + 1
            if attempts > self._max_attempts:
                self._forget(job.job_id)
                exhausted.append(job)
                continue
            self._attempts[job.job_id] = attempts
            self._enqueue(job)
            requeued.append(job)
        return Requeue(requeued, exhausted)

    def instances(self) -> list[InstanceState]:
        return list(self._instances.values())

    def serves(self, model: str) -> bool:
        """True if any instance, healthy or not, lists ``model``."""
        return any(model in i.models for i in self._instances.values())

    def healthy_for(self, model: str) -> bool:
        return any(i.healthy and model in i.models for i in self._instances.values())

    def models(self) -> set[str]:
        return set().union(*(i.models for i in self._instances.values()))

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if job.job_id in self._queued or self._where(job.job_id) is not None:
            raise ValueError(f"job {job.job_id!r} is already scheduled")
        self._attempts[job.job_id] = 0
        self._order[job.job_id] = next(self._seq)
        self._enqueue(job)

    def assign(self) -> list[Assignment]:
        """Place as many queued jobs as free slots allow, best queue position first."""
        out: list[Assignment] = []
        if not any(i.free() for i in self._instances.values()):
            return out
        for entry in list(self._queue):
            job = entry[3]
            target = self._best(job.model)
            if target is None:
                continue
            self._dequeue(job.job_id)
            target.inflight[job.job_id] = job
            out.append(Assignment(job, target.name, self._attempts.get(job.job_id, 0)))
            if not any(i.free() for i in self._instances.values()):
                break
        return out

    def complete(self, job_id: str, instance: str, latency_ms: float | None) -> bool:
        """A job finished (result or job-level error) on ``instance``.

        Returns False for a stale or duplicate completion (the job was re-placed or
        already finished): the caller drops that answer. ``latency_ms`` updates the
        instance's moving average for the job's model.
        """
        state = self._instances.get(instance)
        job = state.inflight.pop(job_id, None) if state is not None else None
        if state is None or job is None:
            return False
        self._forget(job_id)
        state.completed += 1
        if latency_ms is not None:
            old = state.ema_ms.get(job.model)
            state.ema_ms[job.model] = (
                latency_ms if old is None else old + self._alpha * (latency_ms - old)
            )
        return True

    def cancel(self, job_id: str) -> Job | None:
        """Remove a queued job (e.g. the caller gave up on it); in-flight jobs stay."""
        entry = self._dequeue(job_id)
        if entry is None:
            return None
        self._forget(job_id)
        return entry[3]

    def expire(self, now: float) -> list[Job]:
        """Remove and return queued jobs whose deadline is before ``now``."""
        late = [e[3] for e in self._queue if e[3].deadline < now]
        for job in late:
            self.cancel(job.job_id)
        return late

    def queued(self) -> int:
        return len(self._queue)

    def queued_jobs(self) -> list[Job]:
        """The queued jobs in queue order (the next to run first)."""
        return [e[3] for e in self._queue]

    def ahead_of(self, priority: int) -> int:
        """How many queued jobs would run before a new job of ``priority``."""
        return bisect.bisect_right(self._queue, (-priority, math.inf, _LAST), key=_order_key)

    def newest_below(self, priority: int) -> Job | None:
        """The last job in queue order if its priority is below ``priority``."""
        if self._queue and self._queue[-1][3].priority < priority:
            return self._queue[-1][3]
        return None

    def inflight(self) -> int:
        return sum(len(i.inflight) for i in self._instances.values())

    def position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of ``job_id`` (None if not queued)."""
        entry = self._queued.get(job_id)
        if entry is None:
            return None
        return bisect.bisect_left(self._queue, entry[:3], key=_order_key)

    def expected_ms(self, instance: str, model: str) -> float:
        """The latency estimate used for placement."""
        own = self._instances[instance].ema_ms.get(model)
        if own is not None:
            return own
        others = [i.ema_ms[model] for i in self._instances.values() if model in i.ema_ms]
        return sum(others) / len(others) if others else self._prior_ms

    # -- internals -------------------------------------------------------------------------
    def _best(self, model: str) -> InstanceState | None:
        candidates = [i for i in self._instances.values() if i.free() and model in i.models]
        if not candidates:
            return None

        def key(i: InstanceState) -> tuple[float, int, str]:
            backlog = sum(self.expected_ms(i.name, j.model) for j in i.inflight.values())
            return (backlog + self.expected_ms(i.name, model), len(i.inflight), i.name)

        return min(candidates, key=key)

    def _where(self, job_id: str) -> str | None:
        for instance in self._instances.values():
            if job_id in instance.inflight:
                return instance.name
        return None

    def _enqueue(self, job: Job) -> None:
        entry = (-job.priority, job.deadline, self._order[job.job_id], job)
        bisect.insort(self._queue, entry, key=_order_key)
        self._queued[job.job_id] = entry

    def _dequeue(self, job_id: str) -> _Entry | None:
        entry = self._queued.pop(job_id, None)
        if entry is not None:
            del self._queue[bisect.bisect_left(self._queue, entry[:3], key=_order_key)]
        return entry

    def _forget(self, job_id: str) -> None:
        self._attempts.pop(job_id, None)
        self._order.pop(job_id, None)


_Entry = tuple[int, float, int, Job]
_LAST = 2**63  # after every arrival number


def _order_key(entry: _Entry) -> tuple[int, float, int]:
    return entry[0], entry[1], entry[2]
