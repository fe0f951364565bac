"""Real data sets for the federated-learning tests and bench, from files on this machine.

``digits``: OpenCV's handwritten digits sheet (``digits.png`` of opencv-doc, 5000 digits
of 20x20 pixels, 500 per class, five rows of 100 per class), as pixel features in [0, 1].
``non_iid_split`` deals a data set to edges so that each edge sees mostly its own classes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DIGITS_PNG = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")


def digits(path: Path = DIGITS_PNG) -> tuple[np.ndarray, np.ndarray]:
    """Features (5000 x 400, float32 in [0, 1]) and labels (0-9) of the digits sheet."""
    sheet = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if sheet is None or sheet.shape != (1000, 2000):
        raise FileNotFoundError(f"{path} is missing or not the 1000x2000 digits sheet")
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 400)
    labels = np.repeat(np.arange(10), 500)
    return (cells.astype(np.float32) / 255.0), labels


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
