from __future__ import annotations

import itertools

import pytest

from edgefed import lifecycle
from edgefed.errors import OffloadError
from edgefed.lifecycle import Status

HAPPY_PATH = [
    Status.ENQUEUE,
    Status.PREPROCESSING,
    Status.PREPROCESSING_COMPLETE,
    Status.INFERENCING,
    Status.INFERENCING_COMPLETE,
    Status.POSTPROCESSING,
    Status.POSTPROCESSING_COMPLETE,
    Status.EXIT,
]


def test_statuses_are_the_job_table_names() -> None:
    assert [str(s) for s in HAPPY_PATH] == [
        "Enqueue",
        "Preprocessing",
        "Preprocessing_complete",
        "Inferencing",
        "Inferencing_complete",
        "Postprocessing",
        "Postprocessing_complete",
        "Exit",
    ]
    assert {str(s) for s in Status} - {str(s) for s in HAPPY_PATH} == {"Failed", "Expired"}


def test_the_happy_path_is_allowed_step_by_step() -> None:
    for old, new in itertools.pairwise(HAPPY_PATH):
        lifecycle.check(old, new)


def test_terminal_states_are_final() -> None:
    for terminal in lifecycle.TERMINAL:
        for new in Status:
            assert not lifecycle.allowed(terminal, new)
        with pytest.raises(OffloadError, match=f"from {terminal}"):
            lifecycle.check(terminal, Status.ENQUEUE)


def test_a_result_is_accepted_from_every_waiting_state() -> None:
    assert lifecycle.sources(Status.INFERENCING_COMPLETE) == lifecycle.AWAITING


def test_only_waiting_jobs_expire_or_retry() -> None:
    assert lifecycle.sources(Status.EXPIRED) == lifecycle.AWAITING
    assert lifecycle.sources(Status.ENQUEUE) == lifecycle.IN_FLIGHT
    assert not lifecycle.allowed(Status.INFERENCING_COMPLETE, Status.EXPIRED)
    assert not lifecycle.allowed(Status.POSTPROCESSING, Status.ENQUEUE)


def test_backoff_doubles_and_caps() -> None:
    delays = [lifecycle.retry_delay_ms(i, 500, 5000) for i in range(0, 8)]
    assert delays == [0, 500, 1000, 2000, 4000, 5000, 5000, 5000]
    assert lifecycle.retry_delay_ms(10_000, 500, 5000) == 5000


def test_fails_after_max_iterations() -> None:
    assert lifecycle.next_after_failure(1, 3) == Status.ENQUEUE
    assert lifecycle.next_after_failure(2, 3) == Status.ENQUEUE
    assert lifecycle.next_after_failure(3, 3) == Status.FAILED
