"""bench int8-recipes' layer drift: real fp32 and INT8 tensors compared on the held-out photos."""

from __future__ import annotations

import math

import onnx

from bench.int8_recipes import IMAGE, WORST, layer_drift
from tests.support.paths import IMAGES_DIR


def test_layer_drift_lists_the_worst_tensors_of_the_real_model_lowest_first() -> None:
    drift = layer_drift(IMAGES_DIR / IMAGE, calibration=2, inputs=3)
    assert len(drift) == WORST
    values = list(drift.values())
    assert values == sorted(values)
    # INT8 tensors follow fp32 at some noise, not exactly (infinite) and not unrelated (~0 dB)
    assert all(math.isfinite(v) and 5.0 < v < 60.0 for v in values)
    model = onnx.load(str(IMAGES_DIR / IMAGE / "model.onnx"))
    outputs = {o for node in model.graph.node for o in node.output}
    assert set(drift) <= outputs | {o.name for o in model.graph.output}
