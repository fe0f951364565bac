"""Non-maximum suppression: plain, class-aware and MediaPipe's weighted variant (numpy)."""

from __future__ import annotations

import numpy as np


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box against an (N, 4) array."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None
) -> np.ndarray:
    """Indices of the boxes kept, best first; a box overlapping a better one by more than
    ``iou_threshold`` is dropped."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (limit is None or len(keep) < limit):
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_threshold: float,
    limit: int | None = None,
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(boxes.max() - boxes.min()) + 1.0
    shifted = boxes + (classes.astype(np.float64) * span)[:, None]
    return nms(shifted, scores, iou_threshold, limit)


def weighted_nms(
    coords: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED suppression over (N, 4 + extra) rows whose first 4 columns are
    a box: each kept row is the score-weighted mean of the rows it suppresses (itself
    included) and keeps its own score. Returns (scores, coords), best first."""
    order = np.argsort(-scores, kind="stable")
    out_scores: list[float] = []
    out_coords: list[np.ndarray] = []
    while order.size:
        best = int(order[0])
        overlap = iou(coords[best, :4], coords[order, :4]) > iou_threshold
        overlap[0] = True
        members = order[overlap]
        weights = scores[members]
        out_scores.append(float(scores[best]))
        out_coords.append((coords[members] * weights[:, None]).sum(axis=0) / weights.sum())
        order = order[~overlap]
    if not out_scores:
        return np.zeros(0), np.zeros((0, coords.shape[1]))
    return np.array(out_scores), np.stack(out_coords)
