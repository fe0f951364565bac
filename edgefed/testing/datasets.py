"""Real data sets for the federated-learning tests and bench, from files on this machine.

``digits``: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``:
1797 digits of 8x8 pixels from UCI's optical recognition set, about 180 per class), as
pixel features in [0, 1].
``non_iid_split`` deals a data set to edges so that each edge sees mostly its own classes.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

DIGIT_FEATURES = 64


def digits() -> tuple[np.ndarray, np.ndarray]:
    """Features (1797 x 64, float32 in [0, 1]) and labels (0-9) of scikit-learn's digits."""
    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def train_test_split(
    x: np.ndarray, y: np.ndarray, test_share: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A shuffled split: train features, train labels, test features, test labels."""
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(len(y) * (1 - test_share))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def non_iid_split(y: np.ndarray, edges: int, own_share: float, seed: int) -> list[np.ndarray]:
    """Row indices per edge: classes are dealt round-robin to the edges; a row goes to its
    class's edge with probability ``own_share``, else to a random edge."""
    rng = np.random.default_rng(seed)
    owner = y % edges
    stray = rng.random(len(y)) >= own_share
    target = np.where(stray, rng.integers(0, edges, len(y)), owner)
    return [np.flatnonzero(target == e) for e in range(edges)]
