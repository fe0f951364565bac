"""The offload service: drains the outbox over MQTT QoS 1 and records the server's answers.

``OffloadClient`` is the adapter of the sans-io ``OffloadCore`` (``core.py``, where the
offload behaviour and its reasons are described): it runs the core on edged's network
loop (``edged.netloop``), the thread that also drives the MQTT connection, so replies and
PUBACKs are handled where they are read and requests are written as they are published.
Callers (pipeline threads) ``submit`` jobs, which are durable in the outbox when the call
returns, and the loop is woken. MQTT callbacks (a reply, a PUBACK, the link going up or
down) and the core's timers become events in a queue; the events queued before the loop
gets to them make one burst, which the core handles in one outbox transaction (group
commit). The core's decisions are carried out here: a publish through
``MqttClient.publish(..., on_ack=...)``, timers through the loop's ``call_later``,
outcomes to ``on_outcome``. All outbox writes of the client run on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edged.netloop import NetLoop
from edged.offload.core import (
    WAKE,
    ClientCounters,
    Event,
    JobOutcome,
    Link,
    OffloadCore,
    Puback,
    ReplyIn,
    Submitted,
    Timer,
    Unsent,
)
from edged.offload.outbox import Outbox
from edged.offload.records import Enqueued, NewJob
from edged.offload.serverclock import ServerClock
from edgefed.clock import Clock, now_ms
from edgefed.config import Seconds
from edgefed.errors import OffloadError, ProtocolError
from edgefed.mqtt import Ack, PacketTooLarge
from edgefed.outage import Repeats
from edgefed.wire import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PREFIX,
    LocalSummary,
    MetadataValue,
    OffloadErrorMessage,
    OffloadRequest,
    OffloadResult,
    PayloadKind,
    Topics,
    decode_reply,
    encode_payload,
    encode_request,
    new_job_id,
)

__all__ = [
    "ClientCounters",
    "JobOutcome",
    "OffloadClient",
    "OffloadClientConfig",
    "OutcomeListener",
]

log = logging.getLogger(__name__)
MAX_BATCH = 256  # events handled in one transaction
LINK_UP, LINK_DOWN = Link(True), Link(False)


@dataclass(frozen=True, slots=True)
class _Stored:
    """A submission and the clock moves counted when its row was stored."""

    event: Submitted
    moves: int


class OffloadClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str = Field(default=DEFAULT_PREFIX, description="Topic prefix shared with serverd")
    window: int = Field(default=32, ge=1, le=1024, description="Requests awaiting PUBACK at once")
    sweep_interval_s: Seconds = Field(
        default=0.25, description="How often deadlines and retry timers are checked"
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_BYTES, ge=1024, description="Largest request or reply on the wire"
    )


OutcomeListener = Callable[[JobOutcome], None]


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
        clock: Clock = now_ms,
    ) -> None:
        self.device_id = device_id
        # the outbox's: deadlines and timers read the same clock; a ServerClock (as edged
        # runs) is serverd's, learnt from the replies
        self._clock = clock
        self.config = config or OffloadClientConfig()
        self.topics = Topics(self.config.prefix)
        self._request_topic = self.topics.request(device_id)
        self._net = net
        self._mqtt = net.mqtt
        self._outbox = outbox
        self._first_rowid = outbox.last_rowid()  # the jobs after it are this run's
        self._clock_moves = 0  # times the jobs moved with their clock (ServerClock)
        self._on_outcome = on_outcome
        self._events: deque[Event | _Stored] = deque()
        self._scheduled = False  # a drain of ``_events`` is on the loop's ready queue
        # Jobs being submitted: in the outbox (or about to be) but not yet handed to the
        # core, so a send from the outbox leaves them to the fresh path (no double send).
        self._submitting: set[str] = set()
        self._submitting_lock = threading.Lock()
        self._subscribed = False
        self._core = OffloadCore(
            outbox,
            _LoopEffects(net, self._request_topic, self._post, self._fired, self._notify),
            window=self.config.window,
            sweep_interval_s=self.config.sweep_interval_s,
            submitting=self._submitting_now,
            clock=clock,
        )
        self.counters: ClientCounters = self._core.counters

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
        created = self._clock()
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
        moves = self._clock_moves  # read before the row is stored: a move after it moved it
        try:
            outcome = self._outbox.enqueue(NewJob(request, body, requester, reason, local_result))
        except BaseException:
            self._forget_submitting(request.job_id)
            raise
        self._post(_Stored(Submitted(outcome, request, frame), moves))
        return outcome

    def start(self) -> None:
        if self._subscribed:
            self._call(self._begin)
            return
        self._subscribed = True
        self._mqtt.subscribe_acked(self.topics.reply(self.device_id), self._on_reply)
        self._mqtt.add_connection_listener(lambda up: self._post(LINK_UP if up else LINK_DOWN))
        self._call(self._begin)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the work on the loop (events that arrive later wait for ``start``)."""
        loop = self._net.loop
        if self._net.on_loop():
            raise RuntimeError("stop the offload client from another thread than its loop")
        if not loop.is_running():
            self._core.stop()
            return
        done = asyncio.run_coroutine_threadsafe(self._ended(), loop)
        with contextlib.suppress(TimeoutError):
            done.result(timeout)

    def status(self) -> dict[str, Any]:
        return {
            "connected": self._mqtt.connected,
            "in_flight": self._core.in_flight,
            "counters": self.counters.as_dict(),
            "jobs": self._outbox.counts(),
            "outbox": self._outbox.stats(),
            "mqtt": self._mqtt.counters.as_dict(),
            "clock_offset_ms": self._outbox.clock_offset_ms,  # serverd's minus the device's
        }

    # --- on the network loop (``_post`` and ``_call`` from any thread) ---

    def _on_reply(self, topic: str, payload: bytes, ack: Ack) -> None:
        """A message on this device's own reply topic (the only one subscribed; the
        broker's ACL lets only serverd publish there). A reply naming another device is
        counted and dropped; one for a job not awaiting an answer is the core's to drop."""
        reply = decode_reply(payload, self.config.max_message_bytes)
        if reply.device_id != self.device_id:
            self.counters.foreign_replies += 1
            raise ProtocolError(f"reply for device {reply.device_id} on {topic}")
        if isinstance(self._clock, ServerClock):
            match reply:  # serverd's time when it answered
                case OffloadResult(completed=int(at)) | OffloadErrorMessage(at=int(at)):
                    self._learn_clock(self._clock, at)
        self._post(ReplyIn(reply, ack))

    def _learn_clock(self, clock: ServerClock, answered: int) -> None:
        """Follow serverd's clock; when it moves, so do the open jobs timed on it (before
        the first reply, only the jobs this run made, on the device's own clock)."""
        first = not clock.learnt
        step = clock.observe(answered)
        if step:
            moved = self._outbox.shift_open(step, self._first_rowid if first else 0)
            self._clock_moves += 1  # the frames of the jobs submitted before it are stale
            self._core.reframe()
            log.info(
                "offload: serverd's clock moved %+.1f s: %d open jobs with it", step / 1000, moved
            )

    def _post(self, event: Event | _Stored) -> None:
        """Queue an event; the events queued before the loop gets to them make one burst."""
        self._events.append(event)
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
        if not self._core.running:
            self._scheduled = False  # a drain left on a loop that was stopped never runs
            self._core.start()

    async def _ended(self) -> None:
        self._core.stop()

    def _drain(self) -> None:
        """One burst: the events queued so far (up to ``MAX_BATCH``), to the core."""
        self._scheduled = False
        core = self._core
        if not core.ready:  # stopped, or backing off after a fault: the events wait
            return
        events = [
            self._unstored(self._events.popleft()) for _ in range(min(MAX_BATCH, len(self._events)))
        ]
        for event in events:  # handed to the core: a send from the outbox may take them
            if type(event) is Submitted:
                self._forget_submitting(event.request.job_id)
        again = core.burst(events, self._mqtt.connected)
        if core.ready and (self._events or again):
            self._post(WAKE)

    def _unstored(self, item: Event | _Stored) -> Event:
        """A submission whose row moved with the clock since it was stored goes out
        re-encoded from the outbox, not as the frame made before."""
        if not isinstance(item, _Stored):
            return item
        event = item.event
        return event if item.moves == self._clock_moves else replace(event, frame=None)

    def _submitting_now(self) -> list[str]:
        with self._submitting_lock:
            return list(self._submitting)

    def _forget_submitting(self, job_id: str) -> None:
        with self._submitting_lock:
            self._submitting.discard(job_id)

    def _fired(self, timer: Timer) -> None:
        self._post(self._core.fired(timer))

    def _notify(self, outcome: JobOutcome) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(outcome)
        except Exception:
            self.counters.listener_errors += 1
            log.exception("offload: outcome listener failed for job %s", outcome.job_id)


class _LoopEffects:
    """The core's decisions (``Effects``), carried out on the network loop: requests
    published on its MQTT connection (each PUBACK posted back as an event), timers on the
    loop (each firing posted back as the event the core names), outcomes told."""

    def __init__(
        self,
        net: NetLoop,
        topic: str,
        post: Callable[[Event], None],
        fired: Callable[[Timer], None],
        tell: OutcomeListener,
    ) -> None:
        self._net = net
        self._mqtt_publish = net.mqtt.publish
        self._topic = topic
        self._post = post
        self._fired = fired
        self._tell = tell
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._too_large = Repeats(log)  # a camera's every frame may be: not a line per job

    def publish(self, job_id: str, frame: bytes) -> Unsent | None:
        """A request larger than the broker takes (``PacketTooLarge``) is final: its job
        fails (a 4K camera's frames can be; the others go on)."""
        try:
            on_ack = functools.partial(self._post, Puback(job_id))
            self._mqtt_publish(self._topic, frame, on_ack=on_ack)
        except PacketTooLarge as exc:
            why = f"request not sent: {exc}"
            self._too_large("too large", f"offload: job {job_id} failed: {why}")
            return Unsent(why, final=True)
        except OffloadError as exc:
            log.warning("offload: job %s not published: %s", job_id, exc)
            return Unsent(str(exc))
        return None

    def start_timer(self, timer: Timer, delay_s: float) -> None:
        self._timers[timer] = self._net.loop.call_later(delay_s, self._fire, timer)

    def cancel_timer(self, timer: Timer) -> None:
        handle = self._timers.pop(timer, None)
        if handle is not None:
            handle.cancel()

    def tell(self, outcome: JobOutcome) -> None:
        self._tell(outcome)

    def _fire(self, timer: Timer) -> None:
        self._timers.pop(timer, None)
        self._fired(timer)
