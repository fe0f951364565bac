"""Square crops around motion boxes (pure geometry)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edged.regions import motion_regions, square_around

FRAME = (576, 768, 3)


def side(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return box[2] - box[0], box[3] - box[1]


def contains(outer: tuple[float, ...], inner: tuple[float, ...]) -> bool:
    return (
        outer[0] <= inner[0] + 1e-9
        and outer[1] <= inner[1] + 1e-9
        and outer[2] >= inner[2] - 1e-9
        and outer[3] >= inner[3] - 1e-9
    )


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_square_around_is_centred_and_scaled() -> None:
    sq = square_around((300, 200, 340, 300), 1.5, FRAME)
    assert side(sq) == (150, 150)
    assert ((sq[0] + sq[2]) / 2, (sq[1] + sq[3]) / 2) == (320, 250)


def test_square_around_slides_inside_the_frame_instead_of_shrinking() -> None:
    sq = square_around((0, 0, 40, 40), 2.0, FRAME)
    assert sq == (0, 0, 80, 80)
    sq = square_around((740, 540, 768, 576), 1.0, FRAME, min_side=96)
    assert sq == (672, 480, 768, 576)


def test_square_around_clips_only_when_the_frame_is_too_small() -> None:
    sq = square_around((100, 100, 700, 200), 1.5, FRAME)
    assert sq[1] == 0 and sq[3] == 576  # 900 px side does not fit 576 rows
    assert sq[0] == 0 and sq[2] == 768


def test_square_around_rejects_a_bad_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        square_around((0, 0, 10, 10), 0, FRAME)


def test_small_boxes_get_the_minimum_side() -> None:
    (region,) = motion_regions([(400, 300, 410, 320)], FRAME)
    assert side(region) == (96, 96)
    assert contains(region, (400, 300, 410, 320))


def test_padding_grows_the_longer_side() -> None:
    (region,) = motion_regions([(300, 100, 340, 300)], FRAME, pad=0.25)
    assert side(region) == (300, 300)  # 200 * (1 + 2 * 0.25)


def test_overlapping_squares_merge_into_one_that_covers_both() -> None:
    boxes = [(300, 200, 340, 300), (350, 210, 390, 310)]
    regions = motion_regions(boxes, FRAME)
    assert len(regions) == 1
    assert all(contains(regions[0], b) for b in boxes)
    assert side(regions[0])[0] == side(regions[0])[1]


def test_far_apart_boxes_stay_separate_largest_first() -> None:
    boxes = [(10, 10, 30, 40), (500, 300, 580, 460)]
    regions = motion_regions(boxes, FRAME)
    assert len(regions) == 2
    assert contains(regions[0], boxes[1]) and contains(regions[1], boxes[0])
    assert side(regions[0])[0] > side(regions[1])[0]


def test_too_many_regions_merge_nearest_first_and_lose_no_motion() -> None:
    boxes = [(x, y, x + 10, y + 10) for x, y in itertools.product((20, 220, 420, 620), (20, 420))]
    regions = motion_regions(boxes, FRAME, max_regions=3)
    assert len(regions) <= 3
    for b in boxes:
        assert any(contains(r, b) for r in regions)


def test_no_boxes_no_regions_and_empty_boxes_ignored() -> None:
    assert motion_regions([], FRAME) == []
    assert motion_regions([(10, 10, 10, 50)], FRAME) == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="pad"):
        motion_regions([(0, 0, 5, 5)], FRAME, pad=-1)
    with pytest.raises(ValueError, match="max_regions"):
        motion_regions([(0, 0, 5, 5)], FRAME, max_regions=0)


@pytest.mark.parametrize("seed", range(20))
def test_property_regions_cover_boxes_stay_in_frame_and_do_not_overlap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(int(rng.integers(1, 12))):
        x1, y1 = float(rng.uniform(0, 740)), float(rng.uniform(0, 560))
        w, h = float(rng.uniform(2, 200)), float(rng.uniform(2, 300))
        boxes.append((x1, y1, min(x1 + w, 768.0), min(y1 + h, 576.0)))
    regions = motion_regions(boxes, FRAME, max_regions=4)
    assert 1 <= len(regions) <= 4
    for r in regions:
        assert 0 <= r[0] < r[2] <= 768 and 0 <= r[1] < r[3] <= 576
        w, h = side(r)
        assert w >= 96 and h >= 96
        assert abs(w - h) < 1e-6 or w == 768 or h == 576  # square unless the frame is smaller
    for b in boxes:
        assert any(contains(r, b) for r in regions)
    for a, b in itertools.combinations(regions, 2):
        assert not overlap(a, b)
    areas = [side(r)[0] * side(r)[1] for r in regions]
    assert areas == sorted(areas, reverse=True)
