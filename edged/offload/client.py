"""The offload service: drains the outbox over MQTT QoS 1 and records the server's answers.

One worker thread owns the flow. Callers (pipeline threads) ``submit`` jobs, which are
durable in the outbox when the call returns. While the link is up the worker claims
due jobs in priority order and publishes them, with at most ``window`` awaiting their
PUBACK; replies from the server (accepted, result, error) are decoded on paho's thread
and handed to the worker, which matches them by job id. A timer expires jobs at their
deadline (the local result stands) and retries overdue ones with backoff; retry timers
pause while the link is down. A burst of events is handled in one outbox transaction
(group commit); only after it commits does ``on_outcome`` hear how each closed job ended
(once; again only if edged dies between the two, as delivery is at-least-once).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edged.errors import OffloadError, ProtocolError
from edged.mqtt import MqttClient
from edged.offload.jobs import Status
from edged.offload.outbox import Outbox
from edged.offload.records import Enqueued, NewJob, now_ms
from edged.protocol import (
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
class ClientCounters:
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
    """Moves outbox jobs to serverd and their results back; ``start``/``stop`` service."""

    def __init__(
        self,
        device_id: str,
        mqtt: MqttClient,
        outbox: Outbox,
        config: OffloadClientConfig | None = None,
        on_outcome: OutcomeListener | None = None,
    ) -> None:
        self.device_id = device_id
        self.config = config or OffloadClientConfig()
        self.topics = Topics(self.config.prefix)
        self.counters = ClientCounters()
        self._request_topic = self.topics.request(device_id)
        self._mqtt = mqtt
        self._outbox = outbox
        self._on_outcome = on_outcome
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._inflight: set[str] = set()
        self._outcomes: list[JobOutcome] = []
        self._more = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        size = len(encode_request(request, body))
        if size > self.config.max_message_bytes:
            raise OffloadError(
                f"request is {size} bytes, limit {self.config.max_message_bytes}: not enqueued"
            )
        outcome = self._outbox.enqueue(NewJob(request, body, requester, reason, local_result))
        self._events.put(("submitted", outcome))
        return outcome

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._mqtt.subscribe(self.topics.reply(self.device_id), self._on_reply)
        self._mqtt.add_connection_listener(lambda up: self._events.put(("link", up)))
        self._thread = threading.Thread(target=self._run, name="offload-client", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._events.put(("stop", None))
        self._thread.join(timeout)
        self._thread = None

    def status(self) -> dict[str, Any]:
        return {
            "connected": self._mqtt.connected,
            "in_flight": len(self._inflight),
            "counters": dict(self.counters.__dict__),
            "jobs": self._outbox.counts(),
            "outbox": self._outbox.stats(),
            "mqtt": self._mqtt.counters.as_dict(),
        }

    # --- paho's thread ---

    def _on_reply(self, topic: str, payload: bytes) -> None:
        reply = decode_reply(payload, self.config.max_message_bytes)
        if reply.device_id != self.device_id:
            raise ProtocolError(f"reply for device {reply.device_id} on {topic}")
        self._events.put(("reply", reply))

    # --- the worker thread ---

    def _run(self) -> None:
        self._contained(self._resume)
        next_sweep = 0.0
        while not self._stop.is_set():
            ready = self._mqtt.connected and self._more
            wait = 0.0 if ready and len(self._inflight) < self.config.window else None
            if wait is None:
                wait = max(0.0, next_sweep - time.monotonic())
            events = []
            try:
                events.append(self._events.get(timeout=wait))
                while len(events) < MAX_BATCH:
                    events.append(self._events.get_nowait())
            except queue.Empty:
                pass
            sweep = time.monotonic() >= next_sweep
            if sweep:
                next_sweep = time.monotonic() + self.config.sweep_interval_s
                events.append(("sweep", None))
            ok = self._contained(functools.partial(self._burst, events))
            if self._mqtt.connected and not self._stop.is_set():
                ok = self._contained(self._send) and ok
            if not ok:
                self._stop.wait(0.1)  # a persistent fault (disk full) must not spin the CPU

    def _resume(self) -> None:
        """After a restart: deliver results that were stored but not yet handed over."""
        with self._outbox.batch():
            for job in self._outbox.recover():
                self._delivering(job.id, resumed=job.status == Status.POSTPROCESSING)
        self._flush()

    def _burst(self, events: list[tuple[str, Any]]) -> None:
        with self._outbox.batch():  # one commit for the whole burst
            for kind, value in events:
                self._contained(functools.partial(self._handle, kind, value))
        self._flush()

    def _contained(self, step: Callable[[], None]) -> bool:
        """Run one step; a failure is logged and counted and never kills the worker."""
        try:
            step()
        except Exception:
            self.counters.worker_errors += 1
            log.exception("offload: worker step failed")
            return False
        return True

    def _flush(self) -> None:
        """After the burst is committed: tell the listener, then close the delivered jobs."""
        outcomes, self._outcomes = self._outcomes, []
        for outcome in outcomes:
            self._notify(outcome)
        delivered = [o.job_id for o in outcomes if o.status == Status.EXIT]
        if delivered:
            with self._outbox.batch():
                for job_id in delivered:
                    if self._outbox.finish(job_id):
                        self.counters.completed += 1

    def _handle(self, kind: str, value: Any) -> None:
        if kind == "sweep":
            self._sweep()
        elif kind == "reply":
            self._reply(value)
        elif kind == "ack":
            self._inflight.discard(value)
            if self._outbox.mark_sent(value):
                self.counters.acked += 1
        elif kind == "submitted":
            self._submitted(value)
        elif kind == "link" and value:
            self._outbox.extend_timers()
            self._more = True

    def _submitted(self, outcome: Enqueued) -> None:
        if outcome.accepted:
            self.counters.submitted += 1
            self._more = True
        else:
            self.counters.rejected += 1
        for job_id in outcome.shed:
            self._closed(job_id)

    def _send(self) -> None:
        room = self.config.window - len(self._inflight)
        if room <= 0 or not self._more:
            return
        claimed = self._outbox.claim(room)
        self._more = len(claimed) == room
        for job, body in claimed:
            frame = encode_request(job.request(), body)
            try:
                self._mqtt.publish(self._request_topic, frame, on_ack=self._acker(job.id))
            except OffloadError as exc:
                self._outbox.release(job.id, str(exc))
                log.warning("offload: job %s not published: %s", job.id, exc)
                continue
            self._inflight.add(job.id)
            self.counters.sent += 1

    def _acker(self, job_id: str) -> Callable[[], None]:
        def ack() -> None:
            self._events.put(("ack", job_id))

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
                self._delivering(reply.job_id)
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

    def _delivering(self, job_id: str, resumed: bool = False) -> None:
        """Inferencing_complete -> Postprocessing; the listener hears of it after the commit."""
        job = self._outbox.get(job_id) if resumed else self._outbox.begin_postprocess(job_id)
        if job is None or job.result is None:
            return
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
