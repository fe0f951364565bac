"""Landmark models on a crop (MediaPipe BlazePose landmarks and similar).

The landmark tensor holds ``values_per_landmark`` numbers per landmark:
x, y, z in input pixels (z scaled like x), then visibility and presence logits.
The first ``num_landmarks`` are kept (BlazePose appends auxiliary ROI points). The
object's presence is a one-value output (a probability); below
``presence_threshold`` the crop holds no object and nothing is returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import Field

from edgefed.images.manifest import InputSpec

from ..types import Landmarks, Result
from .base import Params, parse_params, pick_output, sigmoid


class LandmarkParams(Params):
    num_landmarks: int = Field(33, ge=1, description="Landmarks returned (the first N)")
    values_per_landmark: int = Field(
        5, ge=2, le=5, description="Values per landmark: x, y[, z[, visibility[, presence]]]"
    )
    presence_threshold: float = Field(
        0.5, ge=0, le=1, description="Minimum presence score of the object in the crop"
    )


class PoseLandmarks:
    """Decoder of a landmark tensor plus a presence score."""

    iou_threshold: float | None = None

    def __init__(self, params: LandmarkParams, spec: InputSpec) -> None:
        self.p = params
        self.size = np.array([spec.width, spec.height, spec.width], dtype=np.float64)

    def _fits(self, v: np.ndarray) -> bool:
        per = self.p.values_per_landmark
        return v.size > 1 and v.size % per == 0 and v.size // per >= self.p.num_landmarks

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Result]:
        presence = float(pick_output(outputs, lambda v: v.size == 1, "presence score").ravel()[0])
        if presence < self.p.presence_threshold:
            return []
        per, n = self.p.values_per_landmark, self.p.num_landmarks
        raw = pick_output(outputs, self._fits, f"landmark tensor of {n}x{per}")
        rows = raw.reshape(-1, per)[:n].astype(np.float64)
        xyz = np.zeros((n, 3))
        xyz[:, : min(per, 3)] = rows[:, : min(per, 3)]
        xyz /= self.size
        visibility = sigmoid(rows[:, 3]) if per >= 4 else np.ones(n)
        points = tuple(
            (float(p[0]), float(p[1]), float(p[2]), float(vis))
            for p, vis in zip(xyz, visibility, strict=True)
        )
        return [Landmarks(box=(0.0, 0.0, 1.0, 1.0), presence=presence, points=points)]


def build(params: Mapping[str, object], spec: InputSpec, labels: Sequence[str]) -> PoseLandmarks:
    return PoseLandmarks(parse_params(LandmarkParams, params, "pose_landmarks"), spec)
