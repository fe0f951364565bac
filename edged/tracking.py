"""Multi-object tracking of person detections: ids, motion prediction, new/update/end.

A small SORT/ByteTrack-style tracker in numpy: each track predicts its box with a
constant velocity (smoothed, capped in time); detections are matched to predictions by
IoU (or, for small fast objects, by centre distance relative to size), best pairs first,
confident detections before weak ones. A detection nothing matches starts a tentative
track, confirmed after ``min_hits`` detections. A track that the detector *looked for*
(its predicted box inside a searched region) and did not find counts a miss; after
``max_misses`` misses, or ``max_age_s`` without any detection, it ends. Tracks that were
not looked for are carried unchanged: the region planner keeps regions around them.

Why not norfair or supervision (the issue's suggestions): norfair 2.3.0 requires
numpy < 2, which opencv-python 5 (numpy >= 2) excludes; supervision 0.31 pulls in
matplotlib, av, scipy and requests for a tracker of ~100 lines, on a daemon whose
memory budget with the demo models is 500 MB with ~10 MB headroom.

Pure code: no I/O; times are seconds from any monotonic clock.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefed.config import Seconds
from edgefed.models.types import Box, Detection


class TrackerConfig(BaseModel):
    """Settings of the person tracker (``perception.tracker`` in the config)."""

    model_config = ConfigDict(extra="forbid")

    match_iou: float = Field(0.2, gt=0, lt=1, description="Least IoU of a detection and a track")
    match_distance: float = Field(
        0.6,
        ge=0,
        description="Or: centre distance below this x the track's size (small, fast objects)",
    )
    high_score: float = Field(
        0.7, ge=0, le=1, description="Detections above this are matched first (ByteTrack)"
    )
    min_hits: int = Field(2, ge=1, description="Detections before a track is confirmed")
    max_misses: int = Field(
        4, ge=1, description="Searched frames without a detection before a track ends"
    )
    max_age_s: Seconds = Field(10.0, description="Seconds without a detection before it ends")
    velocity_smoothing: float = Field(
        0.5, gt=0, le=1, description="Weight of the newest velocity measurement"
    )
    appearance_weight: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Share of a match's affinity decided by appearance (colour histograms), "
        "when features are given: what keeps ids apart when people cross",
    )
    velocity_tolerance: float = Field(
        1.0,
        gt=0,
        description="A match implying a velocity this many box heights per second away from "
        "the track's own keeps e^-1 of its affinity (a walker does not turn back in a frame)",
    )
    min_similarity: float = Field(
        0.35, ge=0, le=1, description="Below this appearance similarity no match is made"
    )


@dataclass
class Track:
    """One object followed over frames."""

    id: int
    box: Box
    score: float
    first_ts: float
    last_ts: float  # last detection
    hits: int = 1
    misses: int = 0
    confirmed: bool = False
    velocity: tuple[float, float] = (0.0, 0.0)  # px/s of the centre
    best_score: float = 0.0  # quality of the best snapshot: score x sqrt(area)
    best_box: Box = (0.0, 0.0, 0.0, 0.0)
    best_ts: float = 0.0
    trail: list[tuple[float, float]] = field(default_factory=list)  # recent foot points
    region: Box | None = None  # the crop it was last detected in (None: unknown/whole)
    feature: np.ndarray | None = None  # appearance (normalised histogram), smoothed
    region_box: Box | None = None  # its box then

    def predict(self, ts: float) -> Box:
        dt = min(max(ts - self.last_ts, 0.0), 1.0)
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        x1, y1, x2, y2 = self.box
        return x1 + dx, y1 + dy, x2 + dx, y2 + dy

    @property
    def stationary(self) -> bool:
        """Moving less than a tenth of its height per second."""
        return math.hypot(*self.velocity) < 0.1 * max(self.box[3] - self.box[1], 1.0)

    @property
    def duration_s(self) -> float:
        return self.last_ts - self.first_ts


@dataclass(frozen=True)
class TrackerUpdate:
    """What one frame changed."""

    assigned: list[tuple[Detection, Track]]  # each detection with its track
    started: list[Track]  # tracks confirmed on this frame (object event "new")
    updated: list[Track]  # confirmed tracks detected on this frame (not new)
    ended: list[Track]  # confirmed tracks that ended (object event "end")
    improved: list[Track]  # tracks whose best snapshot is this frame's detection
    dropped: list[Track] = field(default_factory=list)  # tentative tracks that ended


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def appearance(image: np.ndarray, box: Box) -> np.ndarray | None:
    """A colour histogram of a person's torso and legs (hue x saturation, L1-normalised)."""
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    xa, xb = max(0, int(x1 + 0.3 * bw)), min(w, int(x2 - 0.3 * bw))
    ya, yb = max(0, int(y1 + 0.25 * bh)), min(h, int(y2 - 0.1 * bh))
    if xb - xa < 2 or yb - ya < 2:
        return None
    hsv = cv2.cvtColor(image[ya:yb, xa:xb], cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    total = float(hist.sum())
    return (hist / total).astype(np.float32) if total > 0 else None


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya coefficient of two normalised histograms: 1 same, 0 disjoint."""
    return float(np.sqrt(a * b).sum())


def _centre(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _inside(point: tuple[float, float], regions: Sequence[Box]) -> bool:
    return any(r[0] <= point[0] <= r[2] and r[1] <= point[1] <= r[3] for r in regions)


class Tracker:
    """Tracks of one camera. Not thread-safe: one caller updates it, frame by frame."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)

    def _affinity(self, track_box: Box, det_box: Box) -> float:
        overlap = iou(track_box, det_box)
        if overlap >= self.config.match_iou:
            return 1.0 + overlap
        size = max(track_box[2] - track_box[0], track_box[3] - track_box[1], 1.0)
        d = math.dist(_centre(track_box), _centre(det_box)) / size
        if d < self.config.match_distance:
            ratio = (det_box[3] - det_box[1]) / max(track_box[3] - track_box[1], 1.0)
            if 0.6 < ratio < 1.6:
                return 1.0 - d / max(self.config.match_distance, 1e-9)
        return 0.0

    def _consistency(self, track: Track, box: Box, ts: float) -> float:
        """How well the velocity a match implies agrees with the track's (1: fully)."""
        dt = ts - track.last_ts
        if track.hits < 3 or dt <= 0:
            return 1.0
        (ox, oy), (nx, ny) = _centre(track.box), _centre(box)
        dev = math.hypot((nx - ox) / dt - track.velocity[0], (ny - oy) / dt - track.velocity[1])
        height = max(track.box[3] - track.box[1], 1.0)
        return math.exp(-dev / (height * self.config.velocity_tolerance))

    def _match(
        self,
        dets: list[Detection],
        tracks: list[Track],
        ts: float,
        features: dict[int, np.ndarray],
    ) -> list[tuple[int, int]]:
        pairs = []
        predicted = [t.predict(ts) for t in tracks]
        w = self.config.appearance_weight
        for di, d in enumerate(dets):
            for ti, p in enumerate(predicted):
                a = self._affinity(p, d.box) * self._consistency(tracks[ti], d.box, ts)
                feature, track_feature = features.get(id(d)), tracks[ti].feature
                if a > 0 and feature is not None and track_feature is not None:
                    sim = similarity(feature, track_feature)
                    a = 0.0 if sim < self.config.min_similarity else a * (1 - w + w * sim)
                if a > 0:
                    pairs.append((a, di, ti))
        pairs.sort(reverse=True)
        used_d: set[int] = set()
        used_t: set[int] = set()
        out = []
        for _, di, ti in pairs:
            if di not in used_d and ti not in used_t:
                used_d.add(di)
                used_t.add(ti)
                out.append((di, ti))
        return out

    def update(
        self,
        detections: Sequence[Detection],
        ts: float,
        searched: Sequence[Box] | None = None,
        features: Sequence[np.ndarray | None] | None = None,
    ) -> TrackerUpdate:
        """Feed one frame's detections; ``searched``: regions looked at (None: everywhere);
        ``features``: an appearance vector per detection (``appearance``), or None."""
        c = self.config
        feats = {
            id(d): f
            for d, f in zip(detections, features or [None] * len(detections), strict=True)
            if f is not None
        }
        dets = sorted(detections, key=lambda d: -d.score)
        strong = [d for d in dets if d.score >= c.high_score]
        weak = [d for d in dets if d.score < c.high_score]
        assigned: list[tuple[Detection, Track]] = []
        started: list[Track] = []
        updated: list[Track] = []
        improved: list[Track] = []
        free = list(self.tracks)
        leftovers: list[Detection] = []
        for group in (strong, weak):
            matches = self._match(group, free, ts, feats)
            taken = {ti for _, ti in matches}
            for di, ti in matches:
                track = free[ti]
                self._hit(track, group[di], ts, feats.get(id(group[di])))
                assigned.append((group[di], track))
                if track.confirmed and track.hits == c.min_hits:
                    started.append(track)
                elif track.confirmed:
                    updated.append(track)
                if track.best_ts == ts:
                    improved.append(track)
            matched_d = {di for di, _ in matches}
            if group is strong:  # weak detections only extend tracks (ByteTrack)
                leftovers += [d for i, d in enumerate(group) if i not in matched_d]
            free = [t for i, t in enumerate(free) if i not in taken]
        for d in leftovers:
            track = Track(next(self._ids), d.box, d.score, ts, ts, feature=feats.get(id(d)))
            self._snapshot(track, d, ts)
            track.trail.append(((d.box[0] + d.box[2]) / 2, d.box[3]))
            track.confirmed = c.min_hits <= 1
            self.tracks.append(track)
            assigned.append((d, track))
            improved.append(track)
            if track.confirmed:
                started.append(track)
        ended: list[Track] = []
        for track in free:
            centre = _centre(track.predict(ts))
            if searched is None or _inside(centre, searched):
                track.misses += 1
            # a one-off detection is gone once missed; a still object's detector misses are
            # flicker more often than departure: it gets twice the misses of a moving one
            limit = (c.max_misses * (2 if track.stationary else 1)) if track.confirmed else 1
            if track.misses >= limit or ts - track.last_ts > c.max_age_s:
                ended.append(track)
        self.tracks = [t for t in self.tracks if t not in ended]
        return TrackerUpdate(
            assigned,
            started,
            updated,
            [t for t in ended if t.confirmed],
            improved,
            [t for t in ended if not t.confirmed],
        )

    def _hit(self, track: Track, det: Detection, ts: float, feature: np.ndarray | None) -> None:
        if feature is not None:
            old = track.feature
            track.feature = feature if old is None else 0.7 * old + 0.3 * feature
        dt = ts - track.last_ts
        if dt > 0:
            (ox, oy), (nx, ny) = _centre(track.box), _centre(det.box)
            a = self.config.velocity_smoothing
            vx, vy = (nx - ox) / dt, (ny - oy) / dt
            track.velocity = (
                a * vx + (1 - a) * track.velocity[0],
                a * vy + (1 - a) * track.velocity[1],
            )
        track.box = det.box
        track.score = det.score
        track.last_ts = ts
        track.hits += 1
        track.misses = 0
        if track.hits >= self.config.min_hits:
            track.confirmed = True
        track.trail.append(((det.box[0] + det.box[2]) / 2, det.box[3]))
        del track.trail[:-30]
        self._snapshot(track, det, ts)

    @staticmethod
    def _snapshot(track: Track, det: Detection, ts: float) -> None:
        b = det.box
        quality = det.score * math.sqrt(max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0))
        if quality > track.best_score:
            track.best_score, track.best_box, track.best_ts = quality, b, ts
