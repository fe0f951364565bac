"""The life of an offload job (pure code): statuses, allowed transitions, retry backoff.

The statuses are those of the job table the project started from, plus Failed and
Expired. What each means for an offloaded job:

====================== ==========================================================
Enqueue                waiting in the outbox to be sent (new, or a retry is due)
Preprocessing          claimed by the sender; the request is being published
Preprocessing_complete the broker acknowledged the request (PUBACK)
Inferencing            the server said it holds the job (optional ``accepted``)
Inferencing_complete   the server's result is stored
Postprocessing         the result is being handed to the result listener
Postprocessing_complete the listener returned
Exit                   closed with the server's result
Failed                 closed without one: a final server error, N iterations, or shed
                       from a full outbox
Expired                closed without a result at its deadline, or shed unrun by an
                       overloaded server; the local result stands
====================== ==========================================================

A result may overtake the acknowledgements (a retry already re-queued the job, or
PUBACK and result race), so every open state before it accepts the result.
"""

from __future__ import annotations

from enum import StrEnum

from edgefed.errors import OffloadError


class Status(StrEnum):
    ENQUEUE = "Enqueue"
    PREPROCESSING = "Preprocessing"
    PREPROCESSING_COMPLETE = "Preprocessing_complete"
    INFERENCING = "Inferencing"
    INFERENCING_COMPLETE = "Inferencing_complete"
    POSTPROCESSING = "Postprocessing"
    POSTPROCESSING_COMPLETE = "Postprocessing_complete"
    EXIT = "Exit"
    FAILED = "Failed"
    EXPIRED = "Expired"


S = Status
TERMINAL: frozenset[Status] = frozenset({S.EXIT, S.FAILED, S.EXPIRED})
# Waiting for the server: a result, an error or a timeout can end these.
AWAITING: frozenset[Status] = frozenset(
    {S.ENQUEUE, S.PREPROCESSING, S.PREPROCESSING_COMPLETE, S.INFERENCING}
)
# Sent at least once and waiting for an answer (the retry timer applies).
IN_FLIGHT: frozenset[Status] = frozenset({S.PREPROCESSING, S.PREPROCESSING_COMPLETE, S.INFERENCING})
# A result is stored but not yet handed over (resumed after a crash).
DELIVERING: frozenset[Status] = frozenset({S.INFERENCING_COMPLETE, S.POSTPROCESSING})
OPEN: frozenset[Status] = frozenset(Status) - TERMINAL

TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.ENQUEUE: frozenset({S.PREPROCESSING, S.INFERENCING_COMPLETE, S.FAILED, S.EXPIRED}),
    S.PREPROCESSING: frozenset(
        {
            S.PREPROCESSING_COMPLETE,
            S.INFERENCING,
            S.INFERENCING_COMPLETE,
            S.ENQUEUE,
            S.FAILED,
            S.EXPIRED,
        }
    ),
    S.PREPROCESSING_COMPLETE: frozenset(
        {S.INFERENCING, S.INFERENCING_COMPLETE, S.ENQUEUE, S.FAILED, S.EXPIRED}
    ),
    S.INFERENCING: frozenset({S.INFERENCING_COMPLETE, S.ENQUEUE, S.FAILED, S.EXPIRED}),
    S.INFERENCING_COMPLETE: frozenset({S.POSTPROCESSING}),
    S.POSTPROCESSING: frozenset({S.POSTPROCESSING_COMPLETE}),
    S.POSTPROCESSING_COMPLETE: frozenset({S.EXIT}),
    S.EXIT: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
}


def allowed(old: Status, new: Status) -> bool:
    return new in TRANSITIONS[old]


def check(old: Status, new: Status) -> None:
    """Raise ``OffloadError`` for a transition the table does not allow."""
    if not allowed(old, new):
        raise OffloadError(f"job cannot move from {old} to {new}")


def sources(new: Status) -> frozenset[Status]:
    """Every status from which ``new`` may be entered (for ``WHERE status IN (...)``)."""
    return frozenset(old for old, targets in TRANSITIONS.items() if new in targets)


def retry_delay_ms(iteration: int, base_ms: int, cap_ms: int) -> int:
    """Capped exponential backoff before attempt ``iteration`` (1 = first retry)."""
    if iteration < 1:
        return 0
    return min(cap_ms, base_ms * 2 ** min(iteration - 1, 30))


def next_after_failure(iteration: int, max_iterations: int) -> Status:
    """Where a job goes after its ``iteration``-th failed attempt: retry or give up."""
    return S.FAILED if iteration >= max_iterations else S.ENQUEUE
