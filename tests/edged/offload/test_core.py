"""The offload core alone: driven synchronously, with a real outbox on a temporary file.

Time is a fake clock shared by the core and the outbox; the effects are recorded. What
is committed is read through a second SQLite connection, which sees only commits.
"""

from __future__ import annotations

from pathlib import Path

from edged.offload.core import (
    SETTLE_DELAY_S,
    SWEEP,
    WAKE,
    Link,
    Puback,
    ReplyIn,
    Submitted,
    Timer,
)
from edgefed.lifecycle import Status
from edgefed.wire import (
    OffloadAccepted,
    OffloadErrorMessage,
    decode_request,
)
from tests.edged.offload.corerig import Rig


def test_start_sweeps_at_once_and_then_every_interval_and_stop_cancels(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        rig.core.start()
        assert rig.effects.timers == {Timer.SWEEP: 0.0}
        del rig.effects.timers[Timer.SWEEP]
        assert rig.core.fired(Timer.SWEEP) == SWEEP
        assert rig.effects.timers == {Timer.SWEEP: 0.25}
        rig.core.stop()
        assert rig.effects.timers == {} and not rig.core.ready
    finally:
        rig.close()


def test_a_fresh_job_goes_out_from_memory_and_its_claim_waits_for_the_next_commit(
    rig: Rig,
) -> None:
    rig.burst(WAKE)  # the backlog check at start: nothing due
    job = rig.submit()
    published_at = rig.now
    assert rig.burst(job) is False
    assert rig.effects.published == [job.request.job_id]
    assert rig.effects.frames[job.request.job_id] == job.frame  # the frame not read back
    assert rig.committed(job.request.job_id) == "Enqueue"  # the claim is not written yet
    assert rig.effects.timers[Timer.SETTLE] == SETTLE_DELAY_S
    rig.now += 30
    rig.fire(Timer.SETTLE)
    assert rig.committed(job.request.job_id) == "Preprocessing"
    assert rig.row(job.request.job_id, "started") == published_at  # counted from the send
    assert rig.core.in_flight == 1 and rig.core.counters.sent == 1


def test_a_burst_is_one_commit_with_the_jobs_it_lets_out(rig: Rig) -> None:
    rig.burst(WAKE)
    jobs = [rig.submit() for _ in range(3)]
    rig.burst(*jobs)
    commits = rig.commits
    done, later = jobs[:2], rig.submit()
    rig.burst(*(rig.result(j.request.job_id) for j in done), later)
    assert rig.commits == commits + 1
    assert rig.effects.published[-1] == later.request.job_id
    # both outcomes are told after the one commit that stored both results
    told = [entry for entry in rig.effects.log if entry[0] == "tell"]
    assert told == [("tell", j.request.job_id, "Postprocessing") for j in done]


def test_a_reply_is_acknowledged_after_its_commit_and_its_outcome(rig: Rig) -> None:
    rig.burst(WAKE)
    job = rig.submit(n=5)
    rig.burst(job)
    job_id = job.request.job_id
    rig.burst(rig.result(job_id))
    assert rig.effects.log == [
        ("tell", job_id, "Postprocessing"),
        ("ack", job_id, "Postprocessing"),
    ]
    outcome = rig.effects.told[0]
    assert outcome.status == Status.EXIT and outcome.local_result == {"n": 5}
    assert outcome.result is not None and outcome.result.results == [{"ok": 1}]
    # the close waits for the next transaction, within SETTLE_DELAY_S
    assert rig.effects.timers[Timer.SETTLE] == SETTLE_DELAY_S
    rig.fire(Timer.SETTLE)
    assert rig.committed(job_id) == "Exit" and rig.core.counters.completed == 1


def test_an_outcome_is_told_once(rig: Rig) -> None:
    rig.burst(WAKE)
    job = rig.submit()
    rig.burst(job)
    job_id = job.request.job_id
    rig.burst(rig.result(job_id))
    rig.burst(rig.result(job_id))
    rig.fire(Timer.SETTLE)
    rig.burst(rig.result(job_id))
    assert [o.job_id for o in rig.effects.told] == [job_id]
    assert rig.core.counters.duplicate_results == 2
    assert [entry[0] for entry in rig.effects.log].count("ack") == 3  # each acknowledged


def test_pubacks_alone_open_no_transaction_and_are_written_with_the_next(rig: Rig) -> None:
    rig.burst(WAKE)
    jobs = [rig.submit() for _ in range(3)]
    rig.burst(*jobs)
    rig.fire(Timer.SETTLE)  # the claims
    commits = rig.commits
    rig.burst(*(Puback(j.request.job_id) for j in jobs))
    assert rig.commits == commits  # no transaction for acknowledgements alone
    assert rig.core.in_flight == 0 and rig.core.counters.acked == 3
    assert {rig.committed(j.request.job_id) for j in jobs} == {"Preprocessing"}
    assert rig.effects.timers[Timer.SETTLE] == SETTLE_DELAY_S
    rig.fire(Timer.SETTLE)
    assert {rig.committed(j.request.job_id) for j in jobs} == {"Preprocessing_complete"}


def test_stop_writes_the_claims_acks_and_closes_that_wait(rig: Rig) -> None:
    rig.burst(WAKE)
    first, second = rig.submit(), rig.submit()
    rig.burst(first, second)
    rig.burst(Puback(first.request.job_id), rig.result(second.request.job_id))
    rig.core.stop()
    assert rig.committed(first.request.job_id) == "Preprocessing_complete"
    assert rig.committed(second.request.job_id) == "Exit"
    assert rig.effects.timers == {}


def test_at_most_window_requests_await_their_puback(tmp_path: Path) -> None:
    rig = Rig(tmp_path, window=2)
    try:
        rig.core.start()
        rig.burst(WAKE)
        jobs = [rig.submit() for _ in range(5)]
        again = rig.burst(*jobs)
        assert len(rig.effects.published) == 2 and again is False  # the window is full
        assert rig.burst(Puback(rig.effects.published[0])) is False
        assert len(rig.effects.published) == 3
        rig.burst(*(Puback(job_id) for job_id in rig.effects.published[1:]))
        assert len(rig.effects.published) == 5
        assert sorted(rig.effects.published) == sorted(j.request.job_id for j in jobs)
    finally:
        rig.close()


def test_jobs_go_out_in_priority_order_when_the_link_returns(rig: Rig) -> None:
    jobs = []
    for priority in [1, 7, 3, 7, 0, 3]:
        jobs.append((rig.submit(priority=priority), priority))
        rig.now += 1
    rig.burst(*(job for job, _ in jobs), connected=False)
    assert rig.effects.published == []  # they wait in the outbox for the link
    rig.burst(Link(True))
    expected = [job.request.job_id for job, _ in sorted(jobs, key=lambda jp: -jp[1])]
    assert rig.effects.published == expected
    assert {rig.committed(job_id) for job_id in expected} == {"Preprocessing"}


def test_fresh_jobs_of_one_burst_go_out_highest_priority_first(rig: Rig) -> None:
    rig.burst(WAKE)
    jobs = [rig.submit(priority=p) for p in (0, 5, 2)]
    rig.burst(*jobs)
    assert rig.effects.published == [jobs[i].request.job_id for i in (1, 2, 0)]


def test_a_backlog_and_fresh_jobs_go_out_once_each_from_the_outbox(rig: Rig) -> None:
    backlog = rig.submit(priority=1)
    rig.burst(backlog, connected=False)
    fresh = rig.submit(priority=9)
    rig.burst(fresh)  # a backlog: the fresh job is claimed from the outbox in its place
    assert rig.effects.published == [fresh.request.job_id, backlog.request.job_id]
    assert rig.committed(fresh.request.job_id) == "Preprocessing"  # claimed, not deferred
    rig.burst(SWEEP)
    assert len(rig.effects.published) == 2


def test_a_job_whose_submission_has_not_arrived_is_not_sent_from_the_outbox(rig: Rig) -> None:
    job = rig.submit()
    rig.submitting.add(job.request.job_id)  # stored; its event not yet handed over
    for _ in range(3):
        rig.burst(SWEEP)  # each sends from the outbox
    assert rig.effects.published == []
    rig.submitting.clear()
    rig.burst(job)
    rig.burst(SWEEP)
    assert rig.effects.published == [job.request.job_id]


def test_jobs_whose_rows_moved_with_the_clock_go_out_re_encoded(rig: Rig) -> None:
    """serverd's clock was learnt an hour ahead and the open rows moved: a submission
    posted before (its frame made on the old clock, ``frame=None`` from the client) and a
    fresh frame still held in memory (``reframe``) both go out as their moved rows say."""
    rig.burst(WAKE)
    held = rig.submit()
    rig.burst(held, connected=False)  # the link is down: its frame waits in memory
    posted = rig.submit()
    rig.now += 3_600_000  # the clock moved, and the rows with it
    rig.outbox.shift_open(3_600_000)
    rig.core.reframe()
    rig.burst(Submitted(posted.outcome, posted.request, None))
    assert sorted(rig.effects.published) == sorted([held.request.job_id, posted.request.job_id])
    for job in (held, posted):
        sent = decode_request(rig.effects.frames[job.request.job_id]).request
        assert sent.deadline == job.request.deadline + 3_600_000
        assert sent.created == job.request.created + 3_600_000


def test_a_job_that_cannot_be_published_is_due_again(rig: Rig) -> None:
    rig.burst(WAKE)
    job = rig.submit()
    job_id = job.request.job_id
    rig.effects.refuse.add(job_id)
    assert rig.burst(job) is True  # still due: the next burst sends from the outbox
    assert rig.burst(WAKE) is False  # refused again: released, not retried
    assert rig.committed(job_id) == "Enqueue" and rig.row(job_id, "iteration") == 0
    assert "not connected" in rig.row(job_id, "last_error")
    rig.effects.refuse.clear()
    rig.burst(SWEEP)
    assert rig.effects.published == [job_id] and Timer.BACKOFF not in rig.effects.timers


def test_a_job_that_never_can_be_published_fails_at_once_and_the_others_go(rig: Rig) -> None:
    """A request larger than the broker takes fails its job in the burst that tried it,
    sent fresh or claimed from the outbox (after a restart, say); the reason is stored
    and told, and the jobs beside it are published."""
    rig.burst(WAKE)
    fresh, small = rig.submit(), rig.submit()
    rig.effects.too_large.add(fresh.request.job_id)
    rig.burst(fresh, small)
    stored, later = rig.submit(), rig.submit()
    rig.effects.too_large.add(stored.request.job_id)
    rig.burst(Submitted(stored.outcome, stored.request, None), later)  # from the outbox
    failed = [fresh.request.job_id, stored.request.job_id]
    assert rig.effects.published == [small.request.job_id, later.request.job_id]
    assert [(o.job_id, o.status) for o in rig.effects.told] == [(j, Status.FAILED) for j in failed]
    for job_id in failed:
        assert rig.committed(job_id) == "Failed"
        assert rig.row(job_id, "last_error") == "larger than the broker takes"
    assert rig.effects.told[0].reason == "larger than the broker takes"
    assert (rig.core.counters.failed, rig.core.counters.too_large) == (2, 2)
    assert Timer.BACKOFF not in rig.effects.timers


def test_no_answer_is_retried_with_backoff_and_the_deadline_expires_the_job(rig: Rig) -> None:
    rig.burst(WAKE)
    job = rig.submit(ttl_ms=5_000, n=3)
    job_id = job.request.job_id
    rig.burst(job)
    rig.burst(Puback(job_id), rig.result("0123456789abcdef"))  # an unknown job's result
    assert rig.core.counters.unknown_results == 1
    rig.now += 1_001  # past result_timeout_s
    rig.burst(SWEEP)
    assert rig.committed(job_id) == "Enqueue" and rig.core.counters.retried == 1
    assert rig.effects.published == [job_id]  # not before its retry delay
    rig.now += 500
    rig.burst(SWEEP)
    assert rig.effects.published == [job_id, job_id]
    assert decode_request(rig.effects.frames[job_id]).request.attempt == 1
    rig.now += 5_000
    rig.burst(SWEEP)
    outcome = rig.effects.told[-1]
    assert outcome.status == Status.EXPIRED and outcome.local_result == {"n": 3}
    assert "local result stands" in outcome.reason and rig.core.counters.expired == 1
    assert rig.effects.log[-1] == ("tell", job_id, "Expired")


def test_retry_timers_pause_while_the_link_is_down(rig: Rig) -> None:
    rig.burst(WAKE)
    job = rig.submit()
    job_id = job.request.job_id
    rig.burst(job)
    rig.burst(Puback(job_id), Link(False))
    rig.now += 5_000
    rig.burst(SWEEP, connected=False)
    assert rig.committed(job_id) == "Preprocessing_complete"
    assert rig.core.counters.retried == 0
    rig.burst(Link(True), SWEEP)  # the job gets a full timeout again
    assert rig.committed(job_id) == "Preprocessing_complete"
    rig.now += 1_001
    rig.burst(SWEEP)
    assert rig.committed(job_id) == "Enqueue" and rig.core.counters.retried == 1


def test_server_errors_retry_or_fail_and_accepted_is_recorded(rig: Rig) -> None:
    rig.burst(WAKE)
    retried, failed = rig.submit(), rig.submit()
    rig.burst(retried, failed)
    accepted = OffloadAccepted(job_id=retried.request.job_id, device_id="cam-1", served_by="s")
    rig.burst(ReplyIn(accepted, lambda: None))
    assert rig.committed(retried.request.job_id) == "Inferencing"
    rig.burst(rig.error(retried.request.job_id, True), rig.error(failed.request.job_id, False))
    assert rig.committed(retried.request.job_id) == "Enqueue"
    assert [(o.job_id, o.status) for o in rig.effects.told] == [
        (failed.request.job_id, Status.FAILED)
    ]
    counters = rig.core.counters
    assert (counters.accepted, counters.errors, counters.retried, counters.failed) == (1, 2, 1, 1)


def test_a_job_the_server_shed_closes_expired_with_its_local_result_and_is_counted(
    rig: Rig,
) -> None:
    rig.burst(WAKE)
    job = rig.submit(n=7)
    rig.burst(job)
    shed = OffloadErrorMessage(
        job_id=job.request.job_id,
        device_id="cam-1",
        code="shed",
        reason="shed under overload (predicted wait 90 ms > 40 ms at priority 0)",
        retryable=False,
    )
    rig.burst(ReplyIn(shed, lambda: None))
    assert rig.committed(job.request.job_id) == "Expired"
    [told] = rig.effects.told
    assert (told.status, told.local_result) == (Status.EXPIRED, {"n": 7})
    assert "predicted wait" in told.reason
    counters = rig.core.counters
    assert (counters.expired, counters.shed_by_server, counters.failed) == (1, 1, 0)
    assert rig.effects.published == [job.request.job_id]  # never sent again


def test_shed_jobs_are_told_as_failed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_jobs=1)
    try:
        rig.core.start()
        low = rig.submit(priority=0)
        rig.burst(low, connected=False)
        high = rig.submit(priority=5)
        assert high.outcome.shed == [low.request.job_id]
        rig.burst(high, connected=False)
        assert [(o.job_id, o.status) for o in rig.effects.told] == [
            (low.request.job_id, Status.FAILED)
        ]
        assert "shed" in rig.effects.told[0].reason
    finally:
        rig.close()


def test_after_a_restart_stored_results_are_delivered_and_mid_publish_jobs_sent_again(
    tmp_path: Path,
) -> None:
    first = Rig(tmp_path)
    first.core.start()
    stored, told, caught = [first.submit(n=n) for n in range(3)]  # created in this order
    first.burst(stored, told, caught)
    first.burst(first.result(stored.request.job_id))  # told, but not closed: edged dies
    first.outbox.record_result(told.request.job_id, {"job_id": told.request.job_id,
        "device_id": "cam-1", "model": "det", "results": [], "served_by": "s",
        "completed": first.now})  # fmt: skip
    first.close()  # edged dies: "caught" is still Preprocessing (mid-publish)
    again = Rig(tmp_path)
    try:
        again.core.start()
        assert [o.job_id for o in again.effects.told] == [
            stored.request.job_id,  # in Postprocessing: told again
            told.request.job_id,  # stored result: told now
        ]
        assert again.effects.log[1] == ("tell", told.request.job_id, "Postprocessing")
        assert again.effects.told[1].result is not None
        again.burst(SWEEP)
        assert again.effects.published == [caught.request.job_id]  # sent again
        assert again.committed(stored.request.job_id) == "Exit"
        assert again.committed(told.request.job_id) == "Exit"
    finally:
        again.close()
