"""Decoders on synthetic outputs whose right answer is known."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from edgefed.errors import ImageError, ModelError
from edgefed.images.manifest import DecoderSpec, InputSpec
from edgefed.models.decoders import DECODERS, Decoder, build_decoder
from edgefed.models.decoders.mediapipe_ssd import ssd_anchors
from edgefed.models.types import Classification, Detection, Landmarks, TextBox

POSE_PARAMS = {"strides": [8, 16, 32, 32, 32], "num_keypoints": 4, "box_scale": 224}


def input_spec(width: int = 224, height: int = 224) -> InputSpec:
    return InputSpec(name="x", width=width, height=height, layout="NHWC")


def decoder(kind: str, params: dict[str, Any], labels: list[str] | None = None) -> Decoder:
    return build_decoder(DecoderSpec(type=kind, params=params), input_spec(), labels or [])


def test_registry_lists_the_agreed_decoders() -> None:
    assert set(DECODERS) == {"mediapipe_ssd", "pose_landmarks", "softmax_topk", "db_text", "yolo"}
    with pytest.raises(ImageError, match="unknown decoder 'ctc'"):
        decoder("ctc", {})


def test_ssd_anchors_match_mediapipe_counts_and_order() -> None:
    pose = ssd_anchors([8, 16, 32, 32, 32], 2, 224, 224)
    assert pose.shape == (2254, 2)  # 28*28*2 + 14*14*2 + 7*7*6
    assert pose[0] == pytest.approx([0.5 / 28, 0.5 / 28])
    assert pose[1] == pytest.approx(pose[0])  # two anchors per cell
    assert pose[2] == pytest.approx([1.5 / 28, 0.5 / 28])  # then the next cell along x
    assert pose[1568] == pytest.approx([0.5 / 14, 0.5 / 14])
    assert pose[1960:1966] == pytest.approx(np.tile([0.5 / 7, 0.5 / 7], (6, 1)))
    assert ssd_anchors([8, 16, 16, 16], 2, 128, 128).shape == (896, 2)  # BlazeFace


def ssd_outputs(rows: dict[int, tuple[float, list[float]]]) -> dict[str, np.ndarray]:
    """Outputs of a 4-keypoint pose detector: anchor index -> (logit, raw row)."""
    boxes = np.zeros((1, 2254, 12), np.float32)
    scores = np.full((1, 2254, 1), -20.0, np.float32)
    for index, (logit, row) in rows.items():
        scores[0, index, 0] = logit
        boxes[0, index] = row
    return {"scores_first": scores, "regressors": boxes}  # found by shape, not name or order


def test_ssd_decodes_box_score_and_keypoints_relative_to_the_anchor() -> None:
    anchor = ssd_anchors([8, 16, 32, 32, 32], 2, 224, 224)[100]
    row = [22.4, 0, 44.8, 22.4, 0, 0, 11.2, 0, 0, 11.2, 0, 0]  # input pixels / 224
    (det,) = decoder("mediapipe_ssd", POSE_PARAMS | {"label": "person"})(
        ssd_outputs({100: (2.0, row)})
    )
    assert isinstance(det, Detection)
    assert det.label == "person"
    assert det.score == pytest.approx(1 / (1 + np.exp(-2.0)))
    cx, cy = anchor[0] + 0.1, anchor[1]
    assert det.box == pytest.approx((cx - 0.1, cy - 0.05, cx + 0.1, cy + 0.05), abs=1e-6)
    assert det.keypoints[0] == pytest.approx(tuple(anchor), abs=1e-6)
    assert det.keypoints[1] == pytest.approx((anchor[0] + 0.05, anchor[1]), abs=1e-6)
    assert det.keypoints[2] == pytest.approx((anchor[0], anchor[1] + 0.05), abs=1e-6)


def test_ssd_weighted_nms_merges_overlaps_and_plain_nms_keeps_the_best() -> None:
    near = [0, 0, 44.8, 44.8] + [0.0] * 8
    shifted = [4.48, 0, 44.8, 44.8] + [0.0] * 8
    outputs = ssd_outputs({300: (3.0, near), 301: (3.0, shifted), 2000: (1000.0, near)})
    weighted = decoder("mediapipe_ssd", POSE_PARAMS)(outputs)
    assert len(weighted) == 2
    assert isinstance(weighted[0], Detection) and isinstance(weighted[1], Detection)
    assert weighted[0].score == 1.0  # the clipped logit 1000, no overflow
    # equal scores: the merged box sits half-way between the two
    anchor = ssd_anchors([8, 16, 32, 32, 32], 2, 224, 224)[300]
    assert (weighted[1].box[0] + weighted[1].box[2]) / 2 == pytest.approx(anchor[0] + 0.01)
    plain = decoder("mediapipe_ssd", POSE_PARAMS | {"weighted": False})(outputs)
    assert isinstance(plain[1], Detection)
    assert (plain[1].box[0] + plain[1].box[2]) / 2 == pytest.approx(anchor[0], abs=1e-6)


def test_ssd_box_from_keypoints_is_the_circle_bounding_square() -> None:
    row = [0, 0, 22.4, 22.4, 0, 0, 0, -44.8] + [0.0] * 4  # keypoint 1 is 0.2 above keypoint 0
    (det,) = decoder("mediapipe_ssd", POSE_PARAMS | {"box_from_keypoints": [0, 1]})(
        ssd_outputs({1000: (5.0, row)})
    )
    assert isinstance(det, Detection)
    x, y = det.keypoints[0]
    assert det.box == pytest.approx((x - 0.2, y - 0.2, x + 0.2, y + 0.2), abs=1e-6)


def test_ssd_suppresses_on_the_detectors_own_boxes_before_making_body_boxes() -> None:
    """MediaPipe's order: NMS on the raw (head) boxes, then the keypoint circles.

    Two detections of one head with different body circles (a tiny duplicate "person"
    and the real one) are one detection; two heads side by side whose body circles
    overlap (people close together) stay two.
    """
    params = POSE_PARAMS | {"box_from_keypoints": [0, 1], "weighted": False}
    head = [0, 0, 22.4, 22.4]
    big_body = [0, 0, 0, -44.8] + [0.0] * 4  # circle radius 0.2
    tiny_body = [0, 0, 0, -4.48] + [0.0] * 4  # circle radius 0.02, same head
    one_head = decoder("mediapipe_ssd", params)(
        ssd_outputs({1000: (5.0, head + big_body), 1001: (4.0, head + tiny_body)})
    )
    assert len(one_head) == 1
    assert isinstance(one_head[0], Detection)
    assert one_head[0].box[2] - one_head[0].box[0] == pytest.approx(0.4, abs=1e-6)
    # anchors 1000 and 1004 are two cells apart (1/14 of the input): heads do not overlap
    # (raw box 0.1 wide), the body circles (0.4 wide) overlap at IoU ~0.7
    two_heads = decoder("mediapipe_ssd", params)(
        ssd_outputs({1000: (5.0, head + big_body), 1004: (4.0, head + big_body)})
    )
    assert len(two_heads) == 2


def test_ssd_nothing_above_threshold_and_missing_outputs() -> None:
    ssd = decoder("mediapipe_ssd", POSE_PARAMS)
    assert ssd(ssd_outputs({})) == []
    with pytest.raises(ModelError, match=r"no box tensor of 2254x12 \(outputs: s\[1, 896, 1\]\)"):
        ssd({"s": np.zeros((1, 896, 1), np.float32)})


@pytest.mark.parametrize(
    ("params", "cause"),
    [
        ({"num_keypoints": 4}, "strides: Field required"),
        (POSE_PARAMS | {"strides": [8, 0]}, "strides.1: Input should be greater than 0"),
        (POSE_PARAMS | {"box_from_keypoints": [0, 4]}, "beyond num_keypoints"),
        (POSE_PARAMS | {"anchors": 2}, "anchors: Extra inputs are not permitted"),
    ],
)
def test_bad_params_are_one_line_image_errors(params: dict[str, Any], cause: str) -> None:
    with pytest.raises(ImageError) as err:
        decoder("mediapipe_ssd", params)
    assert str(err.value).startswith("decoder 'mediapipe_ssd': ")
    assert cause in str(err.value)
    assert "\n" not in str(err.value)


def landmark_outputs(presence: float) -> dict[str, np.ndarray]:
    raw = np.zeros((39, 5), np.float32)
    raw[:, 0] = np.arange(39) * 4  # x in input pixels
    raw[:, 1] = 112
    raw[:, 2] = -22.4
    raw[:, 3] = 3.0  # visibility logit
    return {
        "world": np.zeros((1, 117), np.float32),  # 39 x 3: not the landmark tensor
        "landmarks": raw.reshape(1, 195),
        "presence": np.array([[presence]], np.float32),
    }


def test_pose_landmarks_are_normalised_with_visibility() -> None:
    (pose,) = decoder("pose_landmarks", {})(landmark_outputs(0.97))
    assert isinstance(pose, Landmarks)
    assert pose.presence == pytest.approx(0.97)
    assert len(pose.points) == 33
    assert pose.points[7] == pytest.approx((28 / 224, 0.5, -0.1, 1 / (1 + np.exp(-3.0))))
    assert decoder("pose_landmarks", {})(landmark_outputs(0.2)) == []
    (few,) = decoder("pose_landmarks", {"num_landmarks": 5, "values_per_landmark": 5})(
        landmark_outputs(0.9)
    )
    assert isinstance(few, Landmarks) and len(few.points) == 5


def test_softmax_topk() -> None:
    logits = {"logits": np.log(np.array([[1, 4, 2, 3]], np.float32))}
    (top,) = decoder("softmax_topk", {"k": 3}, ["a", "b", "c"])(logits)
    assert isinstance(top, Classification)
    assert [label for label, _ in top.top] == ["b", "3", "c"]  # no label for class 3
    assert [s for _, s in top.top] == pytest.approx([0.4, 0.3, 0.2])
    probs = {"p": np.array([[0.1, 0.9]], np.float32)}
    (as_is,) = decoder("softmax_topk", {"k": 5, "softmax": False}, ["0", "180"])(probs)
    assert isinstance(as_is, Classification)
    assert [label for label, _ in as_is.top] == ["180", "0"]
    assert [s for _, s in as_is.top] == pytest.approx([0.9, 0.1])


def test_db_text_finds_the_rotated_line_and_grows_it_back() -> None:
    prob = np.zeros((100, 200), np.float32)
    line = ((100.0, 50.0), (120.0, 10.0), 10.0)  # centre, size, angle: a tilted text line
    cv2.fillPoly(prob, [np.round(cv2.boxPoints(line)).astype(np.int32)], 0.9)
    prob[5:7, 5:7] = 0.9  # a speck under min_size
    prob[80:95, 10:40] = 0.4  # above the pixel threshold, below the box threshold
    found = decoder("db_text", {"threshold": 0.3, "box_threshold": 0.5, "min_size": 3})(
        {"map": prob[None, None]}
    )
    assert len(found) == 1
    (text,) = found
    assert isinstance(text, TextBox)
    assert 0.75 < text.score <= 0.9  # mean inside the rectangle, edge pixels included
    assert len(text.polygon) == 4
    poly = np.array(text.polygon)
    assert int(np.argmin(poly.sum(axis=1))) == 0  # starts at the top-left corner
    shoelace = np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
    assert shoelace > 0  # clockwise on screen (y grows downwards)
    grow = 120 * 10 * 1.6 / (2 * 130)  # DBNet unclip distance
    w = (text.box[2] - text.box[0]) * 200
    expected = cv2.boxPoints(((100.0, 50.0), (120 + 2 * grow, 10 + 2 * grow), 10.0))
    assert w == pytest.approx(np.ptp(expected[:, 0]), abs=3)
    centre = np.mean(np.array(text.polygon) * [200, 100], axis=0)
    assert centre == pytest.approx([100, 50], abs=1.5)


def test_yolo_without_labels_takes_the_shorter_axis_as_values() -> None:
    rows = np.zeros((50, 6), np.float32)  # 50 candidates of (cx, cy, w, h, c0, c1)
    rows[7] = [112, 112, 22.4, 44.8, 0.1, 0.8]
    (det,) = decoder("yolo", {"version": 8})({"output0": rows.T[None]})
    assert isinstance(det, Detection)
    assert (det.label, det.score) == ("1", pytest.approx(0.8))
    assert det.box == pytest.approx((0.45, 0.4, 0.55, 0.6))
    normalized = rows.copy()
    normalized[7, :4] /= 224
    (same,) = decoder("yolo", {"version": 8, "normalized": True})({"o": normalized[None]})
    assert isinstance(same, Detection)
    assert same.box == pytest.approx(det.box)


def test_ssd_default_scale_is_per_axis_on_a_non_square_input() -> None:
    spec = input_spec(width=256, height=128)
    ssd = build_decoder(
        DecoderSpec(type="mediapipe_ssd", params={"strides": [16], "anchors_per_cell": 1}),
        spec,
        [],
    )
    anchors = ssd_anchors([16], 1, 256, 128)
    assert anchors.shape == (16 * 8, 2)
    boxes = np.zeros((1, 128, 4), np.float32)
    boxes[0, 5] = [25.6, 12.8, 51.2, 25.6]  # 0.1 and 0.2 of each side
    scores = np.full((1, 128, 1), -9.0, np.float32)
    scores[0, 5] = 4.0
    (det,) = ssd({"b": boxes, "s": scores})
    assert isinstance(det, Detection)
    cx, cy = anchors[5] + 0.1
    assert det.box == pytest.approx((cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1), abs=1e-6)
