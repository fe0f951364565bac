"""Region planning: where the person detector looks on a gated frame, within a budget of runs.

A detector with a small square input (224 px for BlazePose's) finds a person well only
when the person is at least ``person_px`` tall in that input. A region is therefore
sized from the person it is for: side = person height x ``input / person_px`` (a small
far person is upscaled, never shrunk below what the detector handles), at least the
person plus a margin, at least ``input / max_upscale``.

What the planner is given each frame:

* the gate's motion boxes. Legs move more than heads, so a motion box is extended
  upward to the expected height of a person standing on its bottom edge (``SizeModel``,
  learned from past detections), covering the likely head the detector keys on;
* the tracker's objects (predicted boxes), moving or not: a tracked object keeps a
  region without needing new motion, with a priority that grows with the frames since
  it was last detected.

Targets are clustered only while the cluster's square stays no larger than the square
its smallest member allows (a cluster that would shrink its people is split, as
Frigate's ``get_cluster_candidates`` does), and a target wider than its square is cut
into overlapping squares. The budget (detector runs per frame) goes to the whole-frame
pass (large people), then to the clusters with the highest priority, keeping
``scan_runs`` for a scan over tiles at two scales: a grid sized for the expected person,
and one ``scan_coarse`` x larger that covers the frame in a few runs at a lower chance of
finding each person. Each cell of the frame holds the chance that it hides a person not
found yet; every region that looks at it lowers that chance by the detector's chance of
finding the person expected there at the region's scale, and it creeps back by
``rescan_rate`` a frame. The scan takes the tiles expected to find most, so people who
never move are found within a second or two and then kept by the tracker; a person
found small in a coarse tile gets a region at the detector's scale next.

Pure code: boxes are ``(x1, y1, x2, y2)`` in frame pixels.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edged.regions import square_around
from edgefed.models.types import Box


class PlannerConfig(BaseModel):
    """Settings of the region planner (``perception.planner`` in the config)."""

    model_config = ConfigDict(extra="forbid")

    budget: int = Field(
        5, ge=1, le=64, description="Detector runs per gated frame, whole-frame pass included"
    )
    whole_frame: bool = Field(True, description="Spend runs on the whole frame (large people)")
    whole_frame_every: int = Field(
        4,
        ge=1,
        description="While the people expected anywhere in the frame would be smaller than "
        "person_px in the whole frame's input, run the whole frame only every n-th frame",
    )
    person_px: float = Field(
        120.0,
        gt=8,
        description="Person height, in detector-input pixels, above which the detector finds "
        "people reliably: regions are sized to give each person at least this",
    )
    margin: float = Field(
        1.25, ge=1.0, le=3.0, description="A region is at least this x its object's longer side"
    )
    max_upscale: float = Field(
        2.5, ge=1.0, le=8.0, description="A region is at least detector input / this"
    )
    default_person_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Expected person height as a share of the frame height until people "
        "have been detected",
    )
    scan_runs: int = Field(
        1, ge=0, le=16, description="Runs per frame kept for the rotating grid of tiles"
    )
    scan_overlap: float = Field(0.25, ge=0, lt=0.9, description="Overlap of adjacent scan tiles")
    scan_coarse: float = Field(
        2.0,
        ge=1.0,
        le=4.0,
        description="The scan also has tiles this x larger (people smaller in the detector's "
        "input, found less often, but the frame covered in a few runs); 1: one scale only",
    )
    rescan_rate: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Per frame, the share of a looked-at area's chance of hiding an unfound "
        "person that comes back (people arrive or the detector missed them)",
    )
    motion_weight: float = Field(
        3.0, gt=0, description="Priority of motion no tracked object explains (a new person?)"
    )
    stale_weight: float = Field(
        0.3, ge=0, description="Priority a tracked object gains per frame it was not detected"
    )


@dataclass(frozen=True)
class TrackHint:
    """What the planner needs of a tracked object."""

    box: Box  # predicted box in this frame
    missed: int  # frames since it was last detected (0: detected on the previous frame)
    confirmed: bool = True
    region: Box | None = None  # the crop it was last detected in, moved with it


@dataclass(frozen=True)
class Plan:
    """The regions of one frame: ``None`` is the whole frame."""

    regions: list[Box | None]
    targets: list[Box]  # extended motion boxes and track boxes the regions were made for
    scan: list[Box]  # the scan tiles among the regions

    @property
    def crops(self) -> list[Box]:
        return [r for r in self.regions if r is not None]

    @property
    def targeted(self) -> list[Box]:
        """The crops made for targets (not the scan's tiles)."""
        return [r for r in self.crops if r not in self.scan]


class SizeModel:
    """Expected person height at a given foot row: a line fitted to recent detections."""

    def __init__(self, frame_height: float, default_share: float, window: int = 400) -> None:
        self.frame_height = frame_height
        self.default = frame_height * default_share
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None

    def add(self, box: Box) -> None:
        h = box[3] - box[1]
        if h > 4:
            self._samples.append((min(box[3], self.frame_height), h))
            self._fit = None

    def height_at(self, foot_y: float) -> float:
        """Expected height of a person whose feet are at ``foot_y``."""
        if len(self._samples) < 5:
            return self.default
        if self._fit is None:
            ys, hs = np.array(self._samples, dtype=np.float64).T
            if float(np.ptp(ys)) < 0.1 * self.frame_height:
                self._fit = (0.0, float(np.median(hs)))
            else:
                a, b = np.polyfit(ys, hs, 1)
                self._fit = (float(a), float(b))
        a, b = self._fit
        lo, hi = 0.03 * self.frame_height, self.frame_height
        return float(min(max(a * foot_y + b, lo), hi))


def detect_chance(px: np.ndarray) -> np.ndarray:
    """Share of people the detector finds at ``px`` tall in its input: ~0.1 at 40 px,
    ~0.3-0.9 at 60-120 px, 0.95 above (BlazePose's detector on CCTV people)."""
    return np.clip((px - 30.0) / 100.0, 0.05, 0.95)


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _centre(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _inter(a: Box, b: Box) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def covered(inner: Box, regions: Sequence[Box]) -> float:
    """Share of ``inner`` inside the best single region."""
    a = _area(inner)
    return max((_inter(inner, r) / a for r in regions), default=0.0) if a > 0 else 0.0


@dataclass
class _Target:
    box: Box
    person_h: float  # height of the smallest person in it
    weight: float
    region: Box | None = None


@dataclass
class _Cluster:
    members: list[_Target] = field(default_factory=list)

    @property
    def box(self) -> Box:
        out = self.members[0].box
        for m in self.members[1:]:
            out = _union(out, m.box)
        return out

    @property
    def weight(self) -> float:
        return sum(m.weight for m in self.members)


class RegionPlanner:
    """Plans one camera's regions frame by frame; holds the scan position and sizes."""

    def __init__(self, config: PlannerConfig, input_size: int, frame_shape: Sequence[int]) -> None:
        self.config = config
        self.input_size = input_size
        self.shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.frame_h, self.frame_w = float(frame_shape[0]), float(frame_shape[1])
        self.sizes = SizeModel(self.frame_h, config.default_person_share)
        # per cell of a coarse grid over the frame: the chance that it hides a person no
        # region has found yet (1: never looked at); a look at a scale where the detector
        # finds a share p of people leaves 1 - p of it
        self._unseen = np.ones((24, 32), dtype=np.float64)
        self._frames = 0

    def _large_people(self) -> bool:
        """Would the whole frame's input show the largest expected person well?"""
        largest = self.sizes.height_at(self.frame_h)
        return largest * self.input_size / max(self.frame_h, self.frame_w) >= self.config.person_px

    # -- sizing --------------------------------------------------------------------
    def max_side(self, person_h: float) -> float:
        """The largest square that keeps a person of ``person_h`` at ``person_px``."""
        c = self.config
        side = max(person_h * self.input_size / c.person_px, person_h * c.margin)
        return min(max(side, self.input_size / c.max_upscale), self.frame_h, self.frame_w)

    def extend_motion(self, box: Box) -> Box:
        """A motion box grown upward (and sideways) to a whole person standing on it."""
        x1, y1, x2, y2 = box
        h = self.sizes.height_at(y2)
        if y2 - y1 < h:
            y1 = max(0.0, y2 - h)
        min_w = 0.4 * h
        if x2 - x1 < min_w:
            cx = (x1 + x2) / 2
            x1, x2 = max(0.0, cx - min_w / 2), min(self.frame_w, cx + min_w / 2)
        return x1, y1, x2, y2

    # -- planning ------------------------------------------------------------------
    def plan(self, motion: Sequence[Box], tracks: Sequence[TrackHint] = ()) -> Plan:
        c = self.config
        targets = self._targets(motion, tracks)
        budget = c.budget
        regions: list[Box | None] = []
        self._frames += 1
        if c.whole_frame and (self._large_people() or self._frames % c.whole_frame_every == 1):
            regions.append(None)
            budget -= 1
        scan_keep = min(c.scan_runs, budget)
        chosen = self._choose(self._clusters(targets), budget - scan_keep)
        regions.extend(chosen)
        scan = self._scan(budget - len(chosen), chosen, whole=bool(regions))
        regions.extend(scan)
        return Plan(regions, [t.box for t in targets], scan)

    def _targets(self, motion: Sequence[Box], tracks: Sequence[TrackHint]) -> list[_Target]:
        c = self.config
        out = [_Target(t.box, t.box[3] - t.box[1], self._track_weight(t), t.region) for t in tracks]
        for m in motion:
            if _area(m) <= 0:
                continue
            ext = self.extend_motion(m)
            owner = max(out[: len(tracks)], key=lambda t: _inter(t.box, m), default=None)
            if owner is not None and _inter(owner.box, m) > 0.5 * _area(m):
                owner.box = _union(owner.box, m)  # a tracked person moving: cover the motion
                owner.weight += 1.0
                continue
            out.append(_Target(ext, self.sizes.height_at(ext[3]), c.motion_weight))
        return [piece for t in out for piece in self._split_wide(t)]

    def _track_weight(self, t: TrackHint) -> float:
        if not t.confirmed:
            return 0.5
        # a track detected on the last frame is carried by the tracker: a region for it
        # gains little; its claim grows with every frame it goes unseen
        return self.config.stale_weight * min(t.missed, 10)

    def _split_wide(self, t: _Target) -> list[_Target]:
        """A target wider (or taller) than its square allows, cut into overlapping pieces."""
        side = self.max_side(t.person_h)
        x1, y1, x2, y2 = t.box
        nx = max(1, math.ceil((x2 - x1) / (side * 0.8)))
        ny = max(1, math.ceil((y2 - y1) / (side * 0.9)))
        if nx == 1 and ny == 1:
            return [t]
        pw, ph = (x2 - x1) / nx, (y2 - y1) / ny
        return [
            _Target((x1 + i * pw, y1 + j * ph, x1 + (i + 1) * pw, y1 + (j + 1) * ph), t.person_h,
                    t.weight)
            for i in range(nx)
            for j in range(ny)
        ]  # fmt: skip

    def _fits(self, box: Box, person_h: float) -> bool:
        return max(box[2] - box[0], box[3] - box[1]) * self.config.margin <= self.max_side(person_h)

    def _clusters(self, targets: list[_Target]) -> list[_Cluster]:
        """Greedy clustering, heaviest first, while the square still suits every member."""
        todo = sorted(targets, key=lambda t: -t.weight)
        clusters: list[_Cluster] = []
        while todo:
            cl = _Cluster([todo.pop(0)])
            grown = True
            while grown:
                grown = False
                box = cl.box
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                todo.sort(key=lambda t: math.dist((cx, cy), _centre(t.box)))
                for i, t in enumerate(todo):
                    smallest = min([m.person_h for m in cl.members] + [t.person_h])
                    if self._fits(_union(box, t.box), smallest):
                        cl.members.append(todo.pop(i))
                        grown = True
                        break
            clusters.append(cl)
        return clusters

    def _square(self, cl: _Cluster) -> Box:
        (first, *rest) = cl.members
        smallest = min(m.person_h for m in cl.members)
        r = first.region
        if (
            not rest
            and r is not None
            and covered(first.box, [r]) > 0.99
            and smallest * self.input_size / (r[2] - r[0]) >= 0.5 * self.config.person_px
        ):
            return r  # the crop that found it finds it again (unless it showed them small)
        box = cl.box
        side = max(self.max_side(smallest), max(box[2] - box[0], box[3] - box[1]))
        return square_around(box, 1.0, self.shape, side)

    def _choose(self, clusters: list[_Cluster], n: int) -> list[Box]:
        ranked = sorted(clusters, key=lambda cl: -cl.weight)
        out: list[Box] = []
        for cl in ranked:
            if len(out) >= n:
                break
            sq = self._square(cl)
            if covered(cl.box, out) >= 0.95:
                continue  # already inside a chosen square
            out.append(sq)
        return out

    # -- scan --------------------------------------------------------------------------
    def scan_grid(self, scale: float = 1.0) -> list[Box]:
        """Overlapping tiles covering the frame, each sized for the person expected there
        (``scale`` x larger: the coarse grid)."""
        tiles: list[Box] = []
        y = 0.0
        while True:
            side = self.max_side(self.sizes.height_at(min(y + self.frame_h * 0.15, self.frame_h)))
            side = min(max(side, self.input_size / self.config.max_upscale) * scale, self.frame_h)
            y0 = min(y, self.frame_h - side)
            cols = max(
                1, math.ceil((self.frame_w - side) / (side * (1 - self.config.scan_overlap))) + 1
            )
            step = (self.frame_w - side) / (cols - 1) if cols > 1 else 0.0
            tiles.extend((i * step, y0, i * step + side, y0 + side) for i in range(cols))
            if y0 + side >= self.frame_h - 1e-6:
                return tiles
            y = y0 + side * (1 - self.config.scan_overlap)

    def _cells(self, box: Box) -> tuple[slice, slice]:
        rows, cols = self._unseen.shape
        return (
            slice(int(box[1] / self.frame_h * rows), math.ceil(box[3] / self.frame_h * rows)),
            slice(int(box[0] / self.frame_w * cols), math.ceil(box[2] / self.frame_w * cols)),
        )

    def _chance(self, region: Box, heights: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
        """The cells of ``region`` and the detector's chance there of finding the person
        expected in each cell's row."""
        cells = self._cells(region)
        side = max(region[2] - region[0], region[3] - region[1])
        return cells, detect_chance(heights[cells[0]] * self.input_size / side)[:, None]

    def _scan(self, n: int, taken: Sequence[Box], whole: bool) -> list[Box]:
        """Up to ``n`` tiles, fine or coarse, each the one expected to find most of the
        people not found yet: the chance a cell hides one x the detector's chance there
        (``taken``: the targets' regions; ``whole``: the whole frame runs too)."""
        rows = self._unseen.shape[0]
        feet = (np.arange(rows) + 1.0) * self.frame_h / rows
        heights = np.array([self.sizes.height_at(y) for y in feet])
        self._unseen += (1.0 - self._unseen) * self.config.rescan_rate

        def look(region: Box) -> None:
            cells, p = self._chance(region, heights)
            self._unseen[cells] *= 1.0 - p

        def gain(region: Box) -> float:
            cells, p = self._chance(region, heights)
            return float((self._unseen[cells] * p).sum())

        for r in [*taken, (0.0, 0.0, self.frame_w, self.frame_h)] if whole else taken:
            look(r)
        grid = self.scan_grid()
        if self.config.scan_coarse > 1.0:
            grid += [t for t in self.scan_grid(self.config.scan_coarse) if t not in grid]
        out: list[Box] = []
        for _ in range(n):
            free = [t for t in grid if covered(t, [*taken, *out]) < 0.7]
            best = max(free, key=gain, default=None)
            if best is None:
                break
            out.append(best)
            look(best)
        return out
