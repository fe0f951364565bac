"""The offload client's sans-io core: what to do with each event, not how it is done.

``OffloadCore`` decides; ``OffloadClient`` (``client.py``) feeds it events on edged's
network loop and carries out its decisions. The core has no asyncio, no threads, no MQTT
and no clock of its own (an injected ``Clock``): its tests drive it synchronously with a
real ``Outbox`` on a temporary SQLite file. (The module is long because the events, the
``Effects`` port and the outcome and counter records are the core's interface.)

Events in: a job submitted (its ``Enqueued`` outcome and frame), the broker's PUBACK of a
request, a reply (accepted, result, error) with its acknowledgement, the link up or down,
and the sweep, settle and fault-backoff timers firing. Decisions out, through the
``Effects`` port the adapter implements: publish this frame for this job, start or cancel
this timer, tell this outcome; a reply is acknowledged by calling the acknowledgement that
came with it. The outbox is called directly (``batch()``, claims, moves, sweep, recover):
its answers (rows claimed, a result recorded or a duplicate, a sweep's report) steer the
next step in the same transaction, and a failed publish releases its job in it; as
decisions, each would take a round trip through the adapter, and every burst a list of
decisions built and walked on the round trip's path.

Jobs are claimed in priority order and published, with at most ``window`` awaiting their
PUBACK; replies are matched by job id. A request the adapter could not publish waits for
the next send, unless it never can be (``Unsent.final``: larger than the broker takes):
its job then fails at once, with the reason, and the others go on. A sweep expires jobs
at their deadline (the local result stands) and retries overdue ones with backoff; retry
timers pause while the link is down. The events that arrive together are handled in one
outbox transaction (group commit), with the jobs they let out claimed and published in
it; only after it commits
is each closed job's outcome told (once; again only if edged dies between the two, as
delivery is at-least-once; a burst whose commit fails tells nothing of what it gathered,
and the writes it carried, with the claims of the jobs it published, wait for the next
one), and only then is each reply in it
acknowledged (a reply is never lost with the process).
A failed burst (disk full) arms the fault-backoff timer.

Three writes are left to the next transaction, so that a job's round trip does not wait
for them: the claim of a job published from memory when it was submitted (if edged dies
first, the job is sent again after the restart), the broker's acknowledgement of a
request (Preprocessing_complete; a burst of acknowledgements alone opens no transaction,
so it costs the CPU little while the server works on the job), and the close of a
delivered job after its outcome was told, written after that transaction's sends. The
settle timer brings that transaction within ``SETTLE_DELAY_S`` when no event does, and
``stop`` writes them before it returns.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from edged.offload.outbox import Outbox
from edged.offload.records import Enqueued, JobRecord
from edgefed.clock import Clock, now_ms
from edgefed.counters import Counters
from edgefed.lifecycle import Status
from edgefed.outage import Outage
from edgefed.wire import OffloadAccepted, OffloadRequest, OffloadResult, Reply, encode_request

log = logging.getLogger(__name__)
SETTLE_DELAY_S = 0.05  # claims and closes left to the next transaction wait at most this
FAULT_BACKOFF_S = 0.1  # after a failed burst: a persistent fault must not spin the CPU


@dataclass(frozen=True)
class JobOutcome:
    """How a job closed: Exit with the server's result, or Failed/Expired without one."""

    job_id: str
    status: Status
    result: OffloadResult | None
    local_result: Any
    reason: str
    model: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # the request's (camera, frame)
    masked: int = 0  # the server's detections dropped by the camera's object masks

    @classmethod
    def of(cls, job: JobRecord, status: Status, result: OffloadResult | None, reason: str) -> Self:
        return cls(job.id, status, result, job.local_result, reason, job.model, job.metadata)


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
    shed_by_server: int = 0  # of ``expired``: the server shed them under overload
    failed: int = 0
    too_large: int = 0  # of ``failed``: never sent, larger than the broker takes
    completed: int = 0
    duplicate_results: int = 0
    late_results: int = 0
    unknown_results: int = 0
    foreign_replies: int = 0  # naming another device
    stray_errors: int = 0  # an error for a job not awaiting an answer
    listener_errors: int = 0
    worker_errors: int = 0


class Timer(enum.Enum):
    SWEEP = "sweep"  # every ``sweep_interval_s``: deadlines and retry timers
    SETTLE = "settle"  # the writes left to the next transaction are due
    BACKOFF = "backoff"  # a failed burst: the next one waits for this


# --- events (``Event``): what the adapter hands to ``burst`` ---


@dataclass(frozen=True, slots=True)
class Submitted:  # ``submit`` stored a job (or was refused, or shed others)
    outcome: Enqueued
    request: OffloadRequest
    frame: bytes | None  # None: its row moved since (its clock did): send it re-encoded


@dataclass(frozen=True, slots=True)
class Puback:  # the broker acknowledged the request of this job
    job_id: str


@dataclass(frozen=True, slots=True)
class ReplyIn:  # a server reply; ``ack`` is called once its burst committed
    reply: Reply
    ack: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Link:
    up: bool


@dataclass(frozen=True, slots=True)
class Sweep:  # expire and retry (the sweep timer fired)
    pass


@dataclass(frozen=True, slots=True)
class Wake:  # nothing new: write what waits, send what is due (settle, backoff over, more)
    pass


Event = Submitted | Puback | ReplyIn | Link | Sweep | Wake
SWEEP = Sweep()
WAKE = Wake()


@dataclass(frozen=True, slots=True)
class Unsent:
    """Why a request was not published. ``final``: it never can be as it is (larger than
    the broker's packet limit), so its job fails now rather than being tried forever."""

    reason: str
    final: bool = False


class Effects(Protocol):
    """The decisions the core hands out, carried out by its adapter."""

    def publish(self, job_id: str, frame: bytes) -> Unsent | None:
        """Publish a job's request; None once it is on its way (its PUBACK comes back as
        ``Puback``), else why it is not."""

    def start_timer(self, timer: Timer, delay_s: float) -> None:
        """Call ``OffloadCore.fired(timer)`` after ``delay_s``."""

    def cancel_timer(self, timer: Timer) -> None: ...

    def tell(self, outcome: JobOutcome) -> None:
        """Hand a committed outcome to the listener (whose failures are the adapter's)."""


@dataclass
class _Writes:
    """The writes left to the next transaction (see the module docstring): the claims of
    jobs published from memory (and when the first of them went out), the jobs the broker
    acknowledged, the delivered jobs to close. A transaction's own also lists the jobs it
    claimed from the outbox and published (``claimed``, at ``claimed_now``): if it rolls
    back, their claims wait as those of jobs published from memory, since they are out."""

    unclaimed: list[str] = field(default_factory=list)
    unclaimed_at: int = 0
    acked: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    closed: int = 0  # delivered jobs a transaction closed, counted once it commits
    claimed: list[str] = field(default_factory=list)
    claimed_now: int = 0

    def __bool__(self) -> bool:
        return bool(self.unclaimed or self.acked or self.delivered)

    def claimed_at(self, now: int) -> None:
        """Jobs go out from memory now; the claims that wait keep their earlier time."""
        if not self.unclaimed:
            self.unclaimed_at = now

    def take(self) -> _Writes:
        """Hand what waits to a transaction (``give_back`` if it rolls back)."""
        taken = _Writes(self.unclaimed, self.unclaimed_at, self.acked, self.delivered)
        self.unclaimed, self.acked, self.delivered = [], [], []
        return taken

    def give_back(self, taken: _Writes) -> None:
        """The transaction that took ``taken`` rolled back: its writes wait again, and the
        claims of the jobs it published from the outbox with them."""
        back = taken.unclaimed + taken.claimed
        if back:
            at = taken.unclaimed_at if taken.unclaimed else taken.claimed_now
            self.unclaimed_at = min(at, self.unclaimed_at) if self.unclaimed else at
        self.unclaimed = back + self.unclaimed
        self.acked = taken.acked + self.acked
        self.delivered = taken.delivered + self.delivered


@contextlib.contextmanager
def _transaction(
    outbox: Outbox, outcomes: list[JobOutcome], waiting: _Writes, counters: ClientCounters
) -> Iterator[_Writes]:
    """One outbox transaction, given the writes that wait. If it rolls back, the outcomes
    gathered in it go (they were never stored, and telling them later would tell them
    twice once their events come again: the server's reply is asked for again, the sweep
    runs again) and the writes it took wait again (a delivered job is closed later, not
    left in Postprocessing to be told again after a restart)."""
    gathered = len(outcomes)
    taken = waiting.take()
    try:
        with outbox.batch():
            yield taken
    except BaseException:
        del outcomes[gathered:]
        waiting.give_back(taken)
        raise
    counters.completed += taken.closed


class OffloadCore:
    """The offload client's decisions; every call comes from one thread (the adapter's)."""

    def __init__(
        self,
        outbox: Outbox,
        effects: Effects,
        window: int = 32,
        sweep_interval_s: float = 0.25,
        submitting: Callable[[], Collection[str]] = frozenset,
        clock: Clock = now_ms,
    ) -> None:
        self.counters = ClientCounters()
        self._step_failures: dict[str, Outage] = {}
        self._outbox, self._effects, self._clock = outbox, effects, clock
        self._window, self._sweep_interval_s = window, sweep_interval_s
        self._submitting = submitting  # jobs in the outbox whose Submitted is still to come
        self._running, self._armed = False, set[Timer]()
        self._inflight: set[str] = set()  # published, awaiting their PUBACK
        self._outcomes: list[JobOutcome] = []  # told after the burst's commit
        self._shed: list[JobOutcome] = []  # closed by their own commit: told come what may
        self._acks: list[Callable[[], None]] = []  # of the burst's replies, after the commit
        # ``_more``: the outbox may hold due jobs that are not in ``_fresh``, so the next
        # send claims from it (in priority order). ``_fresh``: jobs submitted since the
        # last send, with their frames; with no such backlog they go out from memory.
        self._more = True
        self._fresh: list[tuple[OffloadRequest, bytes]] = []
        self._waiting = _Writes()  # written with the next transaction

    @property
    def running(self) -> bool:
        return self._running

    @property
    def ready(self) -> bool:
        """Whether a burst may run now: started, and no fault backoff under way."""
        return self._running and Timer.BACKOFF not in self._armed

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def start(self) -> None:
        """Tell the results stored but not told (a restart); sweep now and periodically."""
        if not self._running:
            self._running = True
            self._contained(self._resume)
            self._arm(Timer.SWEEP, 0.0)

    def stop(self) -> None:
        """Cancel the timers and write what waits (a clean stop delivers no job twice)."""
        self._running = False
        for timer in list(self._armed):
            self._effects.cancel_timer(timer)
        self._armed.clear()
        self._contained(self._settle_committed)

    def fired(self, timer: Timer) -> Event:
        """A timer fired: the event to handle with the next burst."""
        self._armed.discard(timer)
        if timer is not Timer.SWEEP:
            return WAKE
        if self._running:
            self._arm(Timer.SWEEP, self._sweep_interval_s)
        return SWEEP

    def burst(self, events: Sequence[Event], connected: bool) -> bool:
        """Handle ``events`` and send what they let out, in one transaction; then tell the
        outcomes and acknowledge the replies. True: another burst is due at once (jobs wait,
        the window has room). On a failure the backoff timer is armed (not ``ready``)."""
        sent: list[bool] = []
        if not self._contained(self._burst, events, connected, sent) or not all(sent):
            self._arm(Timer.BACKOFF, FAULT_BACKOFF_S)
            return False
        return self._more and connected and len(self._inflight) < self._window

    def _arm(self, timer: Timer, delay_s: float) -> None:
        self._armed.add(timer)
        self._effects.start_timer(timer, delay_s)

    def _contained(self, step: Callable[..., None], *args: Any) -> bool:
        """Run one step; a failure is logged and counted and never stops the client."""
        name = getattr(step, "__name__", repr(step)).lstrip("_")
        outage = self._step_failures.get(name)
        if outage is None:  # one outage per step: the others succeeding does not end it
            outage = self._step_failures.setdefault(name, Outage(log, f"offload: step {name}"))
        try:
            step(*args)
        except Exception as exc:
            self.counters.worker_errors += 1
            outage.failed(exc)
            return False
        outage.ok()
        return True

    def _resume(self) -> None:
        with _transaction(self._outbox, self._outcomes, self._waiting, self.counters) as writes:
            self._settle(writes)  # what a failed stop left
            self._close_delivered(writes)
            for job in self._outbox.recover():
                self._delivering(job.id, resumed=job.status == Status.POSTPROCESSING)
        self._flush()

    def _burst(self, events: Sequence[Event], connected: bool, sent: list[bool]) -> None:
        """``sent`` gets False if sending failed. Acknowledgements of requests alone, with
        no backlog to send, need no transaction: they are written with the next one."""
        if not self._more and all(type(event) is Puback for event in events):
            for event in events:
                if isinstance(event, Puback):
                    self._broker_has(event.job_id)
            self._settle_soon()
            return
        try:
            # one commit for the whole burst and what it sends
            with _transaction(self._outbox, self._outcomes, self._waiting, self.counters) as writes:
                self._contained(self._settle, writes)
                for event in events:
                    self._contained(self._handle, event, connected)
                if connected:
                    sent.append(self._contained(self._send, writes))
                    self._more = self._more or not sent[-1]  # unsent jobs wait in the outbox
                elif self._fresh:
                    self._fresh, self._more = [], True  # they wait in the outbox for the link
                self._contained(self._close_delivered, writes)  # after the sends
            self._flush()  # the outcomes are told before the acknowledgements are written
        finally:
            # Replies are acknowledged to the broker after their commit, so that a reply
            # is never lost with the process; if the commit failed, the job's retry timer
            # asks the server again (it keeps its reply).
            acks, self._acks = self._acks, []
            for ack in acks:
                ack()

    def _handle(self, event: Event, connected: bool) -> None:
        if isinstance(event, Puback):
            self._broker_has(event.job_id)
        elif isinstance(event, ReplyIn):
            self._acks.append(event.ack)
            self._reply(event.reply)
        elif isinstance(event, Submitted):
            self._submitted(event.outcome, event.request, event.frame)
        elif isinstance(event, Sweep):
            self._sweep(connected)
        elif isinstance(event, Link) and event.up:
            self._outbox.extend_timers()
            self._more = True

    def _flush(self) -> None:
        """After the commit: tell the outcomes; the delivered jobs close with the next one."""
        outcomes, self._outcomes, self._shed = self._shed + self._outcomes, [], []
        for outcome in outcomes:
            self._effects.tell(outcome)
        self._waiting.delivered.extend(o.job_id for o in outcomes if o.status == Status.EXIT)
        self._settle_soon()

    def _settle(self, writes: _Writes) -> None:
        """Before the burst's events: write the claims of jobs sent from memory, then the
        broker's acknowledgements (Preprocessing -> Preprocessing_complete)."""
        if writes.unclaimed:
            self._outbox.claim_sent(writes.unclaimed, writes.unclaimed_at)
        for job_id in writes.acked:
            self._outbox.mark_sent(job_id)  # not if an answer or a retry came first

    def _close_delivered(self, writes: _Writes) -> None:
        """Close the jobs delivered before this transaction (Postprocessing -> Exit)."""
        for job_id in writes.delivered:
            writes.closed += self._outbox.finish(job_id)

    def _settle_committed(self) -> None:
        if self._waiting:
            with _transaction(self._outbox, self._outcomes, self._waiting, self.counters) as writes:
                self._settle(writes)
                self._close_delivered(writes)
        self._flush()  # shed jobs not told yet: their close was committed when it was made

    def _settle_soon(self) -> None:
        """Make sure a transaction comes within ``SETTLE_DELAY_S`` to write what waits."""
        if Timer.SETTLE not in self._armed and self._running and self._waiting:
            self._arm(Timer.SETTLE, SETTLE_DELAY_S)

    def _submitted(self, outcome: Enqueued, request: OffloadRequest, frame: bytes | None) -> None:
        if outcome.accepted:
            self.counters.submitted += 1
            if frame is not None:
                self._fresh.append((request, frame))
            self._more = self._more or frame is None  # its row moved: claimed, re-encoded
        else:
            self.counters.rejected += 1
        shed = set(outcome.shed)  # ``_fresh``: the few jobs since the last send
        self._fresh = [(r, f) for r, f in self._fresh if r.job_id not in shed]
        for job_id in outcome.shed:
            self._closed(job_id, self._shed)

    def reframe(self) -> None:  # the rows moved with their clock: claimed, re-encoded
        self._fresh, self._more = [], self._more or bool(self._fresh)

    def _broker_has(self, job_id: str) -> None:  # the broker's PUBACK; the status comes later
        self._inflight.discard(job_id)
        self._waiting.acked.append(job_id)
        self.counters.acked += 1

    def _send(self, writes: _Writes) -> None:
        """Publish due jobs: fresh ones from memory while there is no backlog, else claimed
        from the outbox in priority order. A send from the outbox skips the jobs whose
        submission has not reached the core yet, so no job is sent twice; the claim of a
        fresh job is written with the next transaction."""
        fresh, self._fresh = self._fresh, []
        room = self._window - len(self._inflight)
        if room <= 0 or not (self._more or fresh):
            self._more = self._more or bool(fresh)
            return
        if self._more:  # the fresh jobs are in the outbox too, in their place in the order
            claimed = self._outbox.claim(room, skip=self._submitting())
            self._more = len(claimed) == room
            writes.claimed_now = self._clock()
            for job, body in claimed:
                if (unsent := self._publish(job.id, encode_request(job.request(), body))) is None:
                    writes.claimed.append(job.id)
                elif not unsent.final:  # due again for the next send
                    self._outbox.release(job.id, unsent.reason)
            return
        fresh.sort(key=lambda rf: (-rf[0].priority, rf[0].created))
        self._more = len(fresh) > room  # the rest wait in the outbox (still Enqueue)
        self._waiting.claimed_at(self._clock())
        for request, frame in fresh[:room]:
            if (unsent := self._publish(request.job_id, frame)) is None:
                self._waiting.unclaimed.append(request.job_id)
            elif not unsent.final:
                self._more = True  # still Enqueue: the next send from the outbox takes it
        self._settle_soon()

    def _publish(self, job_id: str, frame: bytes) -> Unsent | None:
        unsent = self._effects.publish(job_id, frame)
        if unsent is None:
            self._inflight.add(job_id)
            self.counters.sent += 1
        elif unsent.final and self._outbox.record_error(job_id, unsent.reason, retryable=False):
            self.counters.too_large += 1  # never sendable: failed now, not tried forever
            self._closed(job_id, self._outcomes)
        return unsent

    def _reply(self, reply: Reply) -> None:
        if isinstance(reply, OffloadAccepted):
            self.counters.accepted += self._outbox.mark_accepted(reply.job_id)
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
            reason = f"{reply.code}: {reply.reason}"
            shed = reply.code == "shed"
            status = self._outbox.record_error(reply.job_id, reason, reply.retryable, shed)
            if status is None:
                self.counters.stray_errors += 1
                return
            self.counters.errors += 1
            self.counters.shed_by_server += shed
            self._inflight.discard(reply.job_id)
            if status in (Status.FAILED, Status.EXPIRED):
                self._closed(reply.job_id, self._outcomes)
            else:
                self.counters.retried += 1
                self._more = True

    def _sweep(self, connected: bool) -> None:
        report = self._outbox.sweep(retry_timeouts=connected)
        self.counters.retried += len(report.retried)
        self._inflight.difference_update(report.retried + report.expired + report.failed)
        for job_id in report.expired + report.failed:
            self._closed(job_id, self._outcomes)
        self._more = True

    def _delivering(
        self, job_id: str, resumed: bool = False, result: OffloadResult | None = None
    ) -> None:
        """Inferencing_complete -> Postprocessing; the outcome is told after the commit.
        ``result`` is the server's, when at hand; otherwise it is read back from the job."""
        job = self._outbox.get(job_id) if resumed else self._outbox.begin_postprocess(job_id)
        if job is None or job.result is None:
            return
        if result is None:
            result = OffloadResult.model_validate(job.result)
        self._outcomes.append(JobOutcome.of(job, Status.EXIT, result, job.reason))

    def _closed(self, job_id: str, into: list[JobOutcome]) -> None:
        """A job closed Expired or Failed: its outcome goes to ``into`` (to be told)."""
        job = self._outbox.get(job_id)
        if job is None:
            return
        self.counters.expired += job.status == Status.EXPIRED
        self.counters.failed += job.status == Status.FAILED
        into.append(JobOutcome.of(job, job.status, None, job.last_error or ""))
