"""Perception of one camera: plan the detector's regions, merge its detections, track them.

``CameraPerception`` glues the pure parts together for the pipeline and the benchmark:
``plan`` (dispatcher thread, per gated frame) asks ``RegionPlanner`` where to look given
the motion boxes and the tracked objects; ``observe`` (the detector's worker thread)
feeds the detections to the ``Tracker`` and returns them with their ``track_id``. Both
take one lock, so the planner always sees a consistent set of tracks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edged.regionplan import Plan, PlannerConfig, RegionPlanner, TrackHint
from edged.tracking import Track, Tracker, TrackerConfig, TrackerUpdate, appearance
from edgefed.models.scan import MERGE_IOU, dedupe
from edgefed.models.types import Box, Detection, Landmarks, Result

log = logging.getLogger(__name__)


class PerceptionConfig(BaseModel):
    """Region planning and tracking for models with ``regions: planned``."""

    model_config = ConfigDict(extra="forbid")

    planner: PlannerConfig = Field(
        default_factory=PlannerConfig, description="Where the detector looks on a frame"
    )
    tracker: TrackerConfig = Field(
        default_factory=TrackerConfig, description="Person tracking (ids, new/update/end)"
    )
    track_score: float = Field(
        0.3,
        ge=0,
        le=1,
        description="The planned detector also reports detections from this score up; those "
        "below the model's own threshold only extend existing tracks (ByteTrack's "
        "low-score association), they never start or report a person on their own",
    )
    merge_iou: float = Field(
        MERGE_IOU,
        gt=0,
        le=1,
        description="Detections of one person from overlapping regions: body boxes overlapping "
        "more than this, or with hip centres within a quarter of the box, are one",
    )


class CameraPerception:
    """Planner + tracker of one camera; thread-safe between ``plan`` and ``observe``."""

    def __init__(
        self,
        config: PerceptionConfig,
        input_size: int,
        frame_shape: Sequence[int],
        report_score: float = 0.0,
        masks: Sequence[Sequence[tuple[float, float]]] = (),
    ) -> None:
        self.config = config
        # the camera's object_masks: detections whose foot point lies inside are dropped
        self.masks = [np.asarray(m, np.float32) for m in masks]
        self.report_score = report_score  # below it, a detection shows only as a track's
        self.planner = RegionPlanner(config.planner, input_size, frame_shape)
        self.tracker = Tracker(config.tracker)
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=32)  # times of the last planned frames
        self._gone: list[Track] = []  # tracks of the last frame size, ended by the next update

    def plan(self, motion: Sequence[Box], ts: float, frame_shape: Sequence[int]) -> Plan:
        """The regions for a frame of ``frame_shape``. A camera that comes back at another
        size (its stream profile changed) starts planning and tracking afresh: the planner's
        grid and sizes and the tracks' boxes belong to the old size, and its tracks end."""
        with self._lock:
            shape = (int(frame_shape[0]), int(frame_shape[1]))
            if shape != self.planner.shape:
                self._restart(shape)
            self._recent.append(ts)
            hints = [
                TrackHint(
                    t.predict(ts),
                    self._frames_since(t.last_ts, ts),
                    t.confirmed,
                    _moved(t.region, t.region_box, t.predict(ts), self.planner.shape),
                )
                for t in self.tracker.tracks
            ]
            return self.planner.plan(motion, hints)

    def _restart(self, shape: tuple[int, int]) -> None:
        (h0, w0), (h, w) = self.planner.shape, shape
        gone = self.tracker.tracks
        log.info(
            "perception: frames now %dx%d (were %dx%d): %d tracks end", w, h, w0, h0, len(gone)
        )
        self._gone += gone
        self.tracker.tracks = []  # ids go on: an id names one object per camera
        self.planner = RegionPlanner(self.config.planner, self.planner.input_size, shape)

    def _frames_since(self, last: float, ts: float) -> int:
        """Gated frames since ``last`` (the planner's unit of staleness)."""
        return sum(1 for t in self._recent if last < t <= ts)

    def observe(
        self,
        detections: Sequence[Detection],
        ts: float,
        plan: Plan | None,
        image: np.ndarray | None = None,
    ) -> tuple[list[Detection], TrackerUpdate]:
        """Merge, track and label this frame's detections with their ``track_id``
        (``image``: the frame, for the appearance that keeps crossing people apart)."""
        shape = self.planner.shape if image is None else image.shape[:2]  # the frame's own
        merged = [
            d
            for d in dedupe(detections, self.config.merge_iou)
            if not masked(d.box, self.masks, shape)
        ]
        strong = [d for d in merged if d.score >= self.report_score]
        searched = None if plan is None else plan.crops
        features = None if image is None else [appearance(image, d.box) for d in merged]
        with self._lock:
            if image is not None and image.shape[:2] != self.planner.shape:
                # planned before the frame size changed: its boxes fit no track now
                return strong, TrackerUpdate([], [], [], [], [])
            for d in strong:
                self.planner.sizes.add(d.box)
            update = self.tracker.update(merged, ts, searched, features)
            if self._gone:
                ended = [t for t in self._gone if t.confirmed]
                dropped = [t for t in self._gone if not t.confirmed]
                update = replace(
                    update, ended=[*ended, *update.ended], dropped=[*dropped, *update.dropped]
                )
                self._gone = []
            if plan is not None:
                for d, t in update.assigned:
                    t.region, t.region_box = _found_in(d.box, plan.crops), d.box
        ids = {id(d): t.id for d, t in update.assigned}
        kept = [d for d in merged if id(d) in ids or d.score >= self.report_score]
        return [replace(d, track_id=ids.get(id(d))) for d in kept], update

    def objects(self, ts: float | None = None) -> list[dict[str, Any]]:
        """The tracked objects, boxes predicted to ``ts`` (default: now)."""
        now = time.monotonic() if ts is None else ts
        with self._lock:
            return [
                {
                    "track_id": t.id,
                    "box": [round(v, 1) for v in t.predict(now)],
                    "score": round(t.score, 4),
                    "duration_s": round(t.duration_s, 2),
                    "since_detected_s": round(max(now - t.last_ts, 0.0), 3),
                    "confirmed": t.confirmed,
                    "trail": [[round(x, 1), round(y, 1)] for x, y in t.trail],
                }
                for t in self.tracker.tracks
            ]


def lower_threshold(decoder: object, track_score: float) -> float:
    """Let a detector's decoder report down to ``track_score``; returns its own threshold
    (detections below it only extend tracks). Decoders without a threshold: unchanged."""
    own = getattr(decoder, "own_score_threshold", None)
    if not isinstance(own, float):
        return 0.0
    decoder.score_threshold = min(track_score, own)  # type: ignore[attr-defined]
    return own


def assign_tracks(results: Sequence[Result], parents: Sequence[tuple[Box, int]]) -> list[Result]:
    """Cascade results labelled with the track of the parent box holding their centre."""
    out: list[Result] = []
    for r in results:
        if not isinstance(r, Detection | Landmarks) or r.track_id is not None:
            out.append(r)
            continue
        cx, cy = (r.box[0] + r.box[2]) / 2, (r.box[1] + r.box[3]) / 2
        holding = [
            (math.dist((cx, cy), ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)), tid)
            for b, tid in parents
            if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]
        ]
        out.append(replace(r, track_id=min(holding)[1]) if holding else r)
    return out


def masked(box: Box, masks: Sequence[np.ndarray], shape: Sequence[int]) -> bool:
    """Whether ``box``'s foot point (the middle of its bottom edge) lies in one of
    ``masks``: polygons in shares of the width and height of a frame of ``shape``."""
    import cv2

    foot = ((box[0] + box[2]) / 2 / shape[1], box[3] / shape[0])
    return any(cv2.pointPolygonTest(m, foot, False) >= 0 for m in masks)


def _found_in(box: Box, crops: Sequence[Box]) -> Box | None:
    """The smallest crop holding ``box``'s centre (the one that saw it largest)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    holding = [r for r in crops if r[0] <= cx <= r[2] and r[1] <= cy <= r[3]]
    return min(holding, key=lambda r: r[2] - r[0], default=None)


def _moved(region: Box | None, then: Box | None, now: Box, shape: tuple[int, int]) -> Box | None:
    """``region`` shifted by the object's move from ``then`` to ``now``, kept in the frame."""
    if region is None or then is None:
        return None
    dx = (now[0] + now[2] - then[0] - then[2]) / 2
    dy = (now[1] + now[3] - then[1] - then[3]) / 2
    w, h = region[2] - region[0], region[3] - region[1]
    x1 = min(max(region[0] + dx, 0.0), max(shape[1] - w, 0.0))
    y1 = min(max(region[1] + dy, 0.0), max(shape[0] - h, 0.0))
    return x1, y1, x1 + w, y1 + h


def crop_jpeg(image: np.ndarray, box: Box, quality: int = 80, pad: float = 0.1) -> bytes:
    """A JPEG of ``box`` (padded) cut from a BGR frame: a track's snapshot."""
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    px, py = (x2 - x1) * pad, (y2 - y1) * pad
    xa, ya = max(0, int(x1 - px)), max(0, int(y1 - py))
    xb, yb = min(w, math.ceil(x2 + px)), min(h, math.ceil(y2 + py))
    if xb <= xa or yb <= ya:
        return b""
    ok, buf = cv2.imencode(".jpg", image[ya:yb, xa:xb], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else b""
