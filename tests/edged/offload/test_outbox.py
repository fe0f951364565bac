from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlite_utils

from edged.offload.outbox import PRUNE_INTERVAL_MS, Outbox
from edged.offload.records import NewJob, OutboxConfig, sql_in
from edged.offload.schema import MIGRATIONS
from edged.offload.store import PAGE_SIZE
from edgefed import lifecycle as jobs
from edgefed.errors import OffloadError
from edgefed.lifecycle import Status
from edgefed.store import migrate
from edgefed.store.checkpoint import checkpoint, restart
from edgefed.wire import LocalSummary, OffloadRequest

JPEG = b"\xff\xd8" + b"\x00" * 98


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


def job(
    n: int, priority: int = 0, created: int = 0, ttl_ms: int = 60_000, size: int = 100
) -> NewJob:
    created = created or 1_800_000_000_000 + n
    request = OffloadRequest(
        job_id=f"job-{n:08d}",
        device_id="cam-1",
        model="detector",
        priority=priority,
        deadline=created + ttl_ms,
        created=created,
        payload_kind="jpeg",
        metadata={"frame": n},
        local=LocalSummary(box_scores=[0.2]),
    )
    return NewJob(request, b"\xff\xd8" + b"\x00" * (size - 2), "camera-1", "hard_example", {"n": n})


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(tmp_path: Path, clock: Clock, **config: object) -> Outbox:
    settings: dict[str, object] = {
        "path": tmp_path / "outbox.sqlite",
        "retry_base_s": 1.0,
        "retry_cap_s": 4.0,
        "result_timeout_s": 10.0,
        "max_iterations": 3,
    }
    settings.update(config)
    return Outbox(OutboxConfig.model_validate(settings), clock=clock)


def test_claims_highest_priority_first_then_oldest(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    for n, priority in enumerate([0, 5, 0, 9, 5]):
        assert box.enqueue(job(n, priority)).accepted
    claimed = box.claim(10)
    assert [j.id for j, _ in claimed] == [
        "job-00000003",
        "job-00000001",
        "job-00000004",
        "job-00000000",
        "job-00000002",
    ]
    first, body = claimed[0]
    assert first.status == Status.PREPROCESSING
    assert body.startswith(b"\xff\xd8")
    assert box.claim(10) == []
    assert box.counts()["Preprocessing"] == 5


def test_claiming_by_id_takes_only_jobs_still_waiting(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    for n in range(4):
        box.enqueue(job(n))
    assert [j.id for j, _ in box.claim(1)] == ["job-00000000"]
    ids = ["job-00000000", "job-00000001", "job-00000002", "job-unknown"]
    sent_at = clock.now - 40  # the client sent them from memory a moment ago
    assert sorted(box.claim_sent(ids, sent_at)) == ["job-00000001", "job-00000002"]
    assert box.claim_sent(ids) == []
    record = box.get("job-00000001")
    assert record is not None and record.status == Status.PREPROCESSING
    assert record.started == sent_at
    assert record.next_attempt == sent_at + 10_000  # result_timeout_s from the send
    assert [j.id for j, _ in box.claim(10)] == ["job-00000003"]


def test_a_claim_skips_the_jobs_it_is_told_to(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    for n in range(4):
        box.enqueue(job(n))
    skip = ["job-00000000", "job-00000002"]
    assert [j.id for j, _ in box.claim(10, skip=skip)] == ["job-00000001", "job-00000003"]
    assert [j.id for j, _ in box.claim(10)] == ["job-00000000", "job-00000002"]


def test_a_job_moves_through_the_whole_table(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    box.enqueue(job(1))
    ((record, _),) = box.claim(1)
    assert record.request().attempt == 0
    assert box.mark_sent(record.id)
    assert box.mark_accepted(record.id)
    assert box.record_result(record.id, {"results": [1]}) == "recorded"
    assert box.begin_postprocess(record.id) is not None
    clock.advance(0.5)
    assert box.finish(record.id)
    done = box.get(record.id)
    assert done is not None
    assert done.status == Status.EXIT
    assert done.result == {"results": [1]}
    assert done.local_result == {"n": 1}
    assert done.reason == "hard_example"
    assert done.started is not None and done.ended == done.started + 500
    assert box.stats()["open_jobs"] == 0 and box.stats()["open_bytes"] == 0


def test_duplicate_and_late_results_are_ignored_and_counted(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    box.enqueue(job(1))
    box.enqueue(job(2, ttl_ms=1000))
    box.claim(2)
    assert box.record_result("job-00000001", {"v": 1}) == "recorded"
    assert box.record_result("job-00000001", {"v": 2}) == "duplicate"
    stored = box.get("job-00000001")
    assert stored is not None and stored.result == {"v": 1}
    clock.advance(2)
    assert box.sweep(retry_timeouts=True).expired == ["job-00000002"]
    assert box.record_result("job-00000002", {"v": 3}) == "late"
    assert box.record_result("job-99999999", {"v": 4}) == "unknown"
    assert box.stats()["duplicate_results"] == 1 and box.stats()["late_results"] == 1


def test_a_result_for_an_earlier_attempt_still_counts(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    box.enqueue(job(1))
    box.claim(1)
    clock.advance(11)
    assert box.sweep(retry_timeouts=True).retried == ["job-00000001"]
    assert box.record_result("job-00000001", {"ok": True}) == "recorded"


def test_retries_back_off_then_fail_with_the_reason(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    box.enqueue(job(1, ttl_ms=10**9))
    expected_delays = [1.0, 2.0]
    for attempt, delay in enumerate(expected_delays, start=1):
        ((record, _),) = box.claim(1)
        assert record.iteration == attempt - 1
        clock.advance(10)
        assert box.sweep(retry_timeouts=True).retried == [record.id]
        clock.advance(delay - 0.01)
        assert box.claim(1) == []  # not due yet
        clock.advance(0.01)
    ((record, _),) = box.claim(1)
    assert record.request().attempt == 2
    clock.advance(10)
    assert box.sweep(retry_timeouts=True).failed == [record.id]
    failed = box.get(record.id)
    assert failed is not None and failed.status == Status.FAILED
    assert failed.last_error == "no answer from the server in time (after 3 attempts)"


def test_retry_timers_pause_while_the_link_is_down(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    box.enqueue(job(1))
    box.claim(1)
    clock.advance(30)
    assert box.sweep(retry_timeouts=False).retried == []
    box.extend_timers()
    assert box.sweep(retry_timeouts=True).retried == []
    clock.advance(10)
    assert box.sweep(retry_timeouts=True).retried == ["job-00000001"]


def test_server_errors_retry_or_fail(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    box.enqueue(job(1))
    box.enqueue(job(2))
    box.claim(2)
    assert box.record_error("job-00000001", "overloaded: busy", retryable=True) == Status.ENQUEUE
    assert box.record_error("job-00000002", "unknown_model: x", retryable=False) == Status.FAILED
    assert box.record_error("job-00000002", "again", retryable=False) is None
    retried = box.get("job-00000001")
    assert (
        retried is not None and retried.iteration == 1 and retried.last_error == "overloaded: busy"
    )


def test_expiry_leaves_the_local_result_standing(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    box.enqueue(job(1, ttl_ms=500))
    box.enqueue(job(2, ttl_ms=5000))
    clock.advance(1)
    assert box.claim(5)[0][0].id == "job-00000002"  # an expired job is never sent
    assert box.sweep(retry_timeouts=True).expired == ["job-00000001"]
    expired = box.get("job-00000001")
    assert expired is not None and expired.status == Status.EXPIRED
    assert expired.local_result == {"n": 1}
    assert "local result stands" in (expired.last_error or "")


def test_sheds_oldest_lowest_priority_at_the_row_bound(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock, max_jobs=3)
    box.enqueue(job(1, priority=5))
    box.enqueue(job(2, priority=1))
    box.enqueue(job(3, priority=1))
    outcome = box.enqueue(job(4, priority=5))
    assert outcome.accepted and outcome.shed == ["job-00000002"]
    outcome = box.enqueue(job(5, priority=0))  # lower than everything queued: refused itself
    assert not outcome.accepted
    shed = box.get("job-00000002")
    assert shed is not None and shed.status == Status.FAILED and "shed" in (shed.last_error or "")
    assert box.get("job-00000005") is None
    assert box.stats()["shed"] == 2
    assert box.stats()["open_jobs"] == 3


def test_never_sheds_a_newer_job_of_the_same_priority(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock, max_jobs=1)
    box.enqueue(job(2, priority=3))
    assert not box.enqueue(job(1, priority=3)).accepted  # made earlier than the queued one


def test_sheds_at_the_byte_bound(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock, max_bytes=1000)
    for n in range(4):
        box.enqueue(job(n, size=300))
    assert box.counts()["Failed"] == 1 and box.stats()["open_bytes"] == 900
    assert not box.enqueue(job(9, size=2000)).accepted  # larger than the whole bound
    assert box.get("job-00000000") is not None


def payload_ids(path: Path) -> set[str]:
    db = sqlite_utils.Database(path)
    try:
        return {row["id"] for row in db.query("SELECT id FROM payloads")}
    finally:
        db.close()


def test_a_closed_job_leaves_no_payload_behind(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock, max_jobs=3, max_iterations=1)
    box.enqueue(job(1, ttl_ms=500))  # will expire
    box.enqueue(job(2))  # will finish
    box.enqueue(job(3))  # will fail
    box.claim(3)
    assert box.mark_sent("job-00000002") and box.mark_sent("job-00000003")
    box.record_result("job-00000002", {"results": []})
    box.begin_postprocess("job-00000002")
    assert box.finish("job-00000002")
    assert box.record_error("job-00000003", "bad_request: no", retryable=False) == Status.FAILED
    clock.advance(1)
    assert box.sweep(retry_timeouts=True).expired == ["job-00000001"]
    box.enqueue(job(4, priority=1))
    box.enqueue(job(5, priority=1))
    box.enqueue(job(6, priority=1))
    assert box.enqueue(job(7, priority=2)).shed == ["job-00000004"]
    assert payload_ids(tmp_path / "outbox.sqlite") == {f"job-0000000{n}" for n in (5, 6, 7)}
    # a shed whose transaction rolls back (the new job is a duplicate) keeps its payload
    with pytest.raises(OffloadError, match="already in the outbox"):
        box.enqueue(job(7, priority=3))
    assert payload_ids(tmp_path / "outbox.sqlite") == {f"job-0000000{n}" for n in (5, 6, 7)}
    assert box.counts()["Enqueue"] == 3
    box.close()


def test_jobs_survive_reopening_and_recover_mid_publish(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    for n in range(3):
        box.enqueue(job(n))
    box.claim(2)
    box.mark_sent("job-00000000")
    box.close()
    again = make(tmp_path, clock)
    assert again.stats()["open_jobs"] == 3 and again.stats()["open_bytes"] == 300
    assert again.recover() == []
    counts = again.counts()
    assert counts["Enqueue"] == 2 and counts["Preprocessing_complete"] == 1


def test_recover_returns_results_not_yet_delivered(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    box.enqueue(job(1))
    box.claim(1)
    box.record_result("job-00000001", {"ok": 1})
    assert [j.id for j in box.recover()] == ["job-00000001"]


def test_finished_jobs_are_pruned_to_the_retention(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock, keep_finished=2)
    for n in range(5):
        box.enqueue(job(n, ttl_ms=100))
        clock.advance(0.001)
    clock.advance(1)
    box.sweep(retry_timeouts=True)  # expires all five and prunes to two
    assert sum(box.counts().values()) == 2
    for n in range(5, 8):
        box.enqueue(job(n, created=clock.now, ttl_ms=100))
    clock.advance(1)
    box.sweep(retry_timeouts=True)  # expires three; pruning waits for its interval
    assert box.counts()["Expired"] == 5
    clock.advance(PRUNE_INTERVAL_MS / 1000)
    box.sweep(retry_timeouts=True)
    assert sum(box.counts().values()) == 2


def test_a_clock_that_stepped_back_prunes_at_once_rather_than_never(
    tmp_path: Path, clock: Clock
) -> None:
    """After the clock the jobs are timed on stepped back an hour, pruning waited for it
    to catch up (an hour with the database growing); now the next sweep prunes."""
    box = make(tmp_path, clock, keep_finished=2)
    for n in range(5):
        box.enqueue(job(n, created=clock.now, ttl_ms=100))
    clock.advance(1)
    box.sweep(retry_timeouts=True)
    assert sum(box.counts().values()) == 2
    clock.now -= 3_600_000
    for n in range(5, 8):
        box.enqueue(job(n, created=clock.now, ttl_ms=100))
    clock.advance(1)
    box.sweep(retry_timeouts=True)
    assert sum(box.counts().values()) == 2


def test_open_jobs_move_with_the_clock_they_were_timed_on(tmp_path: Path, clock: Clock) -> None:
    """``shift_open``: serverd's clock was learnt an hour ahead of the device's. The open
    jobs stored after the given row move; closed ones and older ones stay."""
    box = make(tmp_path, clock)
    box.enqueue(job(0, created=clock.now))  # a job of an earlier run, on serverd's clock
    first = box.last_rowid()
    for n in (1, 2, 3):
        box.enqueue(job(n, created=clock.now))
    box.claim(4)
    assert box.record_error("job-00000003", "bad_request: no", retryable=False) is not None
    assert box.shift_open(3_600_000, first) == 2
    moved = {n: box.get(f"job-{n:08d}") for n in range(4)}
    assert all(r is not None for r in moved.values())
    assert moved[0].created == clock.now  # type: ignore[union-attr]
    assert moved[3].created == clock.now  # type: ignore[union-attr]  # closed
    for n in (1, 2):
        record = moved[n]
        assert record is not None and record.created == clock.now + 3_600_000
        assert record.deadline == clock.now + 3_600_000 + 60_000
        assert record.request().created == record.created  # what goes on the wire


def test_paging_newest_first_and_by_status(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    for n in range(5):
        box.enqueue(job(n))
    box.claim(2)
    assert [j.id for j in box.page(limit=2)] == ["job-00000004", "job-00000003"]
    assert [j.id for j in box.page(limit=2, offset=2)] == ["job-00000002", "job-00000001"]
    page = box.page(statuses=[Status.PREPROCESSING])
    assert {j.id for j in page} == {"job-00000000", "job-00000001"}
    assert page[0].as_dict()["status"] == "Preprocessing"


def test_a_job_id_is_stored_once(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    box.enqueue(job(1))
    with pytest.raises(OffloadError, match="already in the outbox"):
        box.enqueue(job(1))
    assert box.stats()["open_jobs"] == 1


def test_a_duplicate_sheds_nothing_even_when_the_outbox_is_full(
    tmp_path: Path, clock: Clock
) -> None:
    box = make(tmp_path, clock, max_jobs=2)
    box.enqueue(job(1, priority=1))
    box.enqueue(job(2, priority=5))
    with pytest.raises(OffloadError, match="already in the outbox"):
        box.enqueue(job(2, priority=5))  # would shed job 1 if it were new
    with pytest.raises(OffloadError, match="already in the outbox"):
        box.enqueue(job(1, priority=0))  # would be refused if it were new
    assert box.counts()["Enqueue"] == 2 and box.counts()["Failed"] == 0
    assert box.stats()["shed"] == 0 and box.stats()["open_jobs"] == 2


def test_checkpoints_run_off_the_committing_thread(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock)
    for n in range(3):
        box.enqueue(job(n))
    checkpointer = box._checkpointer
    deadline = time.monotonic() + 5
    while checkpointer.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpointer.runs >= 1 and checkpointer.errors == 0
    box.close()
    assert not checkpointer.running
    again = make(tmp_path, clock)
    assert again.stats()["open_jobs"] == 3


def test_a_restart_makes_the_next_commit_write_from_the_start_of_the_wal(
    tmp_path: Path,
) -> None:
    """``checkpoint`` (passive) reports the WAL's frames; ``restart`` on the writer's own
    connection starts the WAL over. (Why it matters, with commits racing the
    checkpoints: tests/serverd/test_jobtable.py.)"""
    path = tmp_path / "w.sqlite"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x BLOB)")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        for _ in range(40):
            writer.execute("INSERT INTO t VALUES (randomblob(3000))")
        writer.execute("BEGIN")  # a read taken before the checkpoint ended: no restart
        writer.execute("SELECT count(*) FROM t").fetchone()
        assert checkpoint(other) >= 40
        writer.execute("INSERT INTO t VALUES (randomblob(3000))")
        writer.execute("COMMIT")
        assert checkpoint(other) > 40  # appended after the copied frames
        restart(writer)
        writer.execute("INSERT INTO t VALUES (randomblob(3000))")
        assert checkpoint(other) < 10  # the last commit's own pages, from the WAL's start
        assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == 42
    finally:
        writer.close()
        other.close()


def test_migrations_are_named_recorded_and_applied_once(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "m.sqlite")
    assert migrate(db, MIGRATIONS, OffloadError, "outbox") == [name for name, _ in MIGRATIONS]
    assert migrate(db, MIGRATIONS, OffloadError, "outbox") == []
    assert [r["name"] for r in db.query("SELECT name FROM _migrations")] == ["0001_create_jobs"]
    db.execute("INSERT INTO _migrations VALUES ('9999_from_the_future', 0)")
    with pytest.raises(OffloadError, match="outbox was migrated by a newer release"):
        migrate(db, MIGRATIONS, OffloadError, "outbox")


def test_database_is_in_wal_mode(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path, clock, synchronous="FULL")
    box.close()
    db = sqlite_utils.Database(tmp_path / "outbox.sqlite")
    assert db.journal_mode == "wal"
    assert db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE


def test_an_unusable_database_path_is_a_clear_error(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(OffloadError, match=r"dir\.sqlite"):
        make(tmp_path, clock, path=tmp_path / "dir.sqlite")


@pytest.mark.parametrize(
    ("where", "index"),
    [
        (f"status IN {sql_in([Status.ENQUEUE])} ORDER BY priority DESC, created", "jobs_claim"),
        (f"status IN {sql_in(jobs.IN_FLIGHT)} AND next_attempt <= 5", "jobs_timer"),
        (f"status IN {sql_in(jobs.AWAITING)} AND deadline <= 5", "jobs_deadline"),
    ],
)
def test_the_hot_queries_use_their_partial_indexes(
    tmp_path: Path, clock: Clock, where: str, index: str
) -> None:
    make(tmp_path, clock).close()
    db = sqlite_utils.Database(tmp_path / "outbox.sqlite")
    plan = " ".join(
        str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE {where}")
    )
    assert index in plan


def test_an_outbox_locked_by_another_process_refuses_a_job_with_an_offload_error(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock past the busy timeout: ``enqueue`` fails with
    ``OffloadError`` naming the file (the dispatcher counts it as refused), and works again
    once the lock is gone."""
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(OutboxConfig(path=path))
    script = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    locker = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        with pytest.raises(OffloadError, match=rf"^outbox {path}: database is locked$"):
            outbox.enqueue(job(1))
    finally:
        locker.communicate("", timeout=10)
    try:
        assert outbox.enqueue(job(2)).accepted
        assert outbox.stats()["open_jobs"] == 1
    finally:
        outbox.close()
