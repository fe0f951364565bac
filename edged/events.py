"""Object events: a tracked person's ``new`` / ``update`` / ``end``, with its best snapshot.

``ObjectEvents`` is a pipeline object listener (``Pipeline(object_listeners=...)``): for
each frame the tracker has seen it turns the ``TrackerUpdate`` into events, the way
Frigate users know them (``type`` new/update/end, the object's id, label, box, score,
start and end time, duration, and its best snapshot so far):

* ``new`` when a track is confirmed;
* ``update`` when a confirmed track's best snapshot improved, at most once per
  ``update_interval_s`` per track;
* ``end`` when the tracker ends a confirmed track.

The snapshot is a JPEG of the track's best detection (score x size), cut from the frame
it was seen in, sent base64-encoded in the event. Events are kept in a short log for
the status API and the dashboard and handed to ``publish`` (the EventBus, MQTT topic
``{prefix}/events/object/{device}``; see docs/perception.md).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edged.perception import crop_jpeg
from edged.tracking import Track, TrackerUpdate
from edgefed.outage import Outage

if TYPE_CHECKING:
    from edged.pipeline import FrameJob

log = logging.getLogger(__name__)

ENDED_KEPT = 1024
"""Ended tracks remembered per listener, so that a frame's update arriving after a later
frame's (several workers on the tracked detector) cannot revive one."""


class ObjectEvent(BaseModel):
    """One object event (the MQTT payload; the status API lists them without snapshot)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["new", "update", "end"] = Field(description="What happened to the object")
    device_id: str = Field(description="Device that sends the event")
    timestamp: int = Field(description="When the event was built (ms since epoch)")
    camera: str = Field(description="Camera name")
    track_id: int = Field(description="The object's id on this camera (the tracker's)")
    label: str = Field(description="Object class")
    score: float = Field(description="Best detection score of the object")
    box: list[float] = Field(description="Latest box, frame pixels (x1, y1, x2, y2)")
    start_time: float = Field(description="First detection, wall time (s since epoch)")
    end_time: float | None = Field(description="Last detection for 'end' events, else null")
    duration_s: float = Field(description="Seconds from the first to the latest detection")
    frame: int = Field(description="Frame index of the camera that produced the event")
    snapshot_jpeg: str | None = Field(
        description="Best snapshot so far (JPEG, base64); null when none could be cut"
    )


class ObjectEvents:
    """Pipeline object listener: builds, logs and publishes object events."""

    def __init__(
        self,
        device_id: str,
        publish: Callable[[ObjectEvent], None] | None = None,
        update_interval_s: float = 5.0,
        size: int = 200,
        label: str = "person",
    ) -> None:
        self.device_id = device_id
        self.publish = publish
        self.update_interval_s = update_interval_s
        self.label = label
        self._log: deque[dict[str, Any]] = deque(maxlen=size)
        self._snapshots: dict[tuple[str, int], bytes] = {}
        self._last_update: dict[tuple[str, int], float] = {}
        self._ended: dict[tuple[str, int], None] = {}  # the latest ENDED_KEPT, oldest first
        self._lock = threading.Lock()  # the state the status API reads
        self._publishing = Outage(log, "publishing object events")
        self._order = threading.Lock()
        self._counts = {"new": 0, "update": 0, "end": 0}

    def totals(self) -> dict[str, int]:
        """Events since start, by type."""
        with self._lock:
            return dict(self._counts)

    @property
    def snapshots_held(self) -> int:
        """Best snapshots kept: one per track alive, confirmed or not."""
        return len(self._snapshots)

    def __call__(self, job: FrameJob, update: TrackerUpdate) -> None:
        with self._order:  # one update at a time, its events published before the next's
            self._handle(job, update)

    def _handle(self, job: FrameJob, update: TrackerUpdate) -> None:
        camera = job.frame.camera
        crops = {t.id: crop_jpeg(job.frame.image, t.best_box) for t in update.improved}
        events: list[ObjectEvent] = []
        with self._lock:
            # with several workers on the tracked detector a frame's update can arrive
            # after a later frame's: what comes for a track after its end is ignored
            live = (*update.improved, *update.started, *update.updated)
            gone = {t.id for t in live if (camera, t.id) in self._ended}
            for track in update.improved:
                if track.id not in gone:
                    self._snapshots[(camera, track.id)] = crops[track.id]
            for track in update.started:
                if track.id not in gone:
                    events.append(self._event("new", job, track))
                    self._last_update[(camera, track.id)] = job.frame.ts
            for track in update.updated:
                key = (camera, track.id)
                if (
                    track.id not in gone
                    and track in update.improved
                    and job.frame.ts - self._last_update.get(key, 0.0) >= self.update_interval_s
                ):
                    events.append(self._event("update", job, track))
                    self._last_update[key] = job.frame.ts
            for track in update.ended:
                if (camera, track.id) not in self._ended:
                    events.append(self._event("end", job, track))
            for track in (*update.ended, *update.dropped):
                key = (camera, track.id)
                self._snapshots.pop(key, None)
                self._last_update.pop(key, None)
                self._ended[key] = None
                if len(self._ended) > ENDED_KEPT:
                    del self._ended[next(iter(self._ended))]
        for event in events:
            self._emit(event)

    def _event(self, kind: Literal["new", "update", "end"], job: FrameJob, t: Track) -> ObjectEvent:
        snap = self._snapshots.get((job.frame.camera, t.id), b"")
        wall = self._wall(job, t.first_ts)
        return ObjectEvent(
            type=kind,
            device_id=self.device_id,
            timestamp=time.time_ns() // 1_000_000,
            camera=job.frame.camera,
            track_id=t.id,
            label=self.label,
            score=round(t.score, 4),
            box=[round(v, 1) for v in t.box],
            start_time=round(wall, 3),
            end_time=round(self._wall(job, t.last_ts), 3) if kind == "end" else None,
            duration_s=round(t.duration_s, 2),
            frame=job.frame.index,
            snapshot_jpeg=base64.b64encode(snap).decode() if snap else None,
        )

    @staticmethod
    def _wall(job: FrameJob, ts: float) -> float:
        """Wall time of a frame timestamp, from this frame's wall and monotonic times."""
        return job.frame.wall + (ts - job.frame.ts)

    def _emit(self, event: ObjectEvent) -> None:
        with self._lock:
            self._counts[event.type] += 1
            self._log.append(event.model_dump(exclude={"snapshot_jpeg"}))
        if self.publish is not None:
            with self._publishing.contained():  # telemetry never stops the pipeline
                self.publish(event)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest object events (without snapshots), oldest first."""
        with self._lock:
            return list(self._log)[-limit:]

    def snapshot(self, camera: str, track_id: int) -> bytes | None:
        """The best snapshot of a live track, if any."""
        with self._lock:
            return self._snapshots.get((camera, track_id))
