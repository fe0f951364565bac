from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from edged.offload.policy import (
    POLICY_NAMES,
    HardExampleBudget,
    HardExampleConfig,
    OffloadPolicyConfig,
    cross_entropy_confidence,
    cross_entropy_hard,
    decide,
    hard_example,
    ibt_hard,
    threshold_hard,
)
from edgefed.wire import LocalSummary


def run(config: OffloadPolicyConfig, **changes: object) -> tuple[bool, str]:
    args: dict[str, object] = {
        "model": "detector",
        "registered": True,
        "priority": 0,
        "queue_depth": 0,
        "local": LocalSummary(box_scores=[0.9, 0.95]),
    }
    args.update(changes)
    decision = decide(config, **args)  # type: ignore[arg-type]
    return decision.offload, decision.rule


def test_threshold_uses_the_mean_box_score() -> None:
    assert threshold_hard([0.3, 0.6], 0.5)  # mean 0.45
    assert not threshold_hard([0.5, 0.5], 0.5)  # not strictly below
    assert not threshold_hard([], 0.5)  # nothing detected is not hard (Sedna)
    assert not threshold_hard([0.2, 1.5], 0.5)  # out-of-range input is not hard


def test_cross_entropy_confidence_spans_uniform_to_one_hot() -> None:
    assert cross_entropy_confidence([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert cross_entropy_confidence([0.25] * 4) == pytest.approx(0.0)
    probs = [0.7, 0.2, 0.1]
    expected = 1 + sum(p * math.log(p) for p in probs) / math.log(3)
    assert cross_entropy_confidence(probs) == pytest.approx(expected)
    assert cross_entropy_hard([0.4, 0.35, 0.25], 0.5)
    assert not cross_entropy_hard([0.98, 0.01, 0.01], 0.5)
    assert cross_entropy_confidence([1.0]) is None  # ln 1 = 0: undefined, not hard
    assert not cross_entropy_hard([0.5, -0.1, 0.6], 0.5)


def test_ibt_counts_low_score_boxes() -> None:
    assert ibt_hard([0.1, 0.5, 0.9, 0.95], 0.5, 0.5)  # 2/4 >= 0.5 (score <= box threshold)
    assert not ibt_hard([0.1, 0.9, 0.95, 0.97], 0.5, 0.5)  # 1/4
    assert ibt_hard([0.1, 0.9, 0.95, 0.97], 0.8, 0.5)  # 1/4 >= 1 - 0.8
    assert not ibt_hard([], 0.5, 0.5)


def test_any_enabled_criterion_marks_a_hard_example() -> None:
    confident_boxes_unsure_class = LocalSummary(box_scores=[0.9], class_probs=[0.5, 0.5])
    assert hard_example(confident_boxes_unsure_class, HardExampleConfig()) is None
    both = HardExampleConfig(methods=["threshold", "cross_entropy"])
    assert hard_example(confident_boxes_unsure_class, both) == "cross_entropy"
    ibt = HardExampleConfig(methods=["ibt"], threshold_box=0.95)
    assert hard_example(confident_boxes_unsure_class, ibt) == "ibt"


def test_never_and_always_ignore_everything_else() -> None:
    assert run(OffloadPolicyConfig(policy="never"), registered=False, priority=9) == (
        False,
        "never",
    )
    assert run(OffloadPolicyConfig(policy="always")) == (True, "always")


def test_priority_rules() -> None:
    config = OffloadPolicyConfig(policy="priority", high_priority=5, max_local_queue=4)
    assert run(config) == (False, "local")
    assert run(config, registered=False) == (True, "unregistered_model")
    assert run(config, priority=5) == (True, "high_priority")
    assert run(config, priority=4) == (False, "local")
    assert run(config, queue_depth=5) == (True, "overloaded")
    assert run(config, queue_depth=4) == (False, "local")
    # the priority policy does not mine hard examples
    assert run(config, local=LocalSummary(box_scores=[0.1])) == (False, "local")
    assert run(config.model_copy(update={"max_local_queue": None}), queue_depth=999) == (
        False,
        "local",
    )


def test_hard_example_policy_adds_mining_to_the_priority_rules() -> None:
    config = OffloadPolicyConfig(policy="hard_example")
    assert run(config, local=LocalSummary(box_scores=[0.2, 0.3])) == (True, "hard_example")
    assert run(config, local=LocalSummary(box_scores=[0.9])) == (False, "local")
    assert run(config, local=None) == (False, "local")
    assert run(config, registered=False, local=None) == (True, "unregistered_model")


def test_policy_names_are_the_twin_values() -> None:
    assert set(POLICY_NAMES) == {"never", "hard_example", "priority", "always"}
    for name in POLICY_NAMES:
        OffloadPolicyConfig(policy=name)
    with pytest.raises(ValueError):
        OffloadPolicyConfig.model_validate({"policy": "sometimes"})


def test_hard_examples_are_spaced_out_to_their_budget_per_model() -> None:
    now = [100.0]
    budget = HardExampleBudget(clock=lambda: now[0])
    assert budget.take("person", 12)  # one every 5 s
    assert not budget.take("person", 12)
    assert budget.take("scene", 12)  # each model has its own
    now[0] += 4.9
    assert not budget.take("person", 12)
    now[0] += 0.1
    assert budget.take("person", 12)
    assert not budget.take("person", 12)
    assert all(budget.take("person", None) for _ in range(3))  # no limit


def test_a_budget_of_zero_or_less_is_refused() -> None:
    for bad in (0, -1):
        with pytest.raises(ValidationError, match="max_per_minute"):
            HardExampleConfig(max_per_minute=bad)
