"""The exhaustive scan of a frame by a person detector, and the de-duplication of the
people several looks find.

A detector of a fixed small input (MediaPipe's pose detector: 224 px) sees a whole CCTV
frame shrunk so far that most people in it are a few dozen pixels tall, which it misses;
its answer also depends on where a crop lies. ``scan`` looks the way the perception
benchmark's reference does (docs/perception.md, docs/benchmarks.md): the whole frame,
then 50%-overlapping tiles at the detector's input size (native resolution) and at 1.5x
(tiles of two thirds of it), one model run each (~100 on a 768x576 frame), the people
found suppressed together. serverd runs it for a hard example an edge offloads
(``regions: scan``), and the benchmark scores the edge's budget of five runs against it.

``dedupe`` is also how edged merges the detections of its planned regions: best first,
a detection that shows the same person as a better one (body boxes overlapping more than
the threshold, or hip centres within a quarter of the box: the model's boxes of one
person jump between crops) is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgefed.models.runner import ModelRunner
from edgefed.models.types import Box, Detection

MERGE_IOU = 0.5  # edged's ``perception.merge_iou`` by default


def same_person(a: Detection, b: Detection, iou_threshold: float) -> bool:
    """Two detections from overlapping regions that show one person."""
    ax1, ay1, ax2, ay2 = a.box
    bx1, by1, bx2, by2 = b.box
    ix = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    iy = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = ix * iy
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if union > 0 and inter / union > iou_threshold:
        return True
    if a.keypoints and b.keypoints:
        size = min(ax2 - ax1, bx2 - bx1)
        ratio = (ay2 - ay1) / max(by2 - by1, 1e-6)
        return math.dist(a.keypoints[0], b.keypoints[0]) < 0.25 * size and 0.6 < ratio < 1.67
    return False


def dedupe(dets: Sequence[Detection], iou_threshold: float) -> list[Detection]:
    """Best first; a detection that shows the same person as a better one is dropped."""
    kept: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if not any(same_person(d, k, iou_threshold) for k in kept if k.label == d.label):
            kept.append(d)
    return kept


def tiles(w: int, h: int, side: float, shift: float = 0.0) -> list[Box]:
    """Tiles of ``side`` with 50% overlap covering a w x h frame (last ones on the edge).
    ``shift`` moves the grid by that fraction of its stride (tiles kept inside the frame,
    and one at each top and left edge so the frame stays covered)."""
    side = min(side, w, h)

    def starts(length: int) -> list[float]:
        n = max(1, math.ceil((length - side) / (side / 2)) + 1)
        step = (length - side) / (n - 1) if n > 1 else 0.0
        grid = [i * step for i in range(n)]
        if not shift:
            return grid
        return sorted({0.0} | {min(s + shift * step, length - side) for s in grid})

    return [(x, y, x + side, y + side) for y in starts(h) for x in starts(w)]


def scan_regions(size: int, w: int, h: int, shift: float = 0.0) -> list[Box | None]:
    """The scan's looks at a w x h frame: the whole frame, then tiles at the detector's
    input ``size`` and at 1.5x (side ``size`` / 1.5), their grids moved by ``shift``."""
    return [None, *tiles(w, h, size, shift), *tiles(w, h, size / 1.5, shift)]


def look(
    runner: ModelRunner,
    image: np.ndarray,
    regions: Sequence[Box | None],
    merge_iou: float = MERGE_IOU,
) -> list[Detection]:
    """The people ``runner``'s detector finds in ``regions`` of ``image``, one run each (the
    runner's own merge, class-aware NMS on boxes, is not used), de-duplicated."""
    found: list[Detection] = []
    for region in regions:
        found += [r for r in runner.infer(image, [region]) if isinstance(r, Detection)]
    return dedupe(found, merge_iou)


def scan(
    runner: ModelRunner,
    image: np.ndarray,
    merge_iou: float = MERGE_IOU,
    shift: float = 0.0,
) -> list[Detection]:
    """The people ``runner``'s detector finds in ``image`` by the exhaustive scan."""
    h, w = image.shape[:2]
    return look(runner, image, scan_regions(runner.manifest.input.width, w, h, shift), merge_iou)
