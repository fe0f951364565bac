"""Square crops around motion: where a detector looks on a gated frame.

CCTV people are small in a wide frame; a detector with a 224x224 input finds them
far better in a square crop around the motion than in the squashed whole frame.
``motion_regions`` turns the gate's motion boxes into at most ``max_regions``
padded squares that do not overlap, clipped to the frame, largest first. Pure
functions: boxes are ``(x1, y1, x2, y2)`` in full-frame pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgefed.models.types import Box


def _fit(lo: float, side: float, limit: float) -> tuple[float, float]:
    """Slide ``[lo, lo + side]`` inside ``[0, limit]``; clip it when it is longer."""
    if side >= limit:
        return 0.0, float(limit)
    lo = min(max(lo, 0.0), limit - side)
    return lo, lo + side


def square_around(box: Box, scale: float, frame_shape: Sequence[int], min_side: float = 0.0) -> Box:
    """The square centred on ``box`` with side ``max(w, h) * scale`` (at least ``min_side``).

    The square is slid (not shrunk) to lie inside the frame; only a side longer than
    the frame's height or width is clipped, so the result is square unless the frame
    is too small for it.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    fh, fw = float(frame_shape[0]), float(frame_shape[1])
    x1, y1, x2, y2 = box
    side = max(max(x2 - x1, y2 - y1) * scale, min_side, 1.0)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, right = _fit(cx - side / 2.0, side, fw)
    top, bottom = _fit(cy - side / 2.0, side, fh)
    return left, top, right, bottom


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def motion_regions(
    boxes: Sequence[Box],
    frame_shape: Sequence[int],
    pad: float = 0.25,
    min_side: float = 96.0,
    max_regions: int = 4,
) -> list[Box]:
    """Square crops around motion boxes, merged when they overlap, largest first.

    Each box grows by ``pad`` of its longer side on every side (``pad=0.25`` gives a
    square 1.5x the box) and to at least ``min_side`` pixels. Overlapping squares are
    replaced by the square around their union until none overlap; if more than
    ``max_regions`` remain, the pair whose merged square is smallest is merged until
    they fit, so no motion is ever dropped.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if max_regions < 1:
        raise ValueError(f"max_regions must be >= 1, got {max_regions}")
    scale = 1.0 + 2.0 * pad
    squares = [square_around(b, scale, frame_shape, min_side) for b in boxes if _area(b) > 0]
    squares = _merge_overlapping(squares, frame_shape, min_side)
    while len(squares) > max_regions:
        squares = _merge_closest(squares, frame_shape, min_side)
        squares = _merge_overlapping(squares, frame_shape, min_side)
    squares.sort(key=_area, reverse=True)
    return squares


def _merge_overlapping(
    squares: list[Box], frame_shape: Sequence[int], min_side: float
) -> list[Box]:
    out = list(squares)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                if _overlap(out[i], out[j]):
                    joined = square_around(_union(out[i], out[j]), 1.0, frame_shape, min_side)
                    out = [s for k, s in enumerate(out) if k not in (i, j)] + [joined]
                    merged = True
                    break
            if merged:
                break
    return out


def _merge_closest(squares: list[Box], frame_shape: Sequence[int], min_side: float) -> list[Box]:
    best: tuple[float, int, int, Box] | None = None
    for i in range(len(squares)):
        for j in range(i + 1, len(squares)):
            joined = square_around(_union(squares[i], squares[j]), 1.0, frame_shape, min_side)
            if best is None or _area(joined) < best[0]:
                best = (_area(joined), i, j, joined)
    if best is None:
        return squares
    _, i, j, joined = best
    return [s for k, s in enumerate(squares) if k not in (i, j)] + [joined]
