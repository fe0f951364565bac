"""bench int8-sensitivity's comparison of INT8 logits with fp32's."""

from __future__ import annotations

import numpy as np
import pytest

from bench.int8_sensitivity import compare


def test_identical_logits_agree_fully_at_zero_divergence() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    assert compare(logits, logits) == {"top1_agreement": 1.0, "kl": 0.0}


def test_a_flipped_top1_halves_agreement_and_costs_divergence() -> None:
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    got = np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 1.0]])
    figures = compare(ref, got)
    assert figures["top1_agreement"] == 0.5
    p = np.exp(ref[0]) / np.exp(ref[0]).sum()
    q = np.exp(got[0]) / np.exp(got[0]).sum()
    assert figures["kl"] == pytest.approx(float(np.sum(p * np.log(p / q))) / 2, abs=1e-5)
