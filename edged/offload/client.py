"""The offload service: drains the outbox over MQTT QoS 1 and records the server's answers.

The work runs on edged's network loop (``edged.netloop``), the thread that also drives
the MQTT connection, so replies and PUBACKs are handled where they are read. Callers
(pipeline threads) ``submit`` jobs, which are durable in the outbox when the call
returns, and the loop is woken. While the link is up it claims due jobs in priority
order and publishes them, with at most ``window`` awaiting their PUBACK, and matches
the server's replies (accepted, result, error) by job id. A timer expires jobs at their
deadline (the local result stands) and retries overdue ones with backoff; retry timers
pause while the link is down. The events that arrive together are handled in one outbox
transaction (group commit), with the jobs they let out claimed and published in it;
only after it commits does ``on_outcome`` hear how each closed job ended (once; again
only if edged dies between the two, as delivery is at-least-once), and only then has the
broker the acknowledgement of each reply in it (a reply is never lost with the process).

Three writes are left to the next transaction, so that a job's round trip does not wait
for them: the claim of a job published from memory when it was submitted (if edged dies
first, the job is sent again after the restart), the broker's acknowledgement of a
request (Preprocessing_complete; a burst of acknowledgements alone opens no transaction,
so it costs the CPU little while the server works on the job), and the close of a
delivered job after ``on_outcome`` returned, written after that transaction's sends. A
timer makes that transaction come within ``SETTLE_DELAY_S`` when no event does, and
``stop`` writes them before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edged.netloop import NetLoop
from edged.offload.outbox import Outbox
from edged.offload.records import Enqueued, NewJob
from edgefed.clock import now_ms
from edgefed.counters import Counters
from edgefed.errors import OffloadError, ProtocolError
from edgefed.lifecycle import Status
from edgefed.mqtt import Ack
from edgefed.wire import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PREFIX,
    LocalSummary,
    MetadataValue,
    OffloadAccepted,
    OffloadRequest,
    OffloadResult,
    PayloadKind,
    Reply,
    Topics,
    decode_reply,
    encode_payload,
    encode_request,
    new_job_id,
)

log = logging.getLogger(__name__)
MAX_BATCH = 256  # events handled in one transaction
SETTLE_DELAY_S = 0.05  # claims and closes left to the next transaction wait at most this


class OffloadClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str = Field(default=DEFAULT_PREFIX, description="Topic prefix shared with serverd")
    window: int = Field(default=32, ge=1, le=1024, description="Requests awaiting PUBACK at once")
    sweep_interval_s: float = Field(
        default=0.25, gt=0, description="How often deadlines and retry timers are checked"
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_BYTES, ge=1024, description="Largest request or reply on the wire"
    )


@dataclass(frozen=True)
class JobOutcome:
    """How a job closed: Exit with the server's result, or Failed/Expired without one."""

    job_id: str
    status: Status
    result: OffloadResult | None
    local_result: Any
    reason: str


OutcomeListener = Callable[[JobOutcome], None]


@dataclass
class ClientCounters(Counters):
    submitted: int = 0
    rejected: int = 0
    sent: int = 0
    acked: int = 0
    accepted: int = 0
    results: int = 0
    errors: int = 0
    retried: int = 0
    expired: int = 0
    failed: int = 0
    completed: int = 0
    duplicate_results: int = 0
    late_results: int = 0
    unknown_results: int = 0
    listener_errors: int = 0
    worker_errors: int = 0


class OffloadClient:
    """Moves outbox jobs to serverd and their results back; ``start``/``stop`` service.

    ``net`` is the network loop whose thread runs this client's work; its MQTT client
    carries the jobs. ``start`` may come before the loop runs: the work begins with it.
    """

    def __init__(
        self,
        device_id: str,
        net: NetLoop,
        outbox: Outbox,
        config: OffloadClientConfig | None = None,
        on_outcome: OutcomeListener | None = None,
    ) -> None:
        self.device_id = device_id
        self.config = config or OffloadClientConfig()
        self.topics = Topics(self.config.prefix)
        self.counters = ClientCounters()
        self._request_topic = self.topics.request(device_id)
        self._net = net
        self._mqtt = net.mqtt
        self._outbox = outbox
        self._on_outcome = on_outcome
        self._events: deque[tuple[str, Any]] = deque()
        self._scheduled = False  # a drain of ``_events`` is on the loop's ready queue
        self._inflight: set[str] = set()
        self._outcomes: list[JobOutcome] = []
        # ``_more``: the outbox may hold due jobs that are not in ``_fresh``, so the next
        # send claims from it (in priority order). ``_fresh``: jobs submitted since the
        # last send, with their frames; with no such backlog they go out from memory.
        self._more = True
        self._fresh: list[tuple[OffloadRequest, bytes]] = []
        # Jobs being submitted: in the outbox (or about to be) but not yet handed to the
        # loop, so a send from the outbox leaves them to the fresh path (no double send).
        self._submitting: set[str] = set()
        self._submitting_lock = threading.Lock()
        # Written with the next transaction: the claims of jobs published from memory
        # (ids and the time they went out), the jobs the broker acknowledged, and the
        # delivered jobs to close.
        self._unclaimed: list[str] = []
        self._unclaimed_at = 0
        self._acked: list[str] = []
        self._delivered: list[str] = []
        self._settler: asyncio.TimerHandle | None = None
        self._acks: list[Ack] = []  # of the replies in the burst being handled
        self._subscribed = False
        self._running = False  # the loop does this client's work (between start and stop)
        self._sweeper: asyncio.TimerHandle | None = None
        self._backoff: asyncio.TimerHandle | None = None

    def make_request(
        self,
        model: str,
        payload_kind: PayloadKind,
        priority: int = 0,
        ttl_s: float = 5.0,
        metadata: dict[str, MetadataValue] | None = None,
        local: LocalSummary | None = None,
    ) -> OffloadRequest:
        """A request header for this device with a fresh job id and a deadline ``ttl_s`` away."""
        created = now_ms()
        return OffloadRequest(
            job_id=new_job_id(),
            device_id=self.device_id,
            model=model,
            priority=priority,
            deadline=created + int(ttl_s * 1000),
            created=created,
            payload_kind=payload_kind,
            metadata=metadata or {},
            local=local,
        )

    def submit(
        self,
        request: OffloadRequest,
        payload: bytes | np.ndarray,
        local_result: Any = None,
        reason: str = "",
        requester: str = "",
    ) -> Enqueued:
        """Store a job in the outbox (durable on return) and wake the sender; any thread."""
        if request.device_id != self.device_id:
            raise OffloadError(f"request is for device {request.device_id}, not {self.device_id}")
        body = encode_payload(request.payload_kind, payload)
        frame = encode_request(request, body)
        if len(frame) > self.config.max_message_bytes:
            raise OffloadError(
                f"request is {len(frame)} bytes, limit {self.config.max_message_bytes}: "
                "not enqueued"
            )
        with self._submitting_lock:
            self._submitting.add(request.job_id)
        try:
            outcome = self._outbox.enqueue(NewJob(request, body, requester, reason, local_result))
        except BaseException:
            self._forget_submitting(request.job_id)
            raise
        self._post("submitted", (outcome, request, frame))
        return outcome

    def start(self) -> None:
        if self._subscribed:
            self._call(self._begin)
            return
        self._subscribed = True
        self._mqtt.subscribe_acked(self.topics.reply(self.device_id), self._on_reply)
        self._mqtt.add_connection_listener(lambda up: self._post("link", up))
        self._call(self._begin)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the work on the loop (events that arrive later wait for ``start``)."""
        loop = self._net.loop
        if self._net.on_loop():
            raise RuntimeError("stop the offload client from another thread than its loop")
        if not loop.is_running():
            self._end()
            return
        done = asyncio.run_coroutine_threadsafe(self._ended(), loop)
        with contextlib.suppress(TimeoutError):
            done.result(timeout)

    def status(self) -> dict[str, Any]:
        return {
            "connected": self._mqtt.connected,
            "in_flight": len(self._inflight),
            "counters": self.counters.as_dict(),
            "jobs": self._outbox.counts(),
            "outbox": self._outbox.stats(),
            "mqtt": self._mqtt.counters.as_dict(),
        }

    # --- on the network loop (``_post`` and ``_call`` from any thread) ---

    def _on_reply(self, topic: str, payload: bytes, ack: Ack) -> None:
        reply = decode_reply(payload, self.config.max_message_bytes)
        if reply.device_id != self.device_id:
            raise ProtocolError(f"reply for device {reply.device_id} on {topic}")
        self._post("reply", (reply, ack))

    def _post(self, kind: str, value: Any) -> None:
        """Queue an event; the events queued before the loop gets to them make one burst."""
        self._events.append((kind, value))
        if not self._scheduled:
            self._scheduled = True
            self._call(self._drain)

    def _call(self, step: Callable[[], None]) -> None:
        """Run ``step`` on the loop soon (in order with other calls)."""
        if self._net.on_loop():
            self._net.loop.call_soon(step)
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the client has stopped
            self._net.loop.call_soon_threadsafe(step)

    def _begin(self) -> None:
        if self._running:
            return
        self._running = True
        self._scheduled = False  # a drain left on a loop that was stopped never runs
        self._contained(self._resume)
        self._tick()

    def _end(self) -> None:
        self._running = False
        for timer in (self._sweeper, self._backoff, self._settler):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._backoff = self._settler = None
        self._contained(self._settle_committed)  # a clean stop: no job delivered twice

    async def _ended(self) -> None:
        self._end()

    def _tick(self) -> None:
        """Every ``sweep_interval_s``: deadlines and retry timers."""
        self._post("sweep", None)
        interval = self.config.sweep_interval_s
        self._sweeper = self._net.loop.call_later(interval, self._tick)

    def _drain(self) -> None:
        self._scheduled = False
        if not self._running or self._backoff is not None:
            return
        events = [self._events.popleft() for _ in range(min(MAX_BATCH, len(self._events)))]
        sent: list[bool] = []
        if not self._contained(functools.partial(self._burst, events, sent)) or not all(sent):
            # a persistent fault (disk full) must not spin the CPU: wait before the next try
            self._backoff = self._net.loop.call_later(0.1, self._resume_after_fault)
            return
        room = len(self._inflight) < self.config.window
        if self._events or (self._more and room and self._mqtt.connected):
            self._post("more", None)

    def _resume_after_fault(self) -> None:
        self._backoff = None
        self._post("more", None)

    def _resume(self) -> None:
        """After a restart: deliver results that were stored but not yet handed over."""
        with self._outbox.batch():
            for job in self._outbox.recover():
                self._delivering(job.id, resumed=job.status == Status.POSTPROCESSING)
        self._flush()

    def _burst(self, events: list[tuple[str, Any]], sent: list[bool]) -> None:
        """Handle ``events`` and send what they let out, in one transaction; then tell the
        outcomes (``_flush``) and acknowledge the replies. ``sent`` gets False if sending
        failed. Acknowledgements of requests alone, with no backlog to send, need no
        transaction: they are written with the next one."""
        if not self._more and all(kind == "ack" for kind, _ in events):
            for _, job_id in events:
                self._broker_has(job_id)
            self._settle_soon()
            return
        try:
            with self._outbox.batch():  # one commit for the whole burst and what it sends
                self._contained(self._settle)
                for kind, value in events:
                    self._contained(functools.partial(self._handle, kind, value))
                if self._mqtt.connected:
                    sent.append(self._contained(self._send))
                    self._more = self._more or not sent[-1]  # unsent jobs wait in the outbox
                elif self._fresh:
                    self._fresh, self._more = [], True  # they wait in the outbox for the link
                self._contained(self._close_delivered)  # after the sends: not in their way
            self._flush()  # the outcomes are told before the acknowledgements are written
        finally:
            # Replies are acknowledged to the broker after their commit, so that a reply
            # is never lost with the process; if the commit failed, the job's retry timer
            # asks the server again (it keeps its reply).
            acks, self._acks = self._acks, []
            for ack in acks:
                ack()

    def _contained(self, step: Callable[[], None]) -> bool:
        """Run one step; a failure is logged and counted and never stops the client."""
        try:
            step()
        except Exception:
            self.counters.worker_errors += 1
            log.exception("offload: a step failed")
            return False
        return True

    def _flush(self) -> None:
        """After the burst is committed: tell the listener; the delivered jobs are closed
        with the next transaction."""
        outcomes, self._outcomes = self._outcomes, []
        for outcome in outcomes:
            self._notify(outcome)
        self._delivered.extend(o.job_id for o in outcomes if o.status == Status.EXIT)
        self._settle_soon()

    def _settle(self) -> None:
        """Before the burst's events: write the claims of jobs sent from memory, then the
        broker's acknowledgements (Preprocessing -> Preprocessing_complete)."""
        if self._unclaimed:
            self._outbox.claim_sent(self._unclaimed, self._unclaimed_at)
            self._unclaimed = []
        acked, self._acked = self._acked, []
        for job_id in acked:
            self._outbox.mark_sent(job_id)  # not if an answer or a retry came first

    def _close_delivered(self) -> None:
        """Close the jobs delivered before this transaction (Postprocessing -> Exit)."""
        delivered, self._delivered = self._delivered, []
        for job_id in delivered:
            if self._outbox.finish(job_id):
                self.counters.completed += 1

    def _pending(self) -> bool:
        """Writes wait for the next transaction."""
        return bool(self._unclaimed or self._acked or self._delivered)

    def _settle_committed(self) -> None:
        if self._pending():
            with self._outbox.batch():
                self._settle()
                self._close_delivered()

    def _settle_soon(self) -> None:
        """Make sure a transaction comes within ``SETTLE_DELAY_S`` to write what waits."""
        if self._settler is None and self._running and self._pending():
            self._settler = self._net.loop.call_later(SETTLE_DELAY_S, self._settle_now)

    def _settle_now(self) -> None:
        self._settler = None
        self._post("settle", None)

    def _handle(self, kind: str, value: Any) -> None:
        if kind == "sweep":
            self._sweep()
        elif kind == "reply":
            reply, ack = value
            self._acks.append(ack)
            self._reply(reply)
        elif kind == "ack":
            self._broker_has(value)
        elif kind == "submitted":
            self._submitted(*value)
        elif kind == "link" and value:
            self._outbox.extend_timers()
            self._more = True

    def _submitted(self, outcome: Enqueued, request: OffloadRequest, frame: bytes) -> None:
        self._forget_submitting(request.job_id)
        if outcome.accepted:
            self.counters.submitted += 1
            self._fresh.append((request, frame))
        else:
            self.counters.rejected += 1
        if outcome.shed:
            shed = set(outcome.shed)
            self._fresh = [(r, f) for r, f in self._fresh if r.job_id not in shed]
        for job_id in outcome.shed:
            self._closed(job_id)

    def _broker_has(self, job_id: str) -> None:
        """The broker acknowledged a request (PUBACK); its status is written later."""
        self._inflight.discard(job_id)
        self._acked.append(job_id)
        self.counters.acked += 1

    def _forget_submitting(self, job_id: str) -> None:
        with self._submitting_lock:
            self._submitting.discard(job_id)

    def _send(self) -> None:
        """Publish due jobs: fresh ones from memory while there is no backlog, else claimed
        from the outbox in priority order. A send from the outbox skips the jobs whose
        submission has not reached the loop yet, so no job is sent twice; the claim of a
        fresh job is written with the next transaction."""
        fresh, self._fresh = self._fresh, []
        room = self.config.window - len(self._inflight)
        if room <= 0 or not (self._more or fresh):
            self._more = self._more or bool(fresh)
            return
        if self._more:  # the fresh jobs are in the outbox too, in their place in the order
            with self._submitting_lock:
                submitting = list(self._submitting)
            claimed = self._outbox.claim(room, skip=submitting)
            self._more = len(claimed) == room
            for job, body in claimed:
                error = self._publish(job.id, encode_request(job.request(), body))
                if error is not None:  # due again for the next send
                    self._outbox.release(job.id, error)
            return
        fresh.sort(key=lambda rf: (-rf[0].priority, rf[0].created))
        batch = fresh[:room]
        self._more = len(fresh) > room  # the rest wait in the outbox (still Enqueue)
        self._unclaimed_at = now_ms()
        for request, frame in batch:
            if self._publish(request.job_id, frame) is None:
                self._unclaimed.append(request.job_id)
            else:
                self._more = True  # still Enqueue: the next send from the outbox takes it
        self._settle_soon()

    def _publish(self, job_id: str, frame: bytes) -> str | None:
        """Publish one job; None once it is on its way, else why it is not."""
        try:
            self._mqtt.publish(self._request_topic, frame, on_ack=self._acker(job_id))
        except OffloadError as exc:
            log.warning("offload: job %s not published: %s", job_id, exc)
            return str(exc)
        self._inflight.add(job_id)
        self.counters.sent += 1
        return None

    def _acker(self, job_id: str) -> Callable[[], None]:
        def ack() -> None:
            self._post("ack", job_id)

        return ack

    def _reply(self, reply: Reply) -> None:
        if isinstance(reply, OffloadAccepted):
            if self._outbox.mark_accepted(reply.job_id):
                self.counters.accepted += 1
        elif isinstance(reply, OffloadResult):
            outcome = self._outbox.record_result(reply.job_id, reply.model_dump(mode="json"))
            if outcome == "recorded":
                self.counters.results += 1
                self._inflight.discard(reply.job_id)
                self._delivering(reply.job_id, result=reply)
            elif outcome == "duplicate":
                self.counters.duplicate_results += 1
            elif outcome == "late":
                self.counters.late_results += 1
            else:
                self.counters.unknown_results += 1
        else:
            status = self._outbox.record_error(
                reply.job_id, f"{reply.code}: {reply.reason}", reply.retryable
            )
            if status is not None:
                self.counters.errors += 1
                self._inflight.discard(reply.job_id)
                if status == Status.FAILED:
                    self._closed(reply.job_id)
                else:
                    self.counters.retried += 1
                    self._more = True

    def _sweep(self) -> None:
        report = self._outbox.sweep(retry_timeouts=self._mqtt.connected)
        for job_id in report.retried:
            self._inflight.discard(job_id)
        self.counters.retried += len(report.retried)
        for job_id in report.expired + report.failed:
            self._inflight.discard(job_id)
            self._closed(job_id)
        self._more = True

    def _delivering(
        self, job_id: str, resumed: bool = False, result: OffloadResult | None = None
    ) -> None:
        """Inferencing_complete -> Postprocessing; the listener hears of it after the commit.
        ``result`` is the server's, when at hand; otherwise it is read back from the job."""
        job = self._outbox.get(job_id) if resumed else self._outbox.begin_postprocess(job_id)
        if job is None or job.result is None:
            return
        if result is None:
            result = OffloadResult.model_validate(job.result)
        self._outcomes.append(JobOutcome(job.id, Status.EXIT, result, job.local_result, job.reason))

    def _closed(self, job_id: str) -> None:
        job = self._outbox.get(job_id)
        if job is None:
            return
        if job.status == Status.EXPIRED:
            self.counters.expired += 1
        elif job.status == Status.FAILED:
            self.counters.failed += 1
        self._outcomes.append(
            JobOutcome(job.id, job.status, None, job.local_result, job.last_error or "")
        )

    def _notify(self, outcome: JobOutcome) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(outcome)
        except Exception:
            self.counters.listener_errors += 1
            log.exception("offload: outcome listener failed for job %s", outcome.job_id)
