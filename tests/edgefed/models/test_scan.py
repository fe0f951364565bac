"""The exhaustive scan (``edgefed.models.scan``): its tiles, its de-duplication, and what
it finds on a real frame of vtest.avi that the whole frame in one run does not."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import cv2
import numpy as np

from edgefed.models.runner import ModelRunner
from edgefed.models.scan import dedupe, scan, scan_regions, tiles
from edgefed.models.types import Detection
from tests.support.paths import VTEST


def person(cx: float, cy: float, side: float, score: float = 0.9) -> Detection:
    """A BlazePose-style body square with its hip keypoint at the centre."""
    h = side / 2
    return Detection("person", score, (cx - h, cy - h, cx + h, cy + h), ((cx, cy), (cx, cy - h)))


def test_one_person_seen_from_two_regions_is_one() -> None:
    a = person(300, 250, 100, 0.9)
    b = person(306, 247, 86, 0.8)  # the same hips, a smaller square from another crop
    assert dedupe([b, a], 0.5) == [a]


def test_two_people_side_by_side_stay_two() -> None:
    """Body squares of neighbours overlap a lot (IoU ~0.43); their hips are apart."""
    a, b = person(300, 250, 100), person(340, 250, 100, 0.8)
    assert len(dedupe([a, b], 0.5)) == 2


def test_scan_tiles_cover_the_frame_with_half_overlap() -> None:
    for side in (224.0, 224 / 1.5):
        grid = tiles(768, 576, side)
        for y in range(0, 576, 8):
            for x in range(0, 768, 8):
                assert any(t[0] <= x <= t[2] and t[1] <= y <= t[3] for t in grid)
        xs = sorted({t[0] for t in grid})
        assert all(b - a <= side / 2 + 1e-6 for a, b in itertools.pairwise(xs))


def test_a_shifted_grid_moves_the_tiles_by_half_a_stride_and_still_covers_the_frame() -> None:
    for side in (224.0, 224 / 1.5):
        grid, moved = tiles(768, 576, side), tiles(768, 576, side, 0.5)
        xs, moved_xs = sorted({t[0] for t in grid}), sorted({t[0] for t in moved})
        step = xs[1] - xs[0]
        assert moved_xs[0] == 0.0 and moved_xs[1] == step / 2  # the edge tile, then the shift
        assert moved_xs[-1] == xs[-1]  # the last one kept inside the frame
        assert len(moved) > len(grid)
        for y in range(0, 576, 8):
            for x in range(0, 768, 8):
                assert any(t[0] <= x <= t[2] and t[1] <= y <= t[3] for t in moved)


def test_scan_finds_the_people_a_whole_frame_run_misses_on_a_real_cctv_frame(
    runner: Callable[[str], ModelRunner],
) -> None:
    """vtest.avi's walkers are 60-120 px tall in a 768x576 frame: shrunk to the detector's
    224 px input they are a few dozen pixels and the whole-frame run finds almost none."""
    cap = cv2.VideoCapture(str(VTEST))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 200)
    ok, frame = cap.read()
    cap.release()
    assert ok
    detector = runner("pose_detector")
    whole = detector.infer(frame, [None])
    found = scan(detector, frame)
    assert len(scan_regions(224, 768, 576)) == 101  # the whole frame, 30 + 70 tiles
    assert len(found) >= len(whole) + 4
    assert all(d.score >= 0.5 for d in found)
    # one box a person: no two of them show the same one
    assert len(dedupe(found, 0.5)) == len(found)
    heights = np.array([d.box[3] - d.box[1] for d in found])
    assert np.median(heights) < 224  # people a whole-frame run shows under 70 px tall
