"""The round state machine: selection, verdicts, quorum and deadline, and whole federations
on real handwritten digits split non-IID across three edges (in one process; the trainer
is the edge's, the rounds are serverd's)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from edged.federation.trainer import TrainSettings, accuracy, train
from edgefed.errors import FederationError
from edgefed.federation_wire import init_head
from edgefed.testing.datasets import DIGIT_FEATURES, digits, non_iid_split, train_test_split
from serverd.federation import rounds
from serverd.federation.aggregate import AggregationSettings, Params
from serverd.federation.rounds import Federation, Phase, RoundSettings


def _params(value: float = 0.0) -> Params:
    return [np.full((2, 3), value, np.float32), np.full(3, value, np.float32)]


def _federation(**kwargs: object) -> Federation:
    settings = RoundSettings(min_clients=2, quorum=2, min_samples=5, timeout_ms=1000, **kwargs)  # type: ignore[arg-type]
    return Federation("head", 7, _params(), settings)


def test_open_round_selects_devices_with_enough_samples() -> None:
    fed = _federation()
    plan = fed.open_round({"a": 10, "b": 5, "c": 4}, now_ms=100)
    assert plan.participants == ("a", "b")
    assert (plan.round_id, plan.base_version, plan.deadline_ms) == (1, 7, 1100)
    with pytest.raises(FederationError, match="still collecting"):
        fed.open_round({"a": 10, "b": 10}, now_ms=200)


def test_open_round_refuses_too_few_devices() -> None:
    with pytest.raises(FederationError, match="need 2"):
        _federation().open_round({"a": 10, "b": 1}, now_ms=0)


def test_refusals_say_why() -> None:
    fed = _federation(max_delta_norm=10.0)
    fed.open_round({"a": 10, "b": 10, "c": 10, "d": 10, "e": 10, "f": 10}, now_ms=0)
    cases = [
        ("x", 1, 7, _params(), 5, "not a participant"),
        ("a", 2, 7, _params(), 5, "round 2 is not open"),
        ("a", 1, 6, _params(), 5, "stale base version 6"),
        ("b", 1, 7, _params()[:1], 5, "malformed: tensor count"),
        ("c", 1, 7, [np.full((2, 3), np.nan), np.zeros(3)], 5, "non-finite"),
        ("d", 1, 7, _params(100.0), 5, "out of bounds"),
        ("e", 1, 7, _params(), 0, "sample count 0"),
    ]
    for device, round_id, base, params, n, reason in cases:
        verdict = fed.receive(device, round_id, base, params, n)
        assert not verdict.accepted and reason in verdict.reason, (device, verdict)
    assert fed.receive("f", 1, 7, _params(1.0), 5).accepted
    assert "already answered" in fed.receive("f", 1, 7, _params(1.0), 5).reason
    assert fed.status()["rejected"]["a"].startswith("stale")


def test_an_update_refused_before_judging_is_the_devices_answer() -> None:
    fed = _federation()
    fed.open_round({"a": 10, "b": 10}, now_ms=0)
    fed.refuse("a", 1, "malformed: sha256")
    fed.refuse("a", 1, "a second reason is ignored")
    fed.refuse("x", 1, "not a participant: ignored")
    assert fed.receive("b", 1, 7, _params(1.0), 1).accepted
    assert fed.status()["rejected"] == {"a": "malformed: sha256"}
    assert fed.poll(now_ms=1) is not None  # everyone answered, no need to wait


def test_history_over_months_is_bounded_and_holds_no_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rounds every few minutes for months: the history keeps the latest records only and
    no copy of the model (the global parameters live in ``params``), while the status
    counts every round."""
    monkeypatch.setattr(rounds, "HISTORY_ROUNDS", 5)
    fed = _federation()
    for n in range(8):
        fed.open_round({"a": 10, "b": 10}, now_ms=n * 10_000)
        if n % 4:  # every fourth round fails: nobody answers before the deadline
            fed.receive("a", n + 1, fed.version, _params(1.0), 1)
            fed.receive("b", n + 1, fed.version, _params(1.0), 1)
        assert fed.poll(now_ms=n * 10_000 + 5_000) is not None
    assert [o.round_id for o in fed.history] == [4, 5, 6, 7, 8]
    assert all(o.params is None for o in fed.history)
    assert (fed.status()["rounds_done"], fed.status()["rounds_failed"]) == (6, 2)
    assert fed.round_id == 8 and fed.params[0].shape == (2, 3)


def test_history_keeps_device_lists_for_the_latest_rounds_and_counts_for_older_ones() -> None:
    """Every kept round held its accepted, missing and rejected devices: 59 B per device
    and round, 118 MB for 2,000 devices over the 1,000 rounds kept. Only the latest
    ``listed_rounds`` name their devices now; every round keeps the counts, and the
    history rows keep their keys."""
    devices = {f"ns/device-{i:04d}": 100 for i in range(500)}
    fed = Federation("head", 7, _params(), RoundSettings(1, 1, 5, 1000), listed_rounds=3)
    for n in range(30):
        plan = fed.open_round(devices, now_ms=n * 10_000)
        for i, device in enumerate(plan.participants[:300]):
            base = fed.version if i % 3 else fed.version - 1  # a third stale: rejected
            fed.receive(device, plan.round_id, base, _params(1.0), 10)
        assert fed.poll(now_ms=n * 10_000 + 5_000) is not None
    rows = [o.record() for o in fed.history]
    listed = sum(len(r["accepted"]) + len(r["rejected"]) + len(r["missing"]) for r in rows)
    assert listed == 3 * 500
    assert [r["devices_listed"] for r in rows] == [False] * 27 + [True] * 3
    assert all(
        (r["accepted_count"], r["rejected_count"], r["missing_count"]) == (200, 100, 200)
        for r in rows
    )
    assert all(r["version"] == 8 + n for n, r in enumerate(rows))
    last = rows[-1]
    assert len(last["accepted"]) == 200 and len(last["missing"]) == 200
    assert all(why.startswith("stale base version") for why in last["rejected"].values())
    assert set(rows[0]) == set(last)


def test_a_round_names_at_most_max_participants_drawn_uniformly_at_random() -> None:
    """With more devices qualifying than a round may name, each round takes
    ``max_participants`` of them at random: the same draw for the same seed, every device
    in turn, and a device claiming a million samples no likelier than the others (an
    offer's count is the device's word). Before, a round named every device: over
    10,000 it could not be sent and failed at its deadline, again and again."""
    devices = {f"edge-{i:03d}": 20 for i in range(100)} | {"boaster": 1_000_000, "few": 4}
    settings = RoundSettings(2, 2, min_samples=5, timeout_ms=1000, max_participants=10)
    chosen: list[tuple[str, ...]] = []
    for seed in (1, 1, 2):
        fed = Federation("head", 7, _params(), settings, sampler=random.Random(seed))
        chosen.append(fed.open_round(devices, now_ms=0).participants)
    assert chosen[0] == chosen[1] != chosen[2]
    assert all(len(c) == 10 and list(c) == sorted(c) and "few" not in c for c in chosen)
    fed = Federation("head", 7, _params(), settings, sampler=random.Random(3))
    times = dict.fromkeys(devices, 0)
    for n in range(200):
        for device in fed.open_round(devices, now_ms=n * 10_000).participants:
            times[device] += 1
        fed.poll(now_ms=n * 10_000 + 1000)  # nobody answers: failed, the next one opens
    assert times.pop("few") == 0
    assert min(times.values()) >= 5 and times["boaster"] <= 45  # 200 x 10 / 101 = 19.8 each


def test_a_round_names_no_more_devices_than_its_message_has_room_for() -> None:
    """``list_bytes`` bounds the participants' ids as a JSON list; too few fitting is a
    refusal with the reason, and drafting a round changes nothing until it begins."""
    long = {f"edge-{i:03d}-" + "x" * 100: 10 for i in range(50)}  # 113 bytes each in JSON
    fed = _federation()
    plan = fed.draft(long, now_ms=0, list_bytes=1000)
    assert len(plan.participants) == 8 and len(json.dumps(list(plan.participants))) <= 1000
    assert fed.phase is Phase.IDLE and fed.round_id == 0 and fed.plan is None
    with pytest.raises(FederationError, match="the ids of 1 of 50 devices fit"):
        fed.draft(long, now_ms=0, list_bytes=200)
    fed.begin(plan)
    assert fed.phase is Phase.COLLECTING and fed.round_id == 1
    with pytest.raises(FederationError, match="still collecting"):
        fed.begin(plan)


def test_settings_refuse_more_participants_than_a_round_message_carries() -> None:
    with pytest.raises(FederationError, match="max_participants <= 10000"):
        RoundSettings(max_participants=10_001)
    with pytest.raises(FederationError, match="min_clients <= max_participants"):
        RoundSettings(min_clients=5, quorum=3, max_participants=4)


def test_round_closes_when_everyone_answered_and_bumps_the_version() -> None:
    fed = _federation()
    fed.open_round({"a": 10, "b": 10}, now_ms=0)
    fed.receive("a", 1, 7, _params(1.0), 1)
    assert fed.poll(now_ms=10) is None
    fed.receive("b", 1, 7, _params(4.0), 3)
    outcome = fed.poll(now_ms=20)
    assert outcome is not None and outcome.version == 8 and outcome.params is not None
    np.testing.assert_allclose(outcome.params[0], 3.25)  # (1*1 + 4*3) / 4
    assert fed.version == 8 and fed.phase is Phase.IDLE
    assert outcome.record()["accepted"] == ["a", "b"]
    assert fed.status()["rounds_done"] == 1


def test_deadline_without_quorum_fails_and_keeps_the_model() -> None:
    fed = _federation()
    fed.open_round({"a": 10, "b": 10, "c": 10}, now_ms=0)
    fed.receive("a", 1, 7, _params(1.0), 1)
    assert fed.poll(now_ms=999) is None
    outcome = fed.poll(now_ms=1000)
    assert outcome is not None and outcome.version is None
    assert outcome.missing == ("b", "c") and "quorum is 2" in outcome.failure
    assert fed.version == 7
    np.testing.assert_array_equal(fed.params[0], 0.0)


def test_deadline_with_quorum_aggregates_what_came() -> None:
    fed = _federation()
    fed.open_round({"a": 10, "b": 10, "c": 10}, now_ms=0)
    fed.receive("a", 1, 7, _params(1.0), 1)
    fed.receive("b", 1, 7, _params(3.0), 1)
    outcome = fed.poll(now_ms=1000)
    assert outcome is not None and outcome.version == 8 and outcome.missing == ("c",)


@pytest.fixture(scope="module")
def split() -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    x, y = digits()
    xtr, ytr, xte, yte = train_test_split(x, y, test_share=0.2, seed=0)
    parts = non_iid_split(ytr, edges=3, own_share=0.8, seed=1)
    return [(xtr[p], ytr[p]) for p in parts], xte, yte


def _run(
    edges: list[tuple[np.ndarray, np.ndarray]], strategy: AggregationSettings, poison: str = ""
) -> Params:
    settings = RoundSettings(min_clients=3, quorum=3, min_samples=100, aggregation=strategy)
    fed = Federation("digits", 0, init_head(DIGIT_FEATURES, 10), settings, np.random.default_rng(0))
    names = [f"edge-{i}" for i in range(len(edges))] + (["poisoner"] if poison else [])
    for r in range(20):
        plan = fed.open_round(dict.fromkeys(names, 1000), now_ms=r * 10)
        trained = []
        for name, (x, y) in zip(names, edges, strict=False):
            result = train(fed.params, x, y, TrainSettings(epochs=3, learning_rate=0.1, seed=r))
            assert fed.receive(name, plan.round_id, fed.version, result.params, len(y)).accepted
            trained.append(result.params)
        if poison:
            bad = _poisoned(fed.params, trained[0], poison, r)
            assert fed.receive("poisoner", plan.round_id, fed.version, bad, 1000).accepted
        outcome = fed.poll(now_ms=r * 10 + 1)
        assert outcome is not None and outcome.version == r + 1
    return fed.params


def _poisoned(base: Params, honest: Params, kind: str, seed: int) -> Params:
    if kind == "scaled":  # an honest edge's step, reversed and scaled twentyfold
        return [b - 20.0 * (h - b) for b, h in zip(base, honest, strict=True)]
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 10.0, b.shape).astype(b.dtype) for b in base]


@pytest.mark.slow
def test_fedavg_on_non_iid_digits_nears_centralised_and_beats_every_local(
    split: tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray],
) -> None:
    edges, xte, yte = split
    long = TrainSettings(epochs=30, learning_rate=0.1)
    union_x = np.concatenate([x for x, _ in edges])
    union_y = np.concatenate([y for _, y in edges])
    centralised = accuracy(
        train(init_head(DIGIT_FEATURES, 10), union_x, union_y, long).params, xte, yte
    )
    local = [
        accuracy(train(init_head(DIGIT_FEATURES, 10), x, y, long).params, xte, yte)
        for x, y in edges
    ]
    federated = accuracy(_run(edges, AggregationSettings()), xte, yte)
    assert federated >= centralised - 0.02, (federated, centralised)
    assert federated > max(local), (federated, local)


@pytest.mark.slow
@pytest.mark.parametrize("poison", ["scaled", "garbage"])
def test_multi_krum_neutralises_a_poisoned_edge(
    split: tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray], poison: str
) -> None:
    edges, xte, yte = split
    robust = AggregationSettings(strategy="krum", krum_malicious=1, krum_keep=3)
    clean = accuracy(_run(edges, robust), xte, yte)
    attacked = accuracy(_run(edges, robust, poison), xte, yte)
    plain = accuracy(_run(edges, AggregationSettings(), poison), xte, yte)
    assert attacked >= clean - 0.02, (attacked, clean)
    assert plain < clean - 0.2, "the attack must actually hurt plain FedAvg"
