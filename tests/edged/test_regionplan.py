"""Region planning on synthetic layouts (pure geometry, no model)."""

from __future__ import annotations

import pytest

from edged.regionplan import PlannerConfig, RegionPlanner, TrackHint, covered
from edgefed.models.types import Box

FRAME = (576, 768, 3)
INPUT = 224


def planner(**overrides: object) -> RegionPlanner:
    return RegionPlanner(PlannerConfig.model_validate(overrides), INPUT, FRAME)


def person(cx: float, foot: float, h: float) -> Box:
    return cx - 0.3 * h, foot - h, cx + 0.3 * h, foot


def scale_in_input(region: Box, box: Box) -> float:
    """Height of ``box`` in detector-input pixels when ``region`` is resized to the input."""
    return (box[3] - box[1]) * INPUT / (region[2] - region[0])


def holding(regions: list[Box], box: Box) -> list[Box]:
    return [r for r in regions if covered(box, [r]) >= 0.999]


def is_square_inside_frame(r: Box) -> bool:
    side = r[2] - r[0]
    return (
        abs((r[3] - r[1]) - side) < 1e-6
        and r[0] >= 0
        and r[1] >= 0
        and r[2] <= FRAME[1] + 1e-6
        and r[3] <= FRAME[0] + 1e-6
    )


def test_people_far_apart_get_a_region_each_at_the_detectors_scale() -> None:
    p = planner(scan_runs=0)
    a, b = person(100, 300, 90), person(650, 500, 90)
    plan = p.plan([], [TrackHint(a, 0), TrackHint(b, 0)])
    crops = plan.targeted
    assert None in plan.regions  # the whole-frame pass stays
    assert len(crops) == 2
    for box in (a, b):
        (r,) = holding(crops, box)
        assert scale_in_input(r, box) >= 120 - 1e-6  # never shrunk below person_px
        assert is_square_inside_frame(r)


def test_people_close_together_share_one_region() -> None:
    p = planner(scan_runs=0)
    a, b = person(300, 300, 80), person(340, 305, 80)
    plan = p.plan([], [TrackHint(a, 0), TrackHint(b, 0)])
    assert len(plan.targeted) == 1
    (r,) = plan.targeted
    assert holding([r], a) and holding([r], b)
    assert min(scale_in_input(r, a), scale_in_input(r, b)) >= 120 - 1e-6


def test_a_group_wider_than_one_square_allows_is_split_not_shrunk() -> None:
    """Six small walkers in a row: one square around all would make them ~40 px."""
    p = planner(scan_runs=0, budget=8)
    people = [person(150 + 90 * i, 350, 70) for i in range(6)]
    one_square = max(b[2] for b in people) - min(b[0] for b in people)
    assert 70 * INPUT / one_square < 60
    plan = p.plan([], [TrackHint(b, 0) for b in people])
    assert len(plan.targeted) >= 3
    for box in people:
        rs = holding(plan.targeted, box)
        assert rs, f"{box} not inside any region"
        assert max(scale_in_input(r, box) for r in rs) >= 120 - 1e-6


def test_motion_clusters_split_when_one_square_would_shrink_them() -> None:
    """Two motion blobs 400 px apart are not merged into one big square (old behaviour)."""
    p = planner(scan_runs=0, default_person_share=0.15)
    plan = p.plan([(100, 250, 140, 330), (520, 260, 560, 340)])
    assert len(plan.targeted) == 2
    assert all(r[2] - r[0] < 200 for r in plan.targeted)


def test_a_moving_body_is_extended_upward_to_its_head() -> None:
    """Only the legs moved: the region still holds the expected body above them."""
    p = planner(scan_runs=0, default_person_share=0.2)  # expected height 115 px
    legs = (300.0, 400.0, 330.0, 440.0)
    plan = p.plan([legs])
    (target,) = plan.targets
    assert target[3] == 440 and target[1] == pytest.approx(440 - 0.2 * 576)
    (r,) = plan.targeted
    assert covered(target, [r]) == pytest.approx(1.0)


def test_people_at_the_frame_edges_get_squares_inside_the_frame() -> None:
    p = planner(scan_runs=0, budget=6)
    corners = [person(20, 90, 80), person(750, 90, 80), person(20, 576, 80), person(750, 576, 80)]
    corners = [(max(b[0], 0), max(b[1], 0), min(b[2], 768), min(b[3], 576)) for b in corners]
    plan = p.plan([], [TrackHint(b, 0) for b in corners])
    assert len(plan.targeted) == 4
    for box in corners:
        (r,) = holding(plan.targeted, box)
        assert is_square_inside_frame(r)


def test_a_large_person_is_kept_whole_and_the_whole_frame_runs() -> None:
    p = planner(scan_runs=0)
    big = person(400, 560, 420)
    plan = p.plan([], [TrackHint(big, 0)])
    (r,) = plan.targeted
    assert holding([r], big)
    assert None in plan.regions


def test_a_small_far_person_is_upscaled_up_to_the_limit() -> None:
    p = planner(scan_runs=0, max_upscale=2.5)
    small = person(400, 200, 40)
    (r,) = p.plan([], [TrackHint(small, 0)]).targeted
    assert r[2] - r[0] == pytest.approx(max(40 * INPUT / 120, INPUT / 2.5))
    assert r[2] - r[0] < INPUT  # upscaled: the detector sees it larger than native


def test_the_budget_holds_and_goes_to_the_objects_not_seen_for_longest() -> None:
    p = planner(budget=3, scan_runs=0, whole_frame=False)
    fresh = [TrackHint(person(100 + 200 * i, 200, 80), 0) for i in range(3)]
    stale = TrackHint(person(300, 500, 80), 8)
    plan = p.plan([], [*fresh, stale])
    assert len(plan.regions) == 3
    assert holding(plan.targeted, stale.box)


def test_tracked_objects_keep_regions_without_motion() -> None:
    p = planner(scan_runs=0)
    still = person(500, 400, 90)
    plan = p.plan([], [TrackHint(still, 3)])
    assert holding(plan.targeted, still)


def points_in(tiles: list[Box], step: int = 16) -> set[tuple[int, int]]:
    return {
        (x, y)
        for y in range(0, 576, step)
        for x in range(0, 768, step)
        if any(t[0] <= x <= t[2] and t[1] <= y <= t[3] for t in tiles)
    }


def test_the_scan_sweeps_the_whole_frame_within_a_few_seconds() -> None:
    everywhere = points_in([(0, 0, 768, 576)])
    p = planner(budget=2, scan_runs=1)  # whole frame every 4th frame, else one spare run
    fine = p.scan_grid()
    assert len(fine) <= 30
    assert points_in(fine) == everywhere  # the grid covers every pixel of the frame
    seen: list[Box] = []
    for _ in range(10):  # at 10 gated frames/s: within a second, at the coarse scale
        plan = p.plan([])
        assert len(plan.regions) <= 2
        seen += plan.scan
    assert points_in(seen) == everywhere
    # at the default budget, at the detector's own scale too, within 2 s
    p = planner()
    seen = [t for _ in range(20) for t in p.plan([]).scan]
    assert points_in([t for t in seen if t in fine]) == everywhere


def test_the_first_frame_covers_most_of_the_frame_with_coarse_tiles() -> None:
    """Nothing found yet: larger tiles (people smaller in the input) cover more per run."""
    p = planner(budget=5, scan_runs=1)
    plan = p.plan([])
    assert len(plan.regions) == 5 and None in plan.regions
    assert any(t[2] - t[0] > 1.5 * max(f[2] - f[0] for f in p.scan_grid()) for t in plan.scan)
    assert len(points_in(plan.scan)) >= 0.9 * len(points_in([(0, 0, 768, 576)]))
    one_scale = planner(budget=5, scan_runs=1, scan_coarse=1.0).plan([])
    assert len(points_in(one_scale.scan)) < len(points_in(plan.scan))


def test_a_person_found_by_a_coarse_tile_gets_a_region_at_the_detectors_scale() -> None:
    p = planner(scan_runs=0, whole_frame=False)
    far = person(300, 300, 80)
    coarse = (100.0, 50.0, 530.0, 480.0)  # found there: 80 px -> 42 px in the input
    (r,) = p.plan([], [TrackHint(far, 1, True, coarse)]).targeted
    assert holding([r], far)
    assert scale_in_input(r, far) >= 120 - 1e-6
    near = (230.0, 190.0, 380.0, 340.0)  # found at native scale: the same crop again
    assert p.plan([], [TrackHint(far, 1, True, near)]).targeted == [near]


def test_the_size_model_learns_people_from_detections() -> None:
    p = planner()
    for foot in range(200, 560, 30):  # people grow towards the camera
        p.sizes.add((0, foot - foot / 4, 50, foot))
    assert p.sizes.height_at(200) == pytest.approx(50, rel=0.05)
    assert p.sizes.height_at(500) == pytest.approx(125, rel=0.05)
