"""MediaPipe SSD detectors (BlazeFace, BlazePose detector): anchors, sigmoid, box decode, NMS.

Anchors follow MediaPipe's SsdAnchorsCalculator with fixed anchor size (width and
height 1, offset 0.5): consecutive layers with the same stride share one feature map
and each of them adds ``anchors_per_cell`` anchors per cell. Raw rows are
(x_center, y_center, w, h, kx0, ky0, ...) in input pixels relative to the anchor
centre, divided by ``box_scale``; scores are logits (clipped to +-100, sigmoid).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from edgefed.images.manifest import InputSpec

from ..types import Detection, Result
from .base import Params, as_box, parse_params, pick_output, sigmoid
from .nms import nms, weighted_nms


class SsdParams(Params):
    strides: list[PositiveInt] = Field(min_length=1, description="Stride of each anchor layer")
    anchors_per_cell: int = Field(2, ge=1, description="Anchors per cell added by each layer")
    num_keypoints: int = Field(0, ge=0, description="Keypoints (x, y) after the 4 box values")
    score_threshold: float = Field(0.5, ge=0, le=1, description="Minimum detection score")
    iou_threshold: float = Field(0.3, gt=0, le=1, description="Suppression IoU")
    box_scale: float | None = Field(
        None,
        gt=0,
        description="Divisor of raw x and y values (MediaPipe's x/y/w/h_scale); default: "
        "the input width for x and the input height for y",
    )
    label: str = Field("object", description="Label of every detection (single-class models)")
    weighted: bool = Field(True, description="Weighted NMS (MediaPipe) instead of plain NMS")
    box_from_keypoints: tuple[int, int] | None = Field(
        None,
        description="Keypoints (centre, point on a circle) whose circle's bounding square "
        "replaces the raw box; BlazePose: [0, 1] gives the full-body box",
    )

    @model_validator(mode="after")
    def _keypoints_exist(self) -> SsdParams:
        if self.box_from_keypoints and max(self.box_from_keypoints) >= self.num_keypoints:
            raise ValueError("box_from_keypoints names a keypoint beyond num_keypoints")
        return self


def ssd_anchors(strides: Sequence[int], per_cell: int, width: int, height: int) -> np.ndarray:
    """(N, 2) anchor centres (x, y) normalised to the input, in MediaPipe's order."""
    centres: list[np.ndarray] = []
    i = 0
    while i < len(strides):
        stride = strides[i]
        j = i
        while j < len(strides) and strides[j] == stride:
            j += 1
        fw, fh = math.ceil(width / stride), math.ceil(height / stride)
        ys, xs = np.meshgrid((np.arange(fh) + 0.5) / fh, (np.arange(fw) + 0.5) / fw, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cells, (j - i) * per_cell, axis=0))
        i = j
    return np.concatenate(centres).astype(np.float32)


class MediaPipeSsd:
    """Decoder for MediaPipe single-class SSD detectors with keypoints."""

    def __init__(self, params: SsdParams, spec: InputSpec) -> None:
        self.p = params
        self.iou_threshold: float | None = params.iou_threshold
        self.own_score_threshold = params.score_threshold
        self.score_threshold = params.score_threshold  # a tracker may lower it (perception)
        self.anchors = ssd_anchors(params.strides, params.anchors_per_cell, spec.width, spec.height)
        self.values = 4 + 2 * params.num_keypoints
        sx, sy = (params.box_scale,) * 2 if params.box_scale else (spec.width, spec.height)
        self.scale = np.array([sx, sy] * (self.values // 2), dtype=np.float64)
        self.size = np.array([spec.width, spec.height], dtype=np.float64)

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Result]:
        n = len(self.anchors)
        raw = pick_output(
            outputs, lambda v: v.size == n * self.values, f"box tensor of {n}x{self.values}"
        ).reshape(n, self.values)
        logits = pick_output(outputs, lambda v: v.size == n, f"score tensor of {n}").reshape(n)
        scores = sigmoid(logits.astype(np.float64))
        keep = scores >= self.score_threshold
        if not keep.any():
            return []
        rows, scores, anchors = raw[keep].astype(np.float64), scores[keep], self.anchors[keep]
        decoded = rows / self.scale
        decoded[:, 0:2] += anchors
        decoded[:, 4:] += np.tile(anchors, self.p.num_keypoints)
        cx, cy, w, h = decoded[:, 0], decoded[:, 1], decoded[:, 2], decoded[:, 3]
        coords = np.concatenate(
            [np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1), decoded[:, 4:]],
            axis=1,
        )
        # as MediaPipe does: suppress on the detector's own boxes, then derive body boxes
        if self.p.weighted:
            scores, coords = weighted_nms(coords, scores, self.p.iou_threshold)
        else:
            kept = nms(coords[:, :4], scores, self.p.iou_threshold)
            scores, coords = scores[kept], coords[kept]
        if self.p.box_from_keypoints is not None and len(coords):
            coords[:, :4] = self._circle_boxes(coords, *self.p.box_from_keypoints)
        return [
            Detection(
                label=self.p.label,
                score=float(s),
                box=as_box(c),
                keypoints=tuple(
                    (float(c[4 + 2 * k]), float(c[5 + 2 * k])) for k in range(self.p.num_keypoints)
                ),
            )
            for s, c in zip(scores, coords, strict=True)
        ]

    def _circle_boxes(self, coords: np.ndarray, centre: int, edge: int) -> np.ndarray:
        """Bounding squares of the keypoint circles (in pixels, so they stay square)."""
        c = coords[:, 4 + 2 * centre : 6 + 2 * centre] * self.size
        r = np.linalg.norm(coords[:, 4 + 2 * edge : 6 + 2 * edge] * self.size - c, axis=1)
        return np.concatenate([(c - r[:, None]) / self.size, (c + r[:, None]) / self.size], axis=1)


def build(params: Mapping[str, object], spec: InputSpec, labels: Sequence[str]) -> MediaPipeSsd:
    return MediaPipeSsd(parse_params(SsdParams, params, "mediapipe_ssd"), spec)
