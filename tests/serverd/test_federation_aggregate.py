"""Aggregation math against values computed by hand (the definitions Flower uses)."""

from __future__ import annotations

import numpy as np
import pytest

from serverd.federation.aggregate import (
    AggregationError,
    AggregationSettings,
    Update,
    aggregate,
    clip_update,
    fedavg,
    krum,
    krum_select,
    median,
    trimmed_mean,
)


def _u(values: list[float], n: int = 1) -> Update:
    return Update([np.array(values, dtype=np.float32), np.array([[sum(values)]])], n)


def test_fedavg_weights_by_sample_count() -> None:
    out = fedavg([_u([0.0, 0.0], 1), _u([4.0, 8.0], 3)])
    np.testing.assert_allclose(out[0], [3.0, 6.0])
    np.testing.assert_allclose(out[1], [[9.0]])


def test_fedavg_refuses_zero_samples() -> None:
    with pytest.raises(AggregationError, match="positive"):
        fedavg([_u([1.0], 0)])


def test_median_ignores_one_extreme_update() -> None:
    out = median([_u([1.0, 2.0]), _u([2.0, 3.0]), _u([1000.0, -1000.0])])
    np.testing.assert_allclose(out[0], [2.0, 2.0])


def test_trimmed_mean_cuts_each_end() -> None:
    updates = [_u([v]) for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    np.testing.assert_allclose(trimmed_mean(updates, 0.2)[0], [3.0])  # cut 1 each end
    np.testing.assert_allclose(trimmed_mean(updates, 0.0)[0], [22.0])


def test_trimmed_mean_refuses_to_cut_everything() -> None:
    with pytest.raises(AggregationError, match="leaves none"):
        trimmed_mean([_u([1.0]), _u([2.0])], 0.49 + 0.01)


def test_krum_picks_the_update_closest_to_the_others() -> None:
    points = [(0.0, 0.0), (0.1, 0.0), (0.0, 0.2), (0.1, 0.1), (50.0, 50.0)]
    updates = [Update([np.array(p)], 1) for p in points]
    # n=5, f=1: each is scored on its 2 nearest neighbours' squared distances:
    # 0.03, 0.02, 0.06, 0.03 and huge for the outlier
    assert krum_select(updates, malicious=1, keep=0) == [1]
    assert krum_select(updates, malicious=1, keep=3) == [1, 0, 3]
    np.testing.assert_allclose(krum(updates, 1, 0)[0], [0.1, 0.0])
    np.testing.assert_allclose(krum(updates, 1, 3)[0], [0.2 / 3, 0.1 / 3])


def test_clip_update_bounds_the_delta_norm() -> None:
    base = [np.zeros(2)]
    np.testing.assert_allclose(clip_update(base, [np.array([3.0, 4.0])], 1.0)[0], [0.6, 0.8])
    np.testing.assert_allclose(clip_update(base, [np.array([0.3, 0.4])], 1.0)[0], [0.3, 0.4])


def test_aggregate_keeps_dtypes_and_refuses_mismatched_shapes() -> None:
    base = [np.zeros(2, dtype=np.float32), np.zeros((1, 1))]
    out = aggregate(base, [_u([1.0, 1.0]), _u([3.0, 3.0])], AggregationSettings())
    assert out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], [2.0, 2.0])
    with pytest.raises(AggregationError, match="shapes differ"):
        aggregate(base, [Update([np.zeros(3)], 1)], AggregationSettings())


def test_noise_has_the_stated_scale() -> None:
    base = [np.zeros(20_000)]
    updates = [Update([np.zeros(20_000)], 1) for _ in range(4)]
    settings = AggregationSettings(clip_norm=2.0, noise_multiplier=1.0)
    out = aggregate(base, updates, settings, np.random.default_rng(0))
    assert out[0].std() == pytest.approx(1.0 * 2.0 / 4, rel=0.03)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": "mean"},
        {"trim_fraction": 0.5},
        {"clip_norm": 0.0},
        {"noise_multiplier": 1.0},
        {"krum_malicious": -1},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(AggregationError):
        AggregationSettings(**kwargs)  # type: ignore[arg-type]
