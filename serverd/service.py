"""The offload service: requests from MQTT -> job table -> scheduler -> Triton -> reply.

Everything here runs on one asyncio loop (the MQTT client is driven by that loop, see
``edgefed.mqtt``; the Triton supervisors' watcher threads hand over with
``call_soon_threadsafe``). A bad message is counted and dropped; a request for a model
no instance serves, a tensor payload, or an overloaded queue gets an
``OffloadErrorMessage`` on the device's reply topic. Under overload, jobs are shed by
``serverd.overload`` (lowest priority first), each answered with the ``shed`` code: the
edge closes it Expired and keeps its local result. A job whose instance fails is
re-placed by the scheduler; every job is answered once (duplicates of finished jobs
get the stored reply again), a result too large for the wire, or larger than the broker
takes (``mqtt.max_packet_bytes``), with a final ``internal`` error. serverd holds every
job it runs: a duplicate of one it does not hold runs again even if the job table has it
open (its close could not be stored: a full disk).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefed.clock import now_ms
from edgefed.counters import Counters
from edgefed.errors import ModelError, OffloadError, ProtocolError
from edgefed.lifecycle import Status
from edgefed.outage import Outage, Repeats
from edgefed.wire import (
    ErrorCode,
    OffloadAccepted,
    OffloadErrorMessage,
    OffloadResult,
    Topics,
    decode_request,
    encode_message,
)
from serverd.health import HealthWatch, periodic
from serverd.held import Held, HeldJobs
from serverd.jobtable import Admission, JobTable
from serverd.overload import OverloadConfig, OverloadGuard, Verdict
from serverd.scheduler import Assignment, Job, Scheduler
from serverd.triton.client import TritonEndpoint

log = logging.getLogger(__name__)


def _held(topics: Topics, topic: str, payload: bytes, max_bytes: int) -> Held:
    """The job in one request message; ``ProtocolError`` if it is none."""
    match = topics.parse(topic)
    if match is None or match.kind != "request":
        raise ProtocolError("not an offload request topic")
    message = decode_request(payload, max_bytes)
    # The device is the topic's, which the broker's ACL grants to that device's identity
    # alone; a payload that names another device is refused.
    if message.request.device_id != match.id:
        raise ProtocolError(f"device id {message.request.device_id!r} does not match the topic")
    reply_topic = _topics(match.prefix).reply(match.id)
    return Held(message.request, message.body, reply_topic, time.perf_counter())


@functools.lru_cache(maxsize=1024)  # bounded: with a '+' prefix, devices choose prefixes
def _topics(prefix: str) -> Topics:
    """The topics under a concrete prefix a request came on (its reply goes there)."""
    return Topics(prefix)


Publish = Callable[[str, bytes], object]


@dataclass
class ServiceCounters(Counters):
    received: int = 0
    dropped: int = 0
    duplicates: int = 0
    resent: int = 0
    completed: int = 0
    failed: int = 0
    expired: int = 0
    requeued: int = 0
    stale: int = 0
    errors: int = 0
    last_drop: str = ""


@dataclass(frozen=True)
class ServiceSettings:
    """The parts of ``ServerdConfig`` the service uses (see there for their meaning)."""

    server_id: str
    max_message_bytes: int
    max_queue: int
    health_interval_s: float
    drain_s: float
    retention_s: float
    send_accepted: bool
    overload: OverloadConfig = field(default_factory=OverloadConfig)


class OffloadServer:
    """Owns the in-flight tasks and the sweeper; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        settings: ServiceSettings,
        topics: Topics,
        publish: Publish,
        jobs: JobTable,
        scheduler: Scheduler,
        endpoints: Mapping[str, TritonEndpoint],
        clock_ms: Callable[[], int] = now_ms,
        on_done: Callable[[str, Mapping[str, float]], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_done = on_done  # (model, timings in ms) of each completed job: metrics
        self.counters = ServiceCounters()
        self._topics = topics
        self._publish = publish
        self._jobs = jobs
        self._scheduler = scheduler
        self._endpoints = endpoints
        self._clock_ms = clock_ms
        self._held = HeldJobs()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._handling = Outage(log, "handling offload requests")
        self._drops, self._closings = Repeats(log), Repeats(log, logging.INFO)  # per message
        self._faults = Repeats(log)  # jobs closed by a fault of serverd's ("internal")
        self._guard = OverloadGuard(settings.overload, scheduler, settings.max_queue)
        self._health = HealthWatch(
            endpoints,
            scheduler,
            self.instance_state,
            self._instance_failed,
            settings.health_interval_s,
        )

    # -- inputs ---------------------------------------------------------------------------
    def on_request(self, topic: str, payload: bytes) -> None:
        """One MQTT message on the requests filter (runs on the loop)."""
        if self._closing:
            return
        self.counters.received += 1
        try:
            self._accept(topic, payload)
        except ProtocolError as exc:
            self.counters.dropped += 1
            self.counters.last_drop = f"{topic}: {exc}"
            self._drops("dropped", f"dropped a message on {topic}: {exc}")
        except Exception as exc:  # contained: a fault on one message never stops the service
            self.counters.errors += 1
            self._handling.failed(exc)
        else:
            self._handling.ok()

    def instance_state(self, name: str, up: bool) -> None:
        """An instance came up or went down (supervisor or health probe)."""
        if up:
            log.info("instance %s is up", name)
            self._scheduler.instance_up(name)
            self._pump()
        else:
            self._instance_failed(name, "reported down")

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        loops = [
            asyncio.create_task(loop, name=f"serverd-{name}")
            for name, loop in (
                ("expire", periodic(stop, 0.05, self._expire, "expiring queued jobs")),
                ("health", self._health.run(stop)),
                ("maintain", self._jobs.maintain(stop, s.health_interval_s, s.retention_s)),
            )
        ]
        await stop.wait()
        self._closing = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.drain_s)
        pending = [*self._tasks, *loops]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for endpoint in self._endpoints.values():
            await endpoint.close()

    def status(self) -> dict[str, Any]:
        return {
            "counters": self.counters.as_dict(),
            "queued": self._scheduler.queued(),
            "in_flight": self._scheduler.inflight(),
            "instances": {i.name: i.summary() for i in self._scheduler.instances()},
            "jobs": self._jobs.counts(),
            **self._guard.status(),
        }

    # -- the flow -------------------------------------------------------------------------
    def _accept(self, topic: str, payload: bytes) -> None:
        held = _held(self._topics, topic, payload, self.settings.max_message_bytes)
        request = held.request
        admitted = self._jobs.admit(request)
        # held: running, even if the table could not record it (it refused the write)
        if held.queue_id in self._held:
            self.counters.duplicates += 1
            return
        if admitted.kind is Admission.RUNNING:
            # answered, but the table refused its close (a full disk): serverd holds every
            # job it runs (a restart marks the others interrupted), so it runs again
            self._jobs.requeued(held.key)
        if admitted.kind is Admission.DONE and admitted.reply is not None:
            self.counters.resent += 1
            self._publish(held.reply_topic, admitted.reply)
            return
        model = request.model
        if request.payload_kind != "jpeg":
            self._fail(held, "bad_request", "serverd runs JPEG payloads only", retryable=False)
        elif not self._scheduler.serves(model):
            served = ", ".join(sorted(self._scheduler.models())) or "none"
            self._fail(held, "unknown_model", f"model {model!r} is not served (served: {served})")
        elif request.deadline < self._clock_ms():
            self.counters.expired += 1
            self._fail(held, "overloaded", "deadline passed on arrival", status=Status.EXPIRED)
        else:
            job = Job(held.queue_id, model, request.priority, request.deadline, len(held.body))
            arrival = self._guard.on_arrival(job, *self._held.load())
            if arrival.verdict is Verdict.SHED:
                self._shed(held, arrival.reason)
                return
            if arrival.evict is not None:
                self._shed_queued(arrival.evict, arrival.reason)
            self._held.add(held)
            self._scheduler.submit(job)
            self._pump()
            if self.settings.send_accepted:  # after the job's request has left for Triton
                asyncio.get_running_loop().call_soon(self._accepted, held)

    def _accepted(self, held: Held) -> None:
        accepted = OffloadAccepted(
            job_id=held.request.job_id,
            device_id=held.request.device_id,
            served_by=self.settings.server_id,
            queued=self._scheduler.position(held.queue_id) or 0,
        )
        self._publish(held.reply_topic, encode_message(accepted))

    def _pump(self) -> None:
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        for assignment in self._scheduler.assign():
            held = self._held[assignment.job.job_id]
            task = asyncio.create_task(
                self._infer(assignment, held),
                name=f"infer-{held.request.job_id}-{assignment.attempt}",
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # Recorded once the request is on its way: the task's first step creates gRPC's
            # own send task, which runs before this doubly deferred callback.
            loop.call_soon(
                loop.call_soon,
                self._jobs.started,
                held.key,
                assignment.instance,
                assignment.attempt,
            )

    async def _infer(self, assignment: Assignment, held: Held) -> None:
        try:
            await self._run_job(assignment, held)
        except Exception:  # contained, and never left as an unretrieved task exception
            self.counters.errors += 1
            log.exception("job %s on %s failed", held.request.job_id, assignment.instance)

    async def _run_job(self, assignment: Assignment, held: Held) -> None:
        instance = assignment.instance
        job_id, queue_id = held.request.job_id, held.queue_id
        started = time.perf_counter()
        try:
            reply = await self._endpoints[instance].infer(held.request.model, held.body)
        except OffloadError as exc:
            self._instance_failed(instance, str(exc))
            return
        except ModelError as exc:
            if self._scheduler.complete(queue_id, instance, None):
                self._fail(held, "bad_request", str(exc), retryable=False)
                self._pump()
            return
        except Exception as exc:  # contained: one job's fault never stops the service
            log.exception("job %s failed on %s", job_id, instance)
            if self._scheduler.complete(queue_id, instance, None):
                self._fail(held, "internal", f"{type(exc).__name__}: {exc}", retryable=True)
                self._pump()
            return
        done = time.perf_counter()
        if not self._scheduler.complete(queue_id, instance, (done - started) * 1000):
            self.counters.stale += 1
            return
        timings = _timings(reply.timings_ms, held.received, started, done)
        try:
            answer = encode_message(
                OffloadResult(
                    job_id=job_id,
                    device_id=held.request.device_id,
                    model=held.request.model,
                    results=reply.results,
                    timings_ms=timings,
                    served_by=f"{self.settings.server_id}/{instance}",
                    completed=self._clock_ms(),
                )
            )
            self._close(held, Status.EXIT, answer)  # PacketTooLarge: not sent, closed again
        except Exception as exc:  # past the wire's header limit, or the broker's: run after run
            why = f"its result ({len(reply.results)} items) cannot be sent: {exc}"
            self._fail(held, "internal", why, retryable=False)  # the edge keeps its own
        else:
            self.counters.completed += 1
            if self._on_done is not None:
                self._on_done(held.request.model, timings)
        self._pump()

    def _instance_failed(self, name: str, reason: str) -> None:
        was_healthy = any(i.healthy for i in self._scheduler.instances() if i.name == name)
        outcome = self._scheduler.instance_down(name)
        if was_healthy:
            log.warning("instance %s is down: %s", name, reason)
        for job in outcome.requeued:
            requeued = self._held.get(job.job_id)
            if requeued is not None:
                requeued.queued = time.perf_counter()
                self._jobs.requeued(requeued.key)
            self.counters.requeued += 1
        for job in outcome.exhausted:
            held = self._held.get(job.job_id)
            if held is not None:
                why = f"no instance could finish it; last failure: {reason}"
                self._fail(held, "unavailable", why, retryable=True)
        self._pump()

    def _fail(
        self,
        held: Held,
        code: ErrorCode,
        reason: str,
        retryable: bool = False,
        status: Status = Status.FAILED,
    ) -> None:
        message = OffloadErrorMessage(
            job_id=held.request.job_id,
            device_id=held.request.device_id,
            code=code,
            reason=" ".join(reason.split())[:1000],
            retryable=retryable,
            at=self._clock_ms(),
        )
        notes = self._faults if code == "internal" else self._closings
        notes(code, f"job {held.request.job_id} {status} ({code}): {message.reason}")
        self._close(held, status, encode_message(message), message.reason, retryable)
        if status is Status.FAILED:
            self.counters.failed += 1

    def _shed(self, held: Held, reason: str) -> None:
        """Answer a job unrun because serverd is overloaded: the edge's result stands."""
        self._guard.count_shed(held.request.priority)
        why = f"shed under overload ({reason}); the local result stands"
        self._fail(held, "shed", why, status=Status.EXPIRED)

    def _shed_queued(self, job: Job, reason: str) -> None:
        held = self._held.get(job.job_id)
        if held is not None and self._scheduler.cancel(job.job_id) is not None:
            self._shed(held, reason)

    def _close(
        self,
        held: Held,
        status: Status,
        reply: bytes,
        error: str | None = None,
        retryable: bool = False,
    ) -> None:
        try:
            self._publish(held.reply_topic, reply)
        finally:  # answered or not, the job is closed: a redelivery gets the stored reply
            self._jobs.finish(held.key, status, reply, error, retryable)
            self._held.pop(held.queue_id)

    async def _expire(self) -> None:
        """Answer queued jobs whose deadline passed or that waited too long (the edge's
        local result stands)."""
        for job in self._scheduler.expire(float(self._clock_ms())):
            if (held := self._held.get(job.job_id)) is None:
                continue
            self.counters.expired += 1
            healthy = self._scheduler.healthy_for(job.model)
            code: ErrorCode = "overloaded" if healthy else "unavailable"
            self._fail(held, code, "deadline passed while queued", status=Status.EXPIRED)
        queued = {q: h.queued * 1000 for q, h in self._held.items()}
        for job, reason in self._guard.aged(queued, time.perf_counter() * 1000):
            self._shed_queued(job, reason)


def _timings(
    backend: dict[str, float], received: float, started: float, done: float
) -> dict[str, float]:
    """The backend's own stages, then serverd's, which a backend cannot change (ms)."""
    return {
        **backend,
        "queue": round((started - received) * 1000, 3),
        "triton": round((done - started) * 1000, 3),
        "total": round((done - received) * 1000, 3),
    }
