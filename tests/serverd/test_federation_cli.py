"""``serverd federation history``'s lines: a recent round names its devices, an older
one, whose device lists serverd no longer keeps, says how many there were."""

from __future__ import annotations

from serverd.federation.cli import format_round
from serverd.federation.rounds import RoundOutcome


def _outcome() -> RoundOutcome:
    return RoundOutcome(
        round_id=4,
        base_version=4,
        version=5,
        params=None,
        accepted=("edge-0", "edge-1"),
        rejected={"edge-2": "stale base version 3, round is on 4"},
        missing=("edge-3",),
        opened_ms=1_000,
        closed_ms=1_600,
    )


def test_a_recent_round_names_its_devices_and_an_older_one_counts_them() -> None:
    recent = _outcome()
    assert format_round(recent.record()) == (
        "round 4: v4 -> v5 in 0.6s, accepted edge-0, edge-1; "
        "edge-2 rejected: stale base version 3, round is on 4"
    )
    assert format_round(recent.summary().record()) == (
        "round 4: v4 -> v5 in 0.6s, accepted 2, rejected 1, missing 1 (devices no longer listed)"
    )
