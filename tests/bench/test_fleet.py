"""bench fleet's figures: Jain's fairness index and the ceiling interpolation."""

from __future__ import annotations

import pytest

from bench.fleet import ceiling, jain


def test_jain_index_is_one_when_every_device_is_served_alike_and_1_over_n_at_worst() -> None:
    assert jain([0.5] * 10) == 1.0
    assert jain([1.0] + [0.0] * 9) == pytest.approx(0.1)
    assert jain([1.0, 0.5]) == pytest.approx(0.9)
    assert jain([]) == 0.0


def step(offered: float, p99: float | None) -> dict[str, float | None]:
    return {"offered_jobs_per_s": offered, "p99_ms_high": p99}


def test_the_ceiling_is_where_high_priority_p99_crosses_80_ms() -> None:
    steps = [step(300.0, 60.0), step(30.0, 10.0), step(600.0, 100.0)]
    assert ceiling(steps) == pytest.approx(450.0)  # 60 ms at 300/s, 100 ms at 600/s
    assert ceiling([step(30.0, 10.0), step(300.0, 70.0)]) is None  # never crossed
    assert ceiling([step(30.0, 90.0)]) == 30.0  # crossed at the first step
