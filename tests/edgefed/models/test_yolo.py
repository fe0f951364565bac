"""YOLO v5 and v8 layouts end to end: an ONNX graph with a known head output, the ONNX
Runtime driver, a signed image and ModelRunner, against hand-computed boxes after NMS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from drivers import registry
from edgefed.errors import ModelError
from edgefed.models.runner import ModelRunner, open_runner
from edgefed.models.types import Detection, Result
from tests.drivers.model_files import constant_output_onnx
from tests.edgefed.models.signed_images import make_image

LABELS = ["person", "car", "dog"]
INPUT = {"name": "images", "width": 64, "height": 64, "layout": "NCHW", "resize": "stretch"}
FRAME = np.zeros((128, 128, 3), np.uint8)  # twice the input size: boxes double

# candidates as (cx, cy, w, h) in input pixels with per-class scores
V8_ROWS = [
    [20, 20, 10, 10, 0.9, 0.0, 0.0],  # person, kept
    [21, 20, 10, 10, 0.8, 0.0, 0.0],  # person, IoU 0.82 with the first: suppressed
    [20, 20, 10, 10, 0.0, 0.7, 0.0],  # car on the same spot: other class, kept
    [40, 40, 10, 10, 0.0, 0.0, 0.1],  # dog below the score threshold
    [50, 50, 8, 8, 0.0, 0.0, 0.6],  # dog, kept
    [10, 50, 6, 6, 0.0, 0.0, 0.0],  # nothing
]
EXPECTED = [
    ("person", 0.9, (30.0, 30.0, 50.0, 50.0)),
    ("car", 0.7, (30.0, 30.0, 50.0, 50.0)),
    ("dog", 0.6, (92.0, 92.0, 108.0, 108.0)),
]


def yolo_runner(tmp_path: Path, head: np.ndarray, version: int) -> ModelRunner:
    model = constant_output_onnx(tmp_path / "head.onnx", head)
    image, key = make_image(
        tmp_path / f"yolo_v{version}",
        model,
        task="detection",
        driver="onnxruntime",
        input_spec=INPUT,
        decoder={"type": "yolo", "params": {"version": version, "iou_threshold": 0.45}},
        labels=LABELS,
    )
    driver = registry.create(registry.parse_config({"type": "onnxruntime"}))
    return open_runner(image.name, image, driver, None, [key])


def summary(results: Sequence[Result]) -> list[tuple[str, float, tuple[float, ...]]]:
    out = []
    for r in results:
        assert isinstance(r, Detection)
        out.append((r.label, round(r.score, 4), tuple(round(v, 3) for v in r.box)))
    return out


@pytest.mark.parametrize("transposed", [True, False], ids=["4+C_by_N", "N_by_4+C"])
def test_v8_layout(tmp_path: Path, transposed: bool) -> None:
    rows = np.array(V8_ROWS, np.float32)
    head = rows.T[None] if transposed else rows[None]
    runner = yolo_runner(tmp_path, head, 8)
    assert summary(runner.infer(FRAME, [None])) == EXPECTED


def test_v5_layout_multiplies_objectness(tmp_path: Path) -> None:
    rows = [
        [20, 20, 10, 10, 0.9, 1.0, 0.0, 0.0],  # person 0.9
        [21, 20, 10, 10, 0.9, 0.9, 0.0, 0.0],  # person 0.81, suppressed
        [20, 20, 10, 10, 0.875, 0.0, 0.8, 0.0],  # car 0.7
        [40, 40, 10, 10, 0.2, 0.0, 0.0, 1.0],  # dog 0.2: below 0.25
        [50, 50, 8, 8, 0.75, 0.0, 0.0, 0.8],  # dog 0.6
        [10, 50, 6, 6, 0.0, 0.9, 0.9, 0.9],  # no object
    ]
    runner = yolo_runner(tmp_path, np.array(rows, np.float32)[None], 5)
    assert summary(runner.infer(FRAME, [None])) == EXPECTED


def test_detections_of_overlapping_regions_are_merged(tmp_path: Path) -> None:
    runner = yolo_runner(tmp_path, np.array(V8_ROWS, np.float32).T[None], 8)
    merged = runner.infer(FRAME, [None, (0.0, 0.0, 128.0, 128.0)])
    assert summary(merged) == EXPECTED
    # the same head on a half-frame region lands at half the scale, offset by the region
    (first, *_) = runner.infer(FRAME, [(64.0, 0.0, 128.0, 64.0)])
    assert isinstance(first, Detection)
    assert first.box == pytest.approx((64 + 15, 15, 64 + 25, 25))


def test_head_without_class_scores_is_a_model_error(tmp_path: Path) -> None:
    runner = yolo_runner(tmp_path, np.zeros((1, 20, 5), np.float32), 5)
    with pytest.raises(ModelError, match=r"yolo v5 output \[1, 20, 5\] has no class scores"):
        runner.infer(FRAME, [None])


def test_a_head_that_gives_a_non_finite_box_is_a_model_error(tmp_path: Path) -> None:
    """A device that returns NaN in a kept candidate (a faulty NPU): the frame's answer is
    the model's error, never a box of NaN on to the tracker, the results and the wire."""
    rows = np.array(V8_ROWS, np.float32)
    rows[4, 2] = np.nan  # the dog's width
    runner = yolo_runner(tmp_path, rows.T[None], 8)
    with pytest.raises(ModelError, match="non-finite coordinates for Detection"):
        runner.infer(FRAME, [None])
