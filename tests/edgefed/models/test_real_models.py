"""The built model images on real stills: person, pose, face, ImageNet class, text."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from edgefed.models.runner import ModelRunner, cascade_regions, landmark_region
from edgefed.models.types import Box, Classification, Detection, Landmarks, TextBox, result_to_dict

Still = Callable[[str], np.ndarray]
Runner = Callable[[str], ModelRunner]

NOSE, L_SHOULDER, R_SHOULDER, L_HIP, R_HIP, L_ANKLE, R_ANKLE = 0, 11, 12, 23, 24, 27, 28
NO_PEOPLE = ["fruits.jpg", "baboon.jpg"]  # checked by eye: no person anywhere in them


def inside(point: tuple[float, ...], box: Box, margin: float = 0.0) -> bool:
    return (
        box[0] - margin <= point[0] <= box[2] + margin
        and box[1] - margin <= point[1] <= box[3] + margin
    )


def one_person(runner: Runner, frame: np.ndarray) -> Detection:
    found = runner("pose_detector").infer(frame, [None])
    assert len(found) == 1, [result_to_dict(r) for r in found]
    (person,) = found
    assert isinstance(person, Detection)
    assert person.label == "person"
    assert person.score > 0.8
    return person


def pose_of(runner: Runner, frame: np.ndarray, person: Detection) -> Landmarks:
    region = landmark_region(person, frame_shape=frame.shape)
    found = runner("pose_landmarks").infer(frame, [region])
    assert len(found) == 1
    (pose,) = found
    assert isinstance(pose, Landmarks)
    assert pose.box == pytest.approx(region, abs=1.0)
    return pose


@pytest.mark.parametrize("name", ["basketball1.png", "messi5.jpg"])
def test_one_person_with_a_plausible_pose(name: str, runner: Runner, still: Still) -> None:
    frame = still(name)
    height, width = frame.shape[:2]
    person = one_person(runner, frame)
    x1, y1, x2, y2 = person.box
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert len(person.keypoints) == 4

    pose = pose_of(runner, frame, person)
    assert pose.presence > 0.9
    assert len(pose.points) == 33
    pts = pose.points
    side = pose.box[2] - pose.box[0]
    for p in pts:  # the expanded (landmark) box; a foot may poke out by a few pixels
        assert inside(p, pose.box, margin=0.05 * side)
    for i in (NOSE, L_SHOULDER, R_SHOULDER, L_HIP, R_HIP):
        assert inside(pts[i], person.box), i
        assert pts[i][3] > 0.9, f"landmark {i} should be visible"
    shoulders_y = (pts[L_SHOULDER][1] + pts[R_SHOULDER][1]) / 2
    hips_y = (pts[L_HIP][1] + pts[R_HIP][1]) / 2
    assert pts[NOSE][1] < shoulders_y < hips_y
    assert min(pts[L_ANKLE][1], pts[R_ANKLE][1]) > hips_y
    body_top = min(p[1] for p in pts)
    body_height = max(p[1] for p in pts) - body_top
    assert pts[NOSE][1] - body_top < 0.25 * body_height  # the nose is near the top


def test_detections_from_overlapping_regions_merge_into_one_person(
    runner: Runner, still: Still
) -> None:
    frame = still("basketball1.png")
    whole = one_person(runner, frame)
    found = runner("pose_detector").infer(frame, [None, (0.0, 0.0, 400.0, 480.0)])
    assert len(found) == 1
    assert isinstance(found[0], Detection)
    assert found[0].box == pytest.approx(whole.box, abs=25)


@pytest.mark.parametrize("name", NO_PEOPLE)
def test_no_person_on_stills_without_people(name: str, runner: Runner, still: Still) -> None:
    assert runner("pose_detector").infer(still(name), [None]) == []
    assert runner("pose_landmarks").infer(still(name), [None]) == []


@pytest.mark.parametrize("name", ["messi5.jpg", "basketball1.png"])
def test_face_found_on_the_head_of_the_pose(name: str, runner: Runner, still: Still) -> None:
    """The demo's cascade: person -> pose landmarks -> face detector on the pose's head."""
    frame = still(name)
    pose = pose_of(runner, frame, one_person(runner, frame))
    nose = pose.points[NOSE]
    head = cascade_regions([pose], frame.shape)
    assert len(head) == 1
    faces = runner("face_detector").infer(frame, head)
    assert faces
    best = max(faces, key=lambda f: f.score if isinstance(f, Detection) else 0.0)
    assert isinstance(best, Detection)
    assert best.label == "face"
    assert best.score > 0.6
    assert len(best.keypoints) == 6
    assert inside(nose, best.box)  # the face detector and the pose model agree


@pytest.mark.parametrize("name", ["fruits.jpg", "starry_night.jpg"])
def test_no_face_on_stills_without_one(name: str, runner: Runner, still: Still) -> None:
    assert runner("face_detector").infer(still(name), [None]) == []


@pytest.mark.parametrize(
    ("name", "label", "within"),
    [("messi5.jpg", "soccer ball", 5), ("squirrel_cls.jpg", "fox squirrel", 1)],
)
def test_imagenet_classifier(
    name: str, label: str, within: int, runner: Runner, still: Still
) -> None:
    (result,) = runner("efficientnet_lite0").infer(still(name), [None])
    assert isinstance(result, Classification)
    assert result.box is None
    labels = [lbl for lbl, _ in result.top]
    scores = [s for _, s in result.top]
    assert len(result.top) == 5
    assert label in labels[:within]
    assert scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1.0 + 1e-6


def test_text_lines_found_on_a_text_still_and_none_on_fruit(runner: Runner, still: Still) -> None:
    frame = still("imageTextN.png")
    height, width = frame.shape[:2]
    lines = runner("text_detector").infer(frame, [None])
    assert len(lines) >= 10
    for line in lines:
        assert isinstance(line, TextBox)
        x1, y1, x2, y2 = line.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert x2 - x1 > y2 - y1  # horizontal lines of text
        assert len(line.polygon) == 4
        assert line.score >= 0.5
    assert runner("text_detector").infer(still("fruits.jpg"), [None]) == []


def test_every_result_is_json_ready(runner: Runner, still: Still) -> None:
    frame = still("messi5.jpg")
    person = one_person(runner, frame)
    results = [
        person,
        pose_of(runner, frame, person),
        *runner("efficientnet_lite0").infer(frame, [None, person.box]),
        *runner("text_detector").infer(frame, [None]),
    ]
    decoded = json.loads(json.dumps([result_to_dict(r) for r in results]))
    assert [d["type"] for d in decoded[:4]] == [
        "detection",
        "landmarks",
        "classification",
        "classification",
    ]
    assert decoded[3]["box"] == [round(v, 1) for v in person.box]
