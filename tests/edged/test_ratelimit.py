"""pipeline.target_fps: which frames a camera's dispatcher takes."""

from __future__ import annotations

import itertools
import random

import pytest

from edged.ratelimit import RateLimiter


def taken(times: list[float], fps: float | None) -> list[float]:
    limiter = RateLimiter()
    return [t for t in times if limiter.take(t, fps)]


def camera(fps: float, seconds: float, jitter: float = 0.0, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [i / fps + rng.uniform(-jitter, jitter) for i in range(round(fps * seconds))]


@pytest.mark.parametrize(("source", "target"), [(30, 10), (25, 10), (25, 7.5), (60, 5), (12, 10)])
def test_a_faster_camera_is_thinned_to_the_target_rate_evenly(source: float, target: float) -> None:
    times = camera(source, 20)
    kept = taken(times, target)
    assert len(kept) == pytest.approx(20 * target, abs=1)
    gaps = [b - a for a, b in itertools.pairwise(kept)]
    # evenly: no gap shorter than half a period or longer than a period and a source frame
    assert min(gaps) >= 0.5 / target - 1e-9
    assert max(gaps) <= 1 / target + 1 / source + 1e-9


def test_thirty_frames_a_second_at_ten_keep_every_third() -> None:
    times = camera(30, 2)
    kept = [times.index(t) for t in taken(times, 10)]
    assert kept[0] == 0 and [b - a for a, b in itertools.pairwise(kept)] == [3] * 19


def test_a_camera_at_the_target_rate_keeps_every_frame_despite_jitter() -> None:
    """Frames of a 10 fps camera arriving up to 20 ms early or late: a rule of "at least a
    period since the last frame taken" would drop every frame that came early."""
    for seed in range(5):
        times = camera(10, 30, jitter=0.02, seed=seed)
        assert taken(times, 10) == times


def test_a_slower_camera_and_no_target_keep_every_frame() -> None:
    times = camera(5, 10)
    assert taken(times, 10) == times
    assert taken(camera(30, 2), None) == camera(30, 2)


def test_a_gap_or_a_step_back_starts_afresh() -> None:
    limiter = RateLimiter()
    assert [limiter.take(t, 10) for t in (0.0, 0.04, 0.1)] == [True, False, True]
    assert limiter.take(7.0, 10)  # a gap (the camera came back): taken at once
    assert not limiter.take(7.03, 10)
    assert limiter.take(0.0, 10)  # a file looped back to its start
    assert limiter.take(0.1, 10)


def test_the_rate_may_change_between_frames() -> None:
    limiter = RateLimiter()
    times = camera(30, 4)
    fast = [t for t in times[:60] if limiter.take(t, 10)]
    slow = [t for t in times[60:] if limiter.take(t, 2)]
    assert len(fast) == 20
    assert [round(b - a, 6) for a, b in itertools.pairwise(slow)] == [0.5] * (len(slow) - 1)
    assert len(slow) == 4
