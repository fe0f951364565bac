"""Judging a new version on the held-back slice: worse by more than the margin plus one
sample is refused with the reason; a single flipped sample is not."""

from __future__ import annotations

import numpy as np

from edged.federation.adoption import Served, judge

# a 2-feature, 2-class slice of 20 samples; the served head gets all of them right
X = np.array([[1.0, 0.0]] * 10 + [[0.0, 1.0]] * 10)
Y = np.array([0] * 10 + [1] * 10)
GOOD = [np.eye(2, dtype=np.float32) * 5, np.zeros(2, np.float32)]
SERVED = Served(3, GOOD)


def test_one_sample_past_the_margin_is_noise_and_more_is_refused() -> None:
    x = np.hstack([X, np.zeros((20, 1))])
    head = [np.vstack([GOOD[0], np.zeros((1, 2), np.float32)]), GOOD[1]]
    served = Served(3, head)
    flip = [np.vstack([GOOD[0], [[0, 20]]]).astype(np.float32), GOOD[1]]  # flag -> class 1
    two, three = x.copy(), x.copy()
    two[:2, 2] = 1.0  # samples of class 0 flagged: the candidate gets them wrong
    three[:3, 2] = 1.0
    margin = 0.05
    assert judge(flip, served, (two, Y), margin).adopt  # 10 points: margin + one sample
    decision = judge(flip, served, (three, Y), margin)  # 15 points
    assert not decision.adopt
    assert decision.candidate_accuracy == 0.85 and decision.current_accuracy == 1.0
    assert "margin 0.05 + one of 20 samples" in decision.reason


def test_without_a_served_version_or_enough_held_back_samples_a_version_is_adopted() -> None:
    assert judge(GOOD, None, (X, Y), 0.02).adopt
    assert judge([-GOOD[0], GOOD[1]], SERVED, (X[:5], Y[:5]), 0.02).adopt
    assert not judge([-GOOD[0], GOOD[1]], SERVED, (X, Y), 0.02).adopt
