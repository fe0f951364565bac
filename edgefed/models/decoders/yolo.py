"""YOLO detectors exported to ONNX/TFLite: v5 and v8 output layouts, class-aware NMS.

- v5: rows of (cx, cy, w, h, objectness, class scores...), score = objectness * class.
- v8 (also v9/v11): rows of (cx, cy, w, h, class scores...), no objectness.

Rows may come transposed (v8 exports give (1, 4 + C, N)): the axis of length
4 [+1] + len(labels) holds the values, else the shorter axis does (N >> C in practice).
Coordinates are input pixels unless ``normalized`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from edgefed.errors import ModelError
from edgefed.images.manifest import InputSpec

from ..types import Detection, Result
from .base import Params, as_box, label_of, parse_params, pick_output
from .nms import batched_nms


class YoloParams(Params):
    version: Literal[5, 8] = Field(description="Output layout: 5 (with objectness) or 8")
    score_threshold: float = Field(0.25, ge=0, le=1, description="Minimum detection score")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="Suppression IoU (per class)")
    max_detections: int = Field(300, ge=1, description="Detections kept at most")
    normalized: bool = Field(False, description="Box values are already 0..1, not input pixels")


class Yolo:
    """Decoder of one (1, N, 4 [+1] + C) or (1, 4 [+1] + C, N) output."""

    def __init__(self, params: YoloParams, spec: InputSpec, labels: Sequence[str]) -> None:
        self.p = params
        self.iou_threshold: float | None = params.iou_threshold
        self.labels = list(labels)
        self.head = 5 if params.version == 5 else 4
        self.size = (
            np.ones(4) if params.normalized else np.array([spec.width, spec.height] * 2, float)
        )

    def _rows(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        raw = pick_output(outputs, lambda v: v.ndim >= 2, "detection tensor")
        table = raw.reshape(raw.shape[-2], raw.shape[-1])
        width = self.head + len(self.labels)
        if (table.shape[0] == width and table.shape[1] != width) or (
            width not in table.shape and table.shape[0] < table.shape[1]
        ):
            table = table.T
        if table.shape[1] <= self.head:
            raise ModelError(f"yolo v{self.p.version} output {list(raw.shape)} has no class scores")
        return table.astype(np.float64)

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Result]:
        rows = self._rows(outputs)
        class_scores = rows[:, self.head :]
        classes = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), classes]
        if self.p.version == 5:
            scores = scores * rows[:, 4]
        keep = scores >= self.p.score_threshold
        if not keep.any():
            return []
        rows, scores, classes = rows[keep], scores[keep], classes[keep]
        cx, cy, w, h = (rows[:, :4] / self.size).T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        kept = batched_nms(boxes, scores, classes, self.p.iou_threshold, self.p.max_detections)
        return [
            Detection(
                label=label_of(self.labels, int(classes[i])),
                score=float(scores[i]),
                box=as_box(boxes[i]),
            )
            for i in kept
        ]


def build(params: Mapping[str, object], spec: InputSpec, labels: Sequence[str]) -> Yolo:
    return Yolo(parse_params(YoloParams, params, "yolo"), spec, labels)
