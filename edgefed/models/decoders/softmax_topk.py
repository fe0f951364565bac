"""Classifiers: the top-k classes of a score vector (softmax over logits unless disabled)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import Field

from edgefed.images.manifest import InputSpec

from ..types import Classification, Result
from .base import Params, label_of, parse_params, pick_output


class TopKParams(Params):
    k: int = Field(5, ge=1, description="Classes returned, best first")
    softmax: bool = Field(
        True, description="Apply softmax to the output (false when it already holds probabilities)"
    )


class SoftmaxTopK:
    """Decoder of a (1, C) score vector."""

    iou_threshold: float | None = None

    def __init__(self, params: TopKParams, labels: Sequence[str]) -> None:
        self.p = params
        self.labels = list(labels)

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Result]:
        scores = pick_output(outputs, lambda v: v.size > 1, "score vector").reshape(-1)
        scores = scores.astype(np.float64)
        if self.p.softmax:
            e = np.exp(scores - scores.max())
            scores = e / e.sum()
        k = min(self.p.k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        best = tuple((label_of(self.labels, int(i)), float(scores[i])) for i in top)
        return [Classification(top=best)]


def build(params: Mapping[str, object], spec: InputSpec, labels: Sequence[str]) -> SoftmaxTopK:
    return SoftmaxTopK(parse_params(TopKParams, params, "softmax_topk"), labels)
