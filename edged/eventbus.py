"""edged's events and stats on MQTT topics that KubeEdge's EventBus forwards to the cloud.

Topics (``prefix`` defaults to ``{namespace}/user/edgefed``; ``{namespace}`` is the
namespace of the device id, or ``default`` for a single-segment id)::

    {prefix}/events/frame/{device}   completed-frame summaries, rate-limited (token bucket)
    {prefix}/events/stats/{device}   periodic stats (pipeline, MQTT, twin, ...)
    {prefix}/events/twin/{device}    device-twin outcomes: values applied, values rejected + why
    {prefix}/events/object/{device}  tracked objects: new / update / end with the best snapshot
    {prefix}/events/offload/{device} each offloaded job's outcome with the server's result

EdgeCore's EventBus subscribes to ``+/user/#`` and ``$hw/events/upload/#`` and hands
both to EdgeHub, which sends them to CloudCore. CloudCore's router delivers a message
only to a Rule whose eventbus RuleEndpoint lives in the namespace named by the topic's
first segment, with ``sourceResource.topic`` equal to the rest of the topic (exact
match, no wildcards): hence ``<namespace>/user/...`` by default. A prefix under
``$hw/events/upload/`` is forwarded too but no Rule can match it.

Payloads are small JSON objects (pydantic models below). Nothing is published while the
broker is unreachable: events are telemetry, and paho would otherwise queue them without
bound. Publish failures are counted, never raised into the pipeline.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edged.framejob import FrameJob
from edged.twin.kubeedge import split_device_id, twin_topics
from edgefed.clock import now_ms
from edgefed.config import Seconds
from edgefed.counters import Counters
from edgefed.errors import OffloadError
from edgefed.models.types import Classification, Detection
from edgefed.mqtt import MqttClient

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "{namespace}/user/edgefed"
DEFAULT_NAMESPACE = "default"
_TOPIC_LEVEL = re.compile(r"^[^+#\x00]+$")


class EventBusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Publish events and stats")
    prefix: str = Field(
        default=DEFAULT_PREFIX,
        description="Topic prefix; '{namespace}' is the device id's namespace or 'default'. "
        "Keep '<namespace>/user/...' for KubeEdge Rules to route the events",
    )
    frame_events_per_s: float = Field(
        default=1.0, ge=0, description="Average completed-frame summaries per second (0: none)"
    )
    frame_burst: int = Field(default=5, ge=1, description="Frame summaries allowed back to back")
    stats_interval_s: Seconds = Field(default=30.0, description="Seconds between stats messages")

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        levels = value.replace("{namespace}", "ns").split("/")
        if any(not level or not _TOPIC_LEVEL.match(level) for level in levels):
            raise ValueError("prefix must be '/'-separated topic levels without + # or NUL")
        return value


@dataclass(frozen=True)
class EventTopics:
    frame: str
    stats: str
    twin: str
    object: str
    offload: str


def event_topics(prefix: str, device_id: str) -> EventTopics:
    """The three topics of one device (``device_id`` is ``<name>`` or ``<ns>/<name>``)."""
    twin_topics(device_id)  # validates the id
    namespace, _ = split_device_id(device_id)
    base = prefix.replace("{namespace}", namespace or DEFAULT_NAMESPACE) + "/events"
    return EventTopics(
        frame=f"{base}/frame/{device_id}",
        stats=f"{base}/stats/{device_id}",
        twin=f"{base}/twin/{device_id}",
        object=f"{base}/object/{device_id}",
        offload=f"{base}/offload/{device_id}",
    )


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``allow()`` takes one if there is one."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(description="Device that sends the event")
    timestamp: int = Field(description="When the event was built (ms since epoch)")


class ModelSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(description="Results of this model on the frame")
    labels: dict[str, int] = Field(description="Detections per label / top-1 classes")
    top_score: float | None = Field(description="Best detection or classification score")


class FrameEvent(_Event):
    type: Literal["frame"] = Field(default="frame", description="Event discriminator")
    camera: str = Field(description="Camera name")
    frame: int = Field(description="Frame index of the camera")
    time: float = Field(description="Capture wall time (s since epoch)")
    motion_ratio: float = Field(description="Share of pixels that changed")
    models: dict[str, ModelSummary] = Field(description="What each model found")
    latency_ms: dict[str, float] = Field(description="Inference latency of each model")
    errors: dict[str, str] = Field(description="Models that failed on this frame, and why")
    dropped: list[str] = Field(description="Models that dropped this frame (queue full)")
    suppressed: int = Field(
        description="Completed frames not published since the previous frame event"
    )


class OffloadResultEvent(_Event):
    """An offloaded job closed (``edged.offload.outcomes``): the server's result, or why not."""

    type: Literal["offload_result"] = Field(
        default="offload_result", description="Event discriminator"
    )
    job_id: str = Field(description="Offload job id")
    camera: str | None = Field(description="Camera of the frame sent")
    frame: int | None = Field(description="Frame index of the camera")
    model: str = Field(description="Model the server was asked to run")
    status: str = Field(description="Exit (answered), Failed or Expired")
    served_by: str | None = Field(description="Server instance that answered (Exit only)")
    result: list[dict[str, Any]] | None = Field(description="The server's results (Exit only)")
    masked: int = Field(
        0, ge=0, description="The server's detections the camera's object masks dropped from result"
    )


class StatsEvent(_Event):
    type: Literal["stats"] = Field(default="stats", description="Event discriminator")
    stats: dict[str, Any] = Field(description="Status of the pipeline and the services")


def summarise_job(job: FrameJob) -> dict[str, ModelSummary]:
    """Counts, labels and best score per model: a frame event, not the full result list."""
    out: dict[str, ModelSummary] = {}
    for name, results in job.results.items():
        labels: dict[str, int] = {}
        scores: list[float] = []
        for r in results:
            if isinstance(r, Detection):
                labels[r.label] = labels.get(r.label, 0) + 1
                scores.append(r.score)
            elif isinstance(r, Classification) and r.top:
                label, score = r.top[0]
                labels[label] = labels.get(label, 0) + 1
                scores.append(score)
        top = round(max(scores), 4) if scores else None
        out[name] = ModelSummary(count=len(results), labels=labels, top_score=top)
    return out


def frame_event(job: FrameJob, device_id: str, suppressed: int, now_ms: int) -> FrameEvent:
    return FrameEvent(
        device_id=device_id,
        timestamp=now_ms,
        camera=job.frame.camera,
        frame=job.frame.index,
        time=round(job.frame.wall, 3),
        motion_ratio=round(job.gate.ratio, 5),
        models=summarise_job(job),
        latency_ms={k: round(v, 2) for k, v in job.latency_ms.items()},
        errors=dict(job.errors),
        dropped=list(job.dropped),
        suppressed=suppressed,
    )


@dataclass
class EventBusCounters(Counters):
    frames_published: int = 0
    frames_suppressed: int = 0
    stats_published: int = 0
    twin_published: int = 0
    objects_published: int = 0
    offload_published: int = 0
    skipped_offline: int = 0
    publish_errors: int = 0


class EventBus:
    """A frame sink plus a stats thread publishing on the EventBus topics of one device."""

    def __init__(
        self,
        config: EventBusConfig,
        client: MqttClient,
        device_id: str,
        stats: Callable[[], Mapping[str, Any]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.topics = event_topics(config.prefix, device_id)
        self.counters = EventBusCounters()
        self._client = client
        self._device_id = device_id
        self._stats = stats
        self._bucket = TokenBucket(config.frame_events_per_s, config.frame_burst, clock)
        self._lock = threading.Lock()
        self._suppressed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eventbus-stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __call__(self, job: FrameJob) -> None:
        """FrameSink: publish a summary of a completed frame if the rate limit allows."""
        if self.config.frame_events_per_s == 0 or not self._bucket.allow():
            with self._lock:
                self._suppressed += 1
                self.counters.frames_suppressed += 1
            return
        with self._lock:
            suppressed, self._suppressed = self._suppressed, 0
        event = frame_event(job, self._device_id, suppressed, now_ms())
        if self._publish(self.topics.frame, event):
            with self._lock:
                self.counters.frames_published += 1

    def publish_stats(self) -> None:
        """Publish one stats message now (the thread calls this every interval)."""
        event = StatsEvent(device_id=self._device_id, timestamp=now_ms(), stats=dict(self._stats()))
        if self._publish(self.topics.stats, event):
            with self._lock:
                self.counters.stats_published += 1

    def publish_twin(self, outcome: BaseModel) -> None:
        """Publish a device-twin outcome (``edged.twin.service.TwinOutcome``)."""
        if self._publish(self.topics.twin, outcome):
            with self._lock:
                self.counters.twin_published += 1

    def publish_object(self, event: BaseModel) -> None:
        """Publish an object event (``edged.events.ObjectEvent``); never rate-limited."""
        if self._publish(self.topics.object, event):
            with self._lock:
                self.counters.objects_published += 1

    def publish_offload_result(self, record: Mapping[str, Any]) -> None:
        """Publish an ``offload_result`` record (``edged.offload.outcomes.offload_record``)."""
        event = OffloadResultEvent.model_validate(
            {**record, "device_id": self._device_id, "timestamp": now_ms()}
        )
        if self._publish(self.topics.offload, event):
            with self._lock:
                self.counters.offload_published += 1

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"topics": self.topics.__dict__.copy(), **self.counters.as_dict()}

    def _publish(self, topic: str, event: BaseModel) -> bool:
        if not self._client.connected:
            with self._lock:
                self.counters.skipped_offline += 1
            return False
        payload = json.dumps(event.model_dump(mode="json"), separators=(",", ":")).encode()
        try:
            self._client.publish(topic, payload)
        except OffloadError as exc:
            with self._lock:
                self.counters.publish_errors += 1
            log.warning("eventbus: cannot publish on %s: %s", topic, exc)
            return False
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.config.stats_interval_s):
            try:
                self.publish_stats()
            except Exception:
                log.exception("eventbus: stats message failed")
