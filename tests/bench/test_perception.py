"""bench perception's clip and oracle geometry: held out from the gating bench, full cover."""

from __future__ import annotations

import pytest

from bench._perception_score import (
    miss_causes,
    missed_after_found,
    persistent_recall,
    recall,
    reference_ids,
    score,
    shifted_oracle,
)
from bench.gating import parse_args as gating_args
from bench.perception import (
    clip,
    gating_starts,
    hog_boxes,
    parse_args,
    segments_for,
)
from tests.support.paths import VTEST


def test_the_perception_clip_shares_no_frame_with_the_gating_bench() -> None:
    args = gating_args([])
    gating = {
        s + i for s in gating_starts(795, args.segments, args.motion_frames)
        for i in range(args.motion_frames)
    }  # fmt: skip
    for count in (4, 8, 15):
        held_out = {s + i for s, n in segments_for("perception", 795, count) for i in range(n)}
        assert held_out and not held_out & gating
        assert max(held_out) < 795
    tuning = {s + i for s, n in segments_for("gating", 795, 16) for i in range(n)}
    assert tuning == gating


def test_a_video_too_short_for_a_stretch_is_a_clear_error() -> None:
    # 270 frames (Megamind.avi): the gating bench's segments overlap, no frame lies between
    with pytest.raises(SystemExit, match=r"270 frames, too few.*--stretch gating"):
        segments_for("perception", 270, 8)
    assert len(segments_for("gating", 270, 8)) == 8
    with pytest.raises(SystemExit, match="needs at least 25"):
        segments_for("gating", 10, 8)


def test_the_shifted_scan_is_scored_against_the_oracle_like_the_pipeline() -> None:
    """The oracle: a walker on frames 0-2 and a one-frame hit on frame 1. The second scan
    finds the walker on frames 0 and 2 and a box of its own on frame 1; the pipeline
    reports the walker on frame 0 only."""
    walker = [100.0, 100.0, 160.0, 250.0]
    hit = [500.0, 100.0, 560.0, 160.0]
    other = [300.0, 300.0, 360.0, 450.0]
    oracle = [[walker], [walker, hit], [walker]]
    second = [[walker], [other], [walker]]
    rids = reference_ids(oracle, [(0, 3)])
    box = (101.0, 99.0, 161.0, 251.0)
    out = shifted_oracle(oracle, second, rids, {0: ([box], [box], [1])})
    assert out == {
        "recall_vs_oracle": 0.5,  # 2 of the oracle's 4 people
        "recall_vs_persistent_oracle": round(2 / 3, 4),  # the walker's 3 frames
        "precision_vs_oracle": round(2 / 3, 4),  # its box of its own is on no oracle person
        "pipeline_recall": round(1 / 3, 4),  # of the second scan's 3 people
    }


def test_misses_are_told_apart_by_cause() -> None:
    """One segment of four frames, one oracle person standing still at (100..160, 100..250)."""
    person = [100.0, 100.0, 160.0, 250.0]
    refs = {"oracle": [[person], [person], [person], [person]]}
    segs = [(0, 4)]
    box = (100.0, 100.0, 160.0, 250.0)
    elsewhere = (500.0, 300.0, 700.0, 500.0)
    reported = {  # frame 0: nothing; 1: found; 2, 3: missed again
        0: ([], [], []),
        1: ([box], [box], [1]),
        2: ([], [], []),
        3: ([], [], []),
    }
    looked = {
        0: [elsewhere],  # not looked at yet
        1: [(80.0, 80.0, 300.0, 300.0)],
        2: [elsewhere],  # found before, now neither held by a region nor by a track
        3: [(0.0, 0.0, 768.0, 768.0)],  # only the whole frame: 150 px -> 44 px in the input
    }
    rids = reference_ids(refs["oracle"], segs)
    out = miss_causes(refs, reported, looked, segs, rids, 224)["miss_causes"]
    assert out == {
        "not_sent": 0,
        "region_missed": 0,
        "small_in_region": 1,
        "lost": 1,
        "not_yet": 1,
        "not_yet_in_first_5": 1,
    }
    looked[3] = [(50.0, 50.0, 274.0, 274.0)]  # native scale: the detector's own miss
    assert miss_causes(refs, reported, looked, segs, rids, 224)["miss_causes"]["region_missed"] == 1
    del looked[0]  # the gate did not pass frame 0
    assert miss_causes(refs, reported, looked, segs, rids, 224)["miss_causes"]["not_sent"] == 1


def test_persistent_recall_leaves_out_one_off_oracle_hits() -> None:
    """A person in all four frames (found in three) and a one-frame hit on frame 2."""
    person = [100.0, 100.0, 160.0, 250.0]
    ghost = [500.0, 100.0, 560.0, 160.0]
    oracle = [[person], [person], [person, ghost], [person]]
    rids = reference_ids(oracle, [(0, 4)])
    assert rids == [[1], [1], [1, 2], [1]]
    box = (101.0, 99.0, 161.0, 251.0)
    reported = {k: ([box], [box], [1]) for k in (0, 1, 3)}
    out = persistent_recall(oracle, rids, reported)
    assert out == {
        "oracle_one_frame_identities": 1,
        "persistent_oracle_people": 4,
        "recall_vs_persistent_oracle": 0.75,
    }


def test_misses_after_a_find_and_loose_identities_bridging_an_oracle_gap() -> None:
    """A person in frames 0-4 whom the oracle misses on frame 2, found on frame 0 only."""
    person = [100.0, 100.0, 160.0, 250.0]
    oracle = [[person], [person], [], [person], [person]]
    segs = [(0, 5)]
    strict = reference_ids(oracle, segs)
    loose = reference_ids(oracle, segs, link_iou=0.3, lookback=3)
    assert strict == [[1], [1], [], [2], [2]]  # the gap breaks the identity
    assert loose == [[1], [1], [], [1], [1]]
    box = (101.0, 99.0, 161.0, 251.0)
    reported = {0: ([box], [box], [1])}
    assert missed_after_found(oracle, strict, reported) == 1  # frame 1
    assert missed_after_found(oracle, loose, reported) == 3  # frames 1, 3 and 4
    assert missed_after_found(oracle, loose, {}) == 0  # never found: not a tracking loss


def test_a_scaled_clip_is_the_same_scene_at_another_resolution_for_hog_too() -> None:
    segs = [(100, 2)]
    plain = [f.image for f in clip(VTEST, segs, 1, 0)]
    big = [f.image for f in clip(VTEST, segs, 1, 0, 5 / 3)]
    assert [im.shape for im in big] == [(960, 1280, 3)] * 3
    assert [f.motion for f in clip(VTEST, segs, 1, 0, 5 / 3)] == [True, True, False]
    assert all(
        abs(float(b.mean()) - float(p.mean())) < 1.0 for b, p in zip(big, plain, strict=True)
    )
    # HOG sees the same frame resized: its people move with the scale
    (small,), (large,) = hog_boxes(VTEST, [100]), hog_boxes(VTEST, [100], 5 / 3)
    assert small and large
    widest = max(large, key=lambda b: b[2])
    assert widest[2] > 768  # a box of the 1280-wide frame, beyond the 768-wide one


def test_a_scale_that_is_not_positive_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--scale", "1.5"]).scale == 1.5
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit):
            parse_args(["--scale", bad])
        assert "--scale must be above 0 and finite" in capsys.readouterr().err


def test_the_score_counts_people_found_boxes_reported_and_hog_people_covered() -> None:
    person, other, nobody = [0, 0, 10, 20], [50, 0, 60, 20], (100.0, 100.0, 110.0, 120.0)
    refs = {"oracle": [[person, other], [person]], "hog": [[person], []], "oracle_ms": [40.0]}
    reported = {  # frame 0: one detection and a coasting track on nobody; frame 1: a track
        0: ([(0.0, 0.0, 10.0, 20.0)], [(0.0, 0.0, 10.0, 20.0), nobody], [1, 2]),
        1: ([], [(1.0, 0.0, 11.0, 20.0)], [1]),
    }
    out = score(refs, reported, [5, 5], [10.0, 10.0], 2, reference_ids(refs["oracle"], [(0, 2)]))
    assert (out["oracle_people"], out["found_people"]) == (3, 2)
    assert out["recall_vs_oracle"] == round(2 / 3, 4)
    assert out["detection_recall_vs_oracle"] == round(1 / 3, 4)
    assert out["precision_vs_oracle"] == round(2 / 3, 4)
    assert out["reported_per_frame"] == 1.5
    assert (out["hog_people"], out["hog_found"], out["hog_found_by_oracle"]) == (1, 1, 1)
    assert out["cost_ratio"] == 0.25 and out["id_switches"] == 0
    # the same frames without the coasting track (an unconfirmed one, say): one found of 3
    assert recall(refs["oracle"], {0: [(0.0, 0.0, 10.0, 20.0)]}) == round(1 / 3, 4)
    assert recall([[], []], {}) is None
