"""bench int8-recipes' layer drift: real fp32 and INT8 tensors compared on the held-out photos."""

from __future__ import annotations

import math

import onnx

from bench.int8_recipes import IMAGE, WORST, layer_drift
from edgefed.images import quantize
from tests.support.paths import IMAGES_DIR


def test_layer_drift_lists_the_worst_tensors_of_the_real_model_lowest_first() -> None:
    # the default's fp32 island without its bias correction (most of the build's time):
    # what is measured here is the listing, not the recipe
    recipe = quantize.Recipe(fp32_leading_ops=quantize.DEFAULT_FP32_LEADING_OPS)
    drift = layer_drift(IMAGES_DIR / IMAGE, calibration=2, inputs=3, recipe=recipe)
    assert len(drift) == WORST
    values = list(drift.values())
    assert values == sorted(values)
    # INT8 tensors follow fp32 at some noise, not exactly (infinite) and not unrelated (~0 dB)
    assert all(math.isfinite(v) and 5.0 < v < 60.0 for v in values)
    model = onnx.load(str(IMAGES_DIR / IMAGE / "model.onnx"))
    outputs = {o for node in model.graph.node for o in node.output}
    assert set(drift) <= outputs | {o.name for o in model.graph.output}
