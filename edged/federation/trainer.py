"""The local trainer: a softmax classifier head (``W``: features x classes, ``b``: classes)
trained in numpy on frozen features. Pure code: arrays in, arrays and metrics out.

The head is what a model image declares trainable (for example a classifier on the
features of a frozen backbone); the features are computed once when a sample is stored,
so training never runs the backbone. Mini-batch gradient descent on the cross-entropy
with L2 weight decay, in float64, returned in the base's dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Params = list[np.ndarray]


@dataclass(frozen=True)
class TrainSettings:
    """One local training run: passes over the samples, step size, batch, weight decay."""

    epochs: int = 5
    learning_rate: float = 0.5
    batch_size: int = 32
    l2: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.l2 < 0:
            raise ValueError("epochs, batch_size and learning_rate must be positive, l2 >= 0")


@dataclass(frozen=True)
class TrainResult:
    params: Params
    num_samples: int
    loss: float
    accuracy: float


def probabilities(params: Params, x: np.ndarray) -> np.ndarray:
    """Class probabilities of each row of ``x``."""
    logits = x.astype(np.float64) @ params[0] + params[1]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    out: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return out


def accuracy(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose most probable class is the label (0.0 for no rows)."""
    if len(y) == 0:
        return 0.0
    return float(np.mean(np.argmax(probabilities(params, x), axis=1) == y))


def train(params: Params, x: np.ndarray, y: np.ndarray, settings: TrainSettings) -> TrainResult:
    """Train the head from ``params`` on features ``x`` (n x features) and labels ``y``."""
    weights, bias = params
    if x.ndim != 2 or x.shape[1] != weights.shape[0] or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"features {x.shape} and labels {y.shape} do not fit the head")
    if y.min() < 0 or y.max() >= weights.shape[1]:
        raise ValueError(f"labels must be in [0, {weights.shape[1]})")
    w = weights.astype(np.float64)
    b = bias.astype(np.float64)
    xs = x.astype(np.float64)
    onehot = np.eye(w.shape[1])[y]
    rng = np.random.default_rng(settings.seed)
    for _ in range(settings.epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            grad = (probabilities([w, b], xs[batch]) - onehot[batch]) / len(batch)
            w -= settings.learning_rate * (xs[batch].T @ grad + settings.l2 * w)
            b -= settings.learning_rate * grad.sum(axis=0)
    probs = probabilities([w, b], xs)
    loss = float(-np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12)))
    trained = [w.astype(weights.dtype), b.astype(bias.dtype)]
    return TrainResult(trained, len(y), loss, accuracy(trained, xs, y))
