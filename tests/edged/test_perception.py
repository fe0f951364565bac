"""Merging detections across regions, cascades following tracks, plan -> observe cycle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edged.app import load_models
from edged.config import parse_config
from edged.perception import CameraPerception, PerceptionConfig, assign_tracks
from edgefed.models.types import Detection, Landmarks
from tests.support.configs import demo_config

FRAME = (576, 768, 3)


def person(cx: float, cy: float, side: float, score: float = 0.9) -> Detection:
    """A BlazePose-style body square with its hip keypoint at the centre."""
    h = side / 2
    return Detection("person", score, (cx - h, cy - h, cx + h, cy + h), ((cx, cy), (cx, cy - h)))


def test_cascade_results_take_the_track_of_the_parent_holding_them() -> None:
    parents = [((100.0, 100.0, 200.0, 200.0), 7), ((180.0, 100.0, 280.0, 200.0), 9)]
    pose_a = Landmarks((110, 110, 190, 190), 0.9, ())
    pose_b = Landmarks((200, 110, 270, 190), 0.9, ())
    face = Detection("face", 0.9, (500, 500, 520, 520))
    out = assign_tracks([pose_a, pose_b, face], parents)
    assert [getattr(r, "track_id", None) for r in out] == [7, 9, None]


def test_a_tracked_person_keeps_the_crop_that_found_them() -> None:
    perception = CameraPerception(PerceptionConfig(), 224, FRAME)
    plan = perception.plan([(300, 200, 340, 300)], 0.0, FRAME)
    crop = plan.targeted[0]
    found = person(320, 250, 90)
    for i in range(2):  # seen twice: a confirmed track
        tracked, _ = perception.observe([found], 0.1 * i, plan)
        assert tracked[0].track_id == 1
    plan = perception.plan([], 0.3, FRAME)  # no motion now: the track still gets its region
    assert crop in plan.targeted


def test_a_camera_back_at_another_size_plans_afresh_and_ends_its_tracks() -> None:
    perception = CameraPerception(PerceptionConfig(), 224, FRAME)
    plan = perception.plan([(600, 300, 640, 400)], 0.0, FRAME)
    for i in range(2):
        perception.observe([person(620, 350, 100)], 0.1 * i, plan, np.zeros(FRAME, np.uint8))
    small = (384, 512, 3)
    plan = perception.plan([(100, 100, 140, 180)], 0.3, small)
    assert plan.crops and all(r[2] <= 512 and r[3] <= 384 for r in plan.crops)
    # a frame planned before the change finishes: its boxes feed no track
    late, update = perception.observe(
        [person(620, 350, 100)], 0.25, None, np.zeros(FRAME, np.uint8)
    )
    assert [d.track_id for d in late] == [None] and update.ended == []
    # the first frame of the new size ends the old size's track (the "end" event)
    found, update = perception.observe([person(120, 150, 60)], 0.3, plan, np.zeros(small, np.uint8))
    assert [t.id for t in update.ended] == [1] and found[0].track_id == 2
    assert [o["track_id"] for o in perception.objects(0.3)] == [2]


def test_a_planned_model_that_is_no_detector_is_not_loaded_and_says_why(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["models"][0]["regions"] = "motion+full"
    raw["models"][3]["regions"] = "planned"  # the ImageNet classifier
    loaded = load_models(parse_config(raw, env={}))
    assert "scene" not in loaded.runners and {"person", "pose", "face"} <= set(loaded.runners)
    assert loaded.failures == {
        "scene": "regions: planned plans and tracks a detector's objects; image "
        "'efficientnet_lite0' is a classification model (use motion, full or motion+full)"
    }


def test_object_masks_drop_detections_standing_in_them_at_any_frame_size() -> None:
    # the lower-left quarter of the picture, in shares of the frame
    lawn = [(0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0)]
    perception = CameraPerception(PerceptionConfig(), 224, FRAME, masks=[lawn])
    plan = perception.plan([(100, 400, 200, 500)], 0.0, FRAME)
    on_lawn = person(150, 450, 100)  # feet at (150, 500): inside
    reaching_in = person(420, 280, 120)  # box reaches into the mask, feet at (420, 340): outside
    for i in range(2):
        found, _ = perception.observe([on_lawn, reaching_in], 0.1 * i, plan)
        assert [d.box for d in found] == [reaching_in.box]
    assert [t.box for t in perception.tracker.tracks] == [reaching_in.box]
    # the same share of a smaller picture (the stream's profile changed)
    small = (288, 384, 3)
    plan = perception.plan([(50, 200, 100, 250)], 0.3, small)
    found, _ = perception.observe(
        [person(75, 225, 50), person(300, 100, 60)], 0.3, plan, np.zeros(small, np.uint8)
    )
    assert [d.box for d in found] == [person(300, 100, 60).box]


def test_objects_say_how_long_a_track_has_been_carried_without_a_detection() -> None:
    perception = CameraPerception(PerceptionConfig(), 224, FRAME)
    plan = perception.plan([(300, 200, 340, 300)], 0.0, FRAME)
    for i in range(3):  # walking right at 100 px/s
        perception.observe([person(320 + 10 * i, 250, 90)], 0.1 * i, plan)
    (now,) = perception.objects(0.2)
    assert now["confirmed"] and now["since_detected_s"] == 0.0
    assert now["box"] == [295.0, 205.0, 385.0, 295.0]
    (later,) = perception.objects(0.5)  # not detected since: predicted along its velocity
    assert later["since_detected_s"] == 0.3
    assert later["box"][0] > now["box"][0] + 10 and later["box"][1] == now["box"][1]
