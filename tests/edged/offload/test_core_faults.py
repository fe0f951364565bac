"""The offload core when the outbox's disk is full: a burst fails at its commit (a WAL
append) or at a write SQLite rolls the whole transaction back for (a real SQLITE_FULL,
SQLite's page limit). A burst is stored whole or not at all, and nothing is lost or
told twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.offload.core import (
    FAULT_BACKOFF_S,
    SWEEP,
    WAKE,
    Link,
    Puback,
    Timer,
)
from edgefed.lifecycle import Status
from tests.edged.offload.corerig import Rig, commits_failing, disk_full


@pytest.mark.parametrize("fault", ["commit", "write"])
def test_a_burst_failing_on_a_full_disk_is_stored_whole_or_not_at_all_then_told_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A full disk fails a burst at its commit (a WAL append) or at a write that needs new
    pages (a real SQLITE_FULL: SQLite rolls the whole transaction back, and the smaller
    result after it must not be stored on its own, never told). Nothing of the burst is
    stored or told, the claims written before included; both replies are acknowledged to
    the broker: the jobs are still open, and their retries ask the server again."""
    rig.burst(WAKE)
    job, other = rig.submit(), rig.submit()
    job_id, other_id = job.request.job_id, other.request.job_id
    rig.burst(job, other)
    size = 200_000 if fault == "write" else 0
    with disk_full(rig) if fault == "write" else commits_failing(rig, monkeypatch):
        assert rig.burst(rig.result(job_id, size=size), rig.result(other_id)) is False
    assert rig.effects.timers[Timer.BACKOFF] == FAULT_BACKOFF_S and not rig.core.ready
    assert rig.core.counters.worker_errors >= 1
    assert rig.effects.told == []  # nothing told: nothing was stored
    assert rig.committed(job_id) == rig.committed(other_id) == "Enqueue"  # claims included
    assert rig.effects.log == [("ack", job_id, "Enqueue"), ("ack", other_id, "Enqueue")]
    assert rig.core.fired(Timer.BACKOFF) == WAKE and rig.core.ready
    del rig.effects.timers[Timer.BACKOFF]
    later = rig.submit()
    rig.burst(WAKE, later)
    assert rig.effects.told == []  # the rolled-back outcomes are gone, not told late
    assert rig.effects.published[-1] == later.request.job_id
    assert rig.committed(later.request.job_id) == "Enqueue"  # its claim deferred
    assert rig.committed(job_id) == "Preprocessing"  # the rolled-back claims, written now
    assert rig.committed(other_id) == "Preprocessing"
    rig.burst(SWEEP)
    assert rig.effects.published.count(job_id) == 1  # not overdue: not sent again
    assert rig.committed(later.request.job_id) == "Preprocessing"
    rig.burst(rig.result(job_id, size=size), rig.result(other_id))  # the server again
    assert [(o.job_id, o.status) for o in rig.effects.told] == [
        (job_id, Status.EXIT),
        (other_id, Status.EXIT),
    ]
    assert rig.effects.log[-4:] == [
        ("tell", job_id, "Postprocessing"),  # told once, after its commit
        ("tell", other_id, "Postprocessing"),
        ("ack", job_id, "Postprocessing"),
        ("ack", other_id, "Postprocessing"),
    ]


def test_writes_carried_by_a_failing_commit_wait_for_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path)
    rig.core.start()
    rig.burst(WAKE)
    delivered, acked, fresh = rig.submit(), rig.submit(), rig.submit()
    rig.burst(delivered, acked)
    rig.burst(rig.result(delivered.request.job_id), Puback(acked.request.job_id))
    assert rig.committed(delivered.request.job_id) == "Postprocessing"  # its close waits
    with commits_failing(rig, monkeypatch):
        assert rig.burst(fresh) is False  # carries the close and the acknowledgement
        assert rig.committed(delivered.request.job_id) == "Postprocessing"
    rig.core.fired(Timer.BACKOFF)
    del rig.effects.timers[Timer.BACKOFF]
    rig.burst(WAKE)
    assert rig.committed(delivered.request.job_id) == "Exit"
    assert rig.committed(acked.request.job_id) == "Preprocessing_complete"
    assert rig.core.counters.completed == 1
    rig.close()
    again = Rig(tmp_path)  # a restart tells nothing twice
    try:
        again.core.start()
        assert again.effects.told == []
    finally:
        again.close()


def test_a_job_shed_to_store_another_is_told_even_if_that_burst_rolls_back(
    tmp_path: Path,
) -> None:
    """The shed job was closed by the store's own commit; a burst that rolls back (a
    result on a full disk) must not take its outcome with it: it is told once, with the
    next burst's outcomes."""
    rig = Rig(tmp_path, max_jobs=2)
    try:
        rig.core.start()
        rig.burst(WAKE)
        sent = rig.submit(priority=5)
        rig.burst(sent)
        low = rig.submit(priority=0)
        rig.burst(low, connected=False)
        high = rig.submit(priority=5)
        assert high.outcome.shed == [low.request.job_id]
        assert rig.committed(low.request.job_id) == "Failed"
        with disk_full(rig):
            assert rig.burst(high, rig.result(sent.request.job_id, size=200_000)) is False
        assert rig.effects.told == []
        rig.fire(Timer.BACKOFF)
        assert [(o.job_id, o.status) for o in rig.effects.told] == [
            (low.request.job_id, Status.FAILED)
        ]
        rig.burst(rig.result(sent.request.job_id))
        rig.burst(SWEEP)
        told = [o.job_id for o in rig.effects.told]
        assert told == [low.request.job_id, sent.request.job_id]  # each once
    finally:
        rig.close()


def test_jobs_claimed_from_the_outbox_by_a_burst_that_rolls_back_are_not_sent_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs that waited in the outbox go out with a burst whose commit fails: they are
    on their way, so their claims wait for the next transaction like those of jobs sent
    from memory; neither the next send nor a sweep publishes them again, and their
    PUBACKs move them on."""
    rig.burst(WAKE)
    jobs = [rig.submit() for _ in range(3)]
    ids = [job.request.job_id for job in jobs]
    rig.burst(*jobs, connected=False)  # the link is down: they wait in the outbox
    with commits_failing(rig, monkeypatch):
        assert rig.burst(Link(True)) is False
    assert rig.effects.published == ids and rig.core.in_flight == 3
    assert [rig.committed(job_id) for job_id in ids] == ["Enqueue"] * 3  # rolled back
    rig.fire(Timer.BACKOFF)
    assert [rig.committed(job_id) for job_id in ids] == ["Preprocessing"] * 3
    rig.burst(*(Puback(job_id) for job_id in ids))
    rig.now += 60
    rig.fire(Timer.SETTLE)
    rig.burst(SWEEP)
    assert rig.effects.published == ids  # each once
    assert [rig.committed(job_id) for job_id in ids] == ["Preprocessing_complete"] * 3
