"""Non-maximum suppression variants on hand-made boxes."""

from __future__ import annotations

import numpy as np
import pytest

from edgefed.models.decoders.nms import batched_nms, iou, nms, weighted_nms

BOXES = np.array(
    [
        [0, 0, 10, 10],  # best
        [1, 0, 11, 10],  # IoU 9/11 with the best
        [20, 20, 30, 30],  # apart
        [0, 0, 10, 5],  # IoU 0.5 with the best
    ],
    dtype=np.float64,
)
SCORES = np.array([0.9, 0.8, 0.7, 0.6])


def test_iou() -> None:
    np.testing.assert_allclose(iou(BOXES[0], BOXES), [1.0, 9 / 11, 0.0, 0.5])
    assert iou(np.zeros(4), np.zeros((1, 4)))[0] == 0.0  # degenerate boxes do not divide by 0


def test_nms_keeps_the_best_of_each_cluster_in_score_order() -> None:
    assert nms(BOXES, SCORES, 0.6).tolist() == [0, 2, 3]
    assert nms(BOXES, SCORES, 0.4).tolist() == [0, 2]
    assert nms(BOXES, SCORES, 0.4, limit=1).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_boxes_of_different_classes_never_suppress_each_other() -> None:
    classes = np.array([0, 1, 0, 0])
    assert sorted(batched_nms(BOXES, SCORES, classes, 0.4).tolist()) == [0, 1, 2]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.4).tolist() == []


def test_weighted_nms_averages_the_suppressed_boxes_and_keypoints() -> None:
    coords = np.array(
        [[0, 0, 10, 10, 5, 5], [2, 0, 12, 10, 7, 5], [50, 50, 60, 60, 55, 55]],
        dtype=np.float64,
    )
    scores, merged = weighted_nms(coords, np.array([0.75, 0.25, 0.5]), 0.3)
    assert scores.tolist() == [0.75, 0.5]
    assert merged[0] == pytest.approx([0.5, 0, 10.5, 10, 5.5, 5])
    assert merged[1] == pytest.approx(coords[2])
    empty_scores, empty = weighted_nms(np.zeros((0, 6)), np.zeros(0), 0.3)
    assert empty_scores.size == 0 and empty.shape == (0, 6)
