"""DBNet text detection (PP-OCR det): probability map -> rotated text boxes.

The map is thresholded, each connected contour becomes its minimum-area rectangle,
scored by the mean probability inside it, and grown by DBNet's unclip distance
(area * unclip_ratio / perimeter) because the network predicts shrunk text regions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from pydantic import Field

from edgefed.images.manifest import InputSpec

from ..types import Result, TextBox
from .base import Params, parse_params, pick_output


class DbTextParams(Params):
    threshold: float = Field(0.3, gt=0, lt=1, description="Pixel probability of text")
    box_threshold: float = Field(0.5, ge=0, le=1, description="Minimum mean probability of a box")
    min_size: float = Field(
        3, ge=0, description="Shorter side (map pixels) below which a box is dropped"
    )
    unclip_ratio: float = Field(1.6, gt=0, description="How far shrunk regions are grown back")
    max_candidates: int = Field(1000, ge=1, description="Contours examined at most")


def _ordered(points: np.ndarray) -> np.ndarray:
    """Four corners clockwise (image axes) starting at the top-left one."""
    centre = points.mean(axis=0)
    angles = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])
    clockwise = points[np.argsort(angles)]
    start = int(np.argmin(clockwise.sum(axis=1)))
    return np.roll(clockwise, -start, axis=0)


class DbText:
    """Decoder of a (1, 1, H, W) text probability map."""

    iou_threshold: float | None = None

    def __init__(self, params: DbTextParams) -> None:
        self.p = params

    def _score(self, prob: np.ndarray, corners: np.ndarray) -> float:
        h, w = prob.shape
        x0, y0 = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, [w - 1, h - 1])
        x1, y1 = np.clip(np.ceil(corners.max(axis=0)).astype(int), 0, [w - 1, h - 1])
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
        cv2.fillPoly(mask, [np.round(corners - [x0, y0]).astype(np.int32)], 1)
        return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Result]:
        raw = pick_output(outputs, lambda v: v.ndim >= 2 and v.size > 1, "probability map")
        prob = np.ascontiguousarray(raw.reshape(raw.shape[-2:]), dtype=np.float32)
        h, w = prob.shape
        bitmap = (prob > self.p.threshold).astype(np.uint8)
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        results: list[Result] = []
        scale = np.array([w, h], dtype=np.float64)
        for contour in contours[: self.p.max_candidates]:
            centre, (rw, rh), angle = cv2.minAreaRect(contour)
            if min(rw, rh) < self.p.min_size:
                continue
            score = self._score(prob, cv2.boxPoints((centre, (rw, rh), angle)))
            if score < self.p.box_threshold:
                continue
            grow = rw * rh * self.p.unclip_ratio / (2 * (rw + rh))
            size = (rw + 2 * grow, rh + 2 * grow)
            if min(size) < self.p.min_size + 2:
                continue
            corners = _ordered(cv2.boxPoints((centre, size, angle)).astype(np.float64)) / scale
            lo = np.clip(corners.min(axis=0), 0, 1)
            hi = np.clip(corners.max(axis=0), 0, 1)
            results.append(
                TextBox(
                    box=(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
                    score=score,
                    polygon=tuple((float(x), float(y)) for x, y in corners),
                )
            )
        return results


def build(params: Mapping[str, object], spec: InputSpec, labels: Sequence[str]) -> DbText:
    return DbText(parse_params(DbTextParams, params, "db_text"))
