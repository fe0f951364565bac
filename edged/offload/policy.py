"""When work leaves the device: the offload policy (pure code, no I/O).

Policies, by name (the device twin's ``offload_policy`` property takes these):

- ``never``: everything stays on the device.
- ``always``: every request is offloaded.
- ``priority``: offload when the model is not registered locally, when the request is
  high priority, or when local inference is overloaded (its queue over a bound).
- ``hard_example``: everything ``priority`` does, plus local results that are hard
  examples by Sedna's criteria (any enabled one): mean box score below ``threshold``;
  cross-entropy confidence ``1 + sum(p ln p) / ln N`` below ``threshold_cross_entropy``;
  IBT, the share of boxes scoring ``<= threshold_box`` at least ``1 - threshold_img``.

Otherwise the local result stands. As in Sedna, an empty or out-of-range input is
never a hard example. ``HardExampleBudget`` spaces the hard examples of a model out to
``hard_example.max_per_minute``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgefed.wire import LocalSummary

OffloadPolicyName = Literal["never", "hard_example", "priority", "always"]
POLICY_NAMES: tuple[OffloadPolicyName, ...] = ("never", "hard_example", "priority", "always")
HardExampleMethod = Literal["threshold", "cross_entropy", "ibt"]
Rule = Literal[
    "never",
    "always",
    "unregistered_model",
    "high_priority",
    "overloaded",
    "hard_example",
    "hard_example_over_budget",
    "local",
]


class HardExampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    methods: list[HardExampleMethod] = Field(
        default=["threshold"],
        min_length=1,
        description="Criteria in use; a result is hard if any of them says so",
    )
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="threshold: mean box score below this"
    )
    threshold_cross_entropy: float = Field(
        default=0.5, ge=0, le=1, description="cross_entropy: confidence below this"
    )
    threshold_img: float = Field(
        default=0.5, ge=0, le=1, description="ibt: hard if the low-score share is >= 1 - this"
    )
    threshold_box: float = Field(
        default=0.5, ge=0, le=1, description="ibt: a box is low-score at <= this"
    )
    max_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="At most this many hard examples a minute per model, evenly spaced (a "
        "busy scene is hard on every frame: the uplink and the server are asked for no more); "
        "the others keep their local result; None: no limit",
    )


class OffloadPolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: OffloadPolicyName = Field(default="hard_example", description="Which rules apply")
    high_priority: int = Field(
        default=5, ge=0, le=255, description="Requests with at least this priority are offloaded"
    )
    max_local_queue: int | None = Field(
        default=None,
        ge=0,
        description="Offload when the model's local queue is deeper than this (None: never); "
        "it holds at most the model's queue_size frames (default 2), so a value of queue_size "
        "or more never fires",
    )
    hard_example: HardExampleConfig = Field(
        default_factory=HardExampleConfig, description="Hard-example mining criteria"
    )


@dataclass(frozen=True)
class Decision:
    offload: bool
    rule: Rule
    reason: str


def threshold_hard(box_scores: Sequence[float], threshold: float) -> bool:
    """Sedna Threshold: the mean box score is below ``threshold``."""
    if not box_scores or not all(0.0 <= s <= 1.0 for s in box_scores):
        return False
    return sum(box_scores) / len(box_scores) < threshold


def cross_entropy_confidence(class_probs: Sequence[float]) -> float | None:
    """``1 + sum(p ln p) / ln N``: 1 for a one-hot, 0 for a uniform distribution."""
    if len(class_probs) < 2 or not all(0.0 <= p <= 1.0 for p in class_probs):
        return None
    log_sum = sum(p * math.log(p) for p in class_probs if p > 0.0)
    return 1.0 + log_sum / math.log(len(class_probs))


def cross_entropy_hard(class_probs: Sequence[float], threshold: float) -> bool:
    """Sedna CrossEntropy: the confidence is below ``threshold``."""
    confidence = cross_entropy_confidence(class_probs)
    return confidence is not None and confidence < threshold


def ibt_hard(box_scores: Sequence[float], threshold_img: float, threshold_box: float) -> bool:
    """Sedna IBT: the share of boxes scoring ``<= threshold_box`` is ``>= 1 - threshold_img``."""
    if not box_scores or not all(0.0 <= s <= 1.0 for s in box_scores):
        return False
    low = sum(1 for s in box_scores if s <= threshold_box)
    return low / len(box_scores) >= 1.0 - threshold_img


def hard_example(local: LocalSummary, config: HardExampleConfig) -> HardExampleMethod | None:
    """The first enabled criterion that finds ``local`` hard, or None."""
    for method in config.methods:
        if method == "threshold" and threshold_hard(local.box_scores, config.threshold):
            return method
        if method == "cross_entropy" and cross_entropy_hard(
            local.class_probs, config.threshold_cross_entropy
        ):
            return method
        if method == "ibt" and ibt_hard(
            local.box_scores, config.threshold_img, config.threshold_box
        ):
            return method
    return None


def decide(
    config: OffloadPolicyConfig,
    *,
    model: str,
    registered: bool,
    priority: int,
    queue_depth: int,
    local: LocalSummary | None,
) -> Decision:
    """Whether one request goes to the server, with the rule that decided and why."""
    if config.policy == "never":
        return Decision(False, "never", "offload policy is never")
    if config.policy == "always":
        return Decision(True, "always", "offload policy is always")
    if not registered:
        return Decision(True, "unregistered_model", f"model {model!r} is not registered locally")
    if priority >= config.high_priority:
        return Decision(True, "high_priority", f"priority {priority} >= {config.high_priority}")
    if config.max_local_queue is not None and queue_depth > config.max_local_queue:
        return Decision(True, "overloaded", f"local queue {queue_depth} > {config.max_local_queue}")
    if config.policy == "hard_example" and local is not None:
        method = hard_example(local, config.hard_example)
        if method is not None:
            return Decision(True, "hard_example", f"hard example by {method}")
    return Decision(False, "local", "local result stands")


class HardExampleBudget:
    """Hard examples of each model at most ``per_minute`` a minute, at least ``60 /
    per_minute`` seconds apart (no burst: a scene that is hard is hard on every frame).
    Thread-safe: the models' workers ask at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # model -> when its last hard example went

    def take(self, model: str, per_minute: float | None) -> bool:
        """Whether a hard example of ``model`` may go now (and it is counted as gone)."""
        if per_minute is None:
            return True
        now = self._clock()
        with self._lock:
            last = self._last.get(model)
            if last is not None and now - last < 60.0 / per_minute:
                return False
            self._last[model] = now
            return True
