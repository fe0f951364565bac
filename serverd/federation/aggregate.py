"""Aggregation of edge updates into a new global model: pure numpy, no transport.

A model's parameters are a list of arrays (one per trainable tensor of its manifest);
an update is the full list an edge trained plus the number of samples it trained on.
The functions follow the definitions of Flower's ``flwr.server.strategy.aggregate``
(FedAvg weighted by samples, coordinate-wise median, trimmed mean, Krum / multi-Krum)
and of its fixed-clipping differential privacy wrapper; they are written here in plain
numpy rather than depending on ``flwr`` and its pins (grpcio, protobuf, cryptography)
for forty lines of arithmetic. ``tests/serverd/test_federation_aggregate.py`` checks
them against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Params = list[np.ndarray]
StrategyName = Literal["fedavg", "median", "trimmed_mean", "krum"]
STRATEGIES: tuple[StrategyName, ...] = ("fedavg", "median", "trimmed_mean", "krum")


class AggregationError(ValueError):
    """The updates cannot be aggregated (none, mismatched shapes, bad settings)."""


@dataclass(frozen=True)
class Update:
    """One edge's trained parameters and the number of samples behind them."""

    params: Params
    num_samples: int


@dataclass(frozen=True)
class AggregationSettings:
    """How a round combines its updates.

    ``trim_fraction``: share cut from EACH end per coordinate (trimmed mean);
    ``krum_malicious``: edges Krum assumes may be hostile; ``krum_keep``: 0 keeps the
    single best update, k > 0 averages the k best (multi-Krum);
    ``clip_norm``: when set, each update's delta from the base is clipped to this L2 norm
    (over all tensors) before aggregation; ``noise_multiplier``: Gaussian noise of
    standard deviation ``noise_multiplier * clip_norm / n_updates`` added to the result
    (central differential privacy as Flower's fixed-clipping wrapper does it).
    """

    strategy: StrategyName = "fedavg"
    trim_fraction: float = 0.2
    krum_malicious: int = 1
    krum_keep: int = 0
    clip_norm: float | None = None
    noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise AggregationError(f"unknown strategy {self.strategy!r}; one of {STRATEGIES}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise AggregationError("trim_fraction must be in [0, 0.5)")
        if self.krum_malicious < 0 or self.krum_keep < 0:
            raise AggregationError("krum_malicious and krum_keep must be >= 0")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise AggregationError("clip_norm must be > 0")
        if self.noise_multiplier < 0:
            raise AggregationError("noise_multiplier must be >= 0")
        if self.noise_multiplier > 0 and self.clip_norm is None:
            raise AggregationError("noise needs clip_norm: the noise scale is relative to it")


def fedavg(updates: Sequence[Update]) -> Params:
    """Average weighted by each update's sample count."""
    _check(updates)
    total = sum(u.num_samples for u in updates)
    if total <= 0:
        raise AggregationError("FedAvg needs a positive total sample count")
    weights = np.array([u.num_samples for u in updates], dtype=np.float64) / total
    return [
        np.tensordot(weights, _stack(updates, i), axes=1) for i in range(len(updates[0].params))
    ]


def median(updates: Sequence[Update]) -> Params:
    """Coordinate-wise median (unweighted)."""
    _check(updates)
    return [np.median(_stack(updates, i), axis=0) for i in range(len(updates[0].params))]


def trimmed_mean(updates: Sequence[Update], trim_fraction: float) -> Params:
    """Coordinate-wise mean after cutting ``int(trim_fraction * n)`` values from each end."""
    _check(updates)
    n = len(updates)
    cut = int(trim_fraction * n)
    if n - 2 * cut < 1:
        raise AggregationError(f"trimming {cut} from each end of {n} updates leaves none")
    out = []
    for i in range(len(updates[0].params)):
        ordered = np.sort(_stack(updates, i), axis=0)
        out.append(ordered[cut : n - cut].mean(axis=0))
    return out


def krum_select(updates: Sequence[Update], malicious: int, keep: int) -> list[int]:
    """Indices of the updates Krum keeps: each is scored by the summed squared distance to
    its ``n - malicious - 2`` nearest others (at least one); the lowest score wins, or the
    ``keep`` lowest for multi-Krum."""
    _check(updates)
    flat = np.stack([np.concatenate([p.ravel() for p in u.params]) for u in updates])
    flat = flat.astype(np.float64)
    sq = np.sum(flat**2, axis=1)
    distances = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
    closest = max(1, len(updates) - malicious - 2)
    scores = [float(np.sort(np.delete(row, i))[:closest].sum()) for i, row in enumerate(distances)]
    order = sorted(range(len(updates)), key=lambda i: (scores[i], i))
    return order[: max(1, keep)]


def krum(updates: Sequence[Update], malicious: int, keep: int) -> Params:
    """The Krum winner, or the FedAvg of the ``keep`` best (multi-Krum)."""
    chosen = krum_select(updates, malicious, keep)
    if keep <= 0:
        return [p.astype(np.float64) for p in updates[chosen[0]].params]
    return fedavg([updates[i] for i in chosen])


def clip_update(base: Params, params: Params, clip_norm: float) -> Params:
    """``params`` with its delta from ``base`` scaled down to an L2 norm <= ``clip_norm``."""
    deltas = [p.astype(np.float64) - b for p, b in zip(params, base, strict=True)]
    norm = float(np.sqrt(sum(float(np.sum(d**2)) for d in deltas)))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [b + d * scale for b, d in zip(base, deltas, strict=True)]


def aggregate(
    base: Params,
    updates: Sequence[Update],
    settings: AggregationSettings,
    rng: np.random.Generator | None = None,
) -> Params:
    """The new global parameters from ``base`` and the accepted ``updates``, cast back to
    the base's dtypes. ``rng`` draws the privacy noise (a fresh generator if None).
    ``AggregationError`` if a value is not finite once cast (a version no edge could
    use)."""
    _check(updates)
    for u in updates:
        _check_shapes(base, u.params)
    if settings.clip_norm is not None:
        clip = settings.clip_norm
        updates = [Update(clip_update(base, u.params, clip), u.num_samples) for u in updates]
    if settings.strategy == "fedavg":
        result = fedavg(updates)
    elif settings.strategy == "median":
        result = median(updates)
    elif settings.strategy == "trimmed_mean":
        result = trimmed_mean(updates, settings.trim_fraction)
    else:
        result = krum(updates, settings.krum_malicious, settings.krum_keep)
    if settings.noise_multiplier > 0 and settings.clip_norm is not None:
        gen = rng if rng is not None else np.random.default_rng()
        std = settings.noise_multiplier * settings.clip_norm / len(updates)
        result = [r + gen.normal(0.0, std, size=r.shape) for r in result]
    with np.errstate(over="ignore", invalid="ignore"):
        out = [r.astype(b.dtype) for r, b in zip(result, base, strict=True)]
    for i, tensor in enumerate(out):
        if np.issubdtype(tensor.dtype, np.inexact) and not np.all(np.isfinite(tensor)):
            bad = int(np.count_nonzero(~np.isfinite(tensor)))
            raise AggregationError(
                f"the aggregate is not finite as {tensor.dtype}: {bad} of the "
                f"{tensor.size} values of tensor {i}"
            )
    return out


def _check(updates: Sequence[Update]) -> None:
    if not updates:
        raise AggregationError("no updates to aggregate")
    first = updates[0].params
    for u in updates[1:]:
        _check_shapes(first, u.params)


def _check_shapes(expected: Params, got: Params) -> None:
    if len(expected) != len(got) or any(
        a.shape != b.shape for a, b in zip(expected, got, strict=False)
    ):
        raise AggregationError(
            f"tensor shapes differ: {[a.shape for a in expected]} vs {[b.shape for b in got]}"
        )


def _stack(updates: Sequence[Update], index: int) -> np.ndarray:
    return np.stack([u.params[index].astype(np.float64) for u in updates])
