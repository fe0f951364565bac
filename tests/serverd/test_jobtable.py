"""serverd's job table on a real SQLite file: dedupe, statuses, stored replies, restarts."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlite_utils

from edgefed.errors import OffloadError
from edgefed.lifecycle import Status
from edgefed.store import migrate
from edgefed.wire import OffloadRequest
from serverd.jobtable import (
    BATCH,
    INTERRUPTED,
    MIGRATIONS,
    TICK_BATCHES,
    Admission,
    JobTable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        self.now += 1
        return self.now


def request(job_id: str = "job-0001", device_id: str = "site/cam-1") -> OffloadRequest:
    return OffloadRequest(
        job_id=job_id,
        device_id=device_id,
        model="person",
        priority=3,
        deadline=2_000_000,
        created=999_000,
        payload_kind="jpeg",
    )


@pytest.fixture
def table(tmp_path: Path) -> JobTable:
    return JobTable(tmp_path / "jobs.sqlite", clock=Clock())


def test_first_delivery_runs_and_a_duplicate_while_running_is_dropped(table: JobTable) -> None:
    assert table.admit(request()).kind is Admission.NEW
    table.started(("site/cam-1", "job-0001"), "local-0", 0)
    assert table.admit(request()).kind is Admission.RUNNING
    row = table.get(("site/cam-1", "job-0001"))
    assert row is not None
    assert row["status"] == "Inferencing" and row["instance"] == "local-0"
    assert row["deliveries"] == 2 and row["device_id"] == "site/cam-1" and row["priority"] == 3


def test_a_duplicate_of_a_finished_job_gets_the_stored_reply(table: JobTable) -> None:
    table.admit(request())
    table.started(("site/cam-1", "job-0001"), "local-0", 0)
    table.finish(("site/cam-1", "job-0001"), Status.EXIT, b"encoded-result")
    again = table.admit(request())
    assert again.kind is Admission.DONE and again.reply == b"encoded-result"
    row = table.get(("site/cam-1", "job-0001"))
    assert row is not None and row["status"] == "Exit" and row["ended"] >= row["started"]


def test_a_final_error_is_resent_but_a_retryable_one_runs_again(table: JobTable) -> None:
    table.admit(request("job-final1"))
    table.finish(
        ("site/cam-1", "job-final1"), Status.FAILED, b"err", error="unknown model", retryable=False
    )
    assert table.admit(request("job-final1")).reply == b"err"
    table.admit(request("job-retry1"))
    table.finish(
        ("site/cam-1", "job-retry1"), Status.FAILED, b"err", error="no instance", retryable=True
    )
    assert table.admit(request("job-retry1")).kind is Admission.NEW
    row = table.get(("site/cam-1", "job-retry1"))
    assert row is not None and row["status"] == "Enqueue" and row["error"] is None


def test_requeue_and_iterations_are_recorded(table: JobTable) -> None:
    table.admit(request())
    table.started(("site/cam-1", "job-0001"), "local-0", 0)
    table.requeued(("site/cam-1", "job-0001"))
    table.started(("site/cam-1", "job-0001"), "local-1", 1)
    row = table.get(("site/cam-1", "job-0001"))
    assert row is not None and row["iteration"] == 1 and row["instance"] == "local-1"
    assert table.counts() == {"Inferencing": 1}


def test_a_restart_interrupts_open_jobs_so_their_redelivery_runs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    first = JobTable(path, clock=Clock())
    first.admit(request("job-open01"))
    first.admit(request("job-done01"))
    first.finish(("site/cam-1", "job-done01"), Status.EXIT, b"ok")
    first.close()
    second = JobTable(path, clock=Clock())
    assert second.interrupted == 1
    row = second.get(("site/cam-1", "job-open01"))
    assert row is not None and row["status"] == "Failed" and row["error"] == INTERRUPTED
    assert second.admit(request("job-open01")).kind is Admission.NEW
    assert second.admit(request("job-done01")).reply == b"ok"


def test_prune_deletes_old_finished_jobs_only(table: JobTable) -> None:
    table.admit(request("job-old001"))
    table.finish(("site/cam-1", "job-old001"), Status.EXIT, b"ok")
    table.admit(request("job-open01"))
    assert table.prune(older_than_ms=10**12) == 1
    assert (
        table.get(("site/cam-1", "job-old001")) is None
        and table.get(("site/cam-1", "job-open01")) is not None
    )


def test_migrations_are_recorded_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    JobTable(path).close()
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _migrations")]
        assert names == [name for name, _ in MIGRATIONS]
        assert names[-1] == "0003_tally_statuses"
        conn.execute("INSERT INTO _migrations VALUES ('0099_future', 0)")
    with pytest.raises(OffloadError, match=r"job table .* was migrated by a newer release"):
        JobTable(path)


def test_an_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OffloadError, match="job table"):
        JobTable(blocker / "jobs.sqlite")


def test_a_late_started_record_never_reopens_a_finished_job(table: JobTable) -> None:
    table.admit(request())
    table.finish(("site/cam-1", "job-0001"), Status.FAILED, b"err", error="bad image")
    table.started(("site/cam-1", "job-0001"), "local-0", 0)
    row = table.get(("site/cam-1", "job-0001"))
    assert row is not None and row["status"] == "Failed" and row["instance"] is None


def test_commits_leave_the_wal_to_checkpoint_which_copies_it_back(table: JobTable) -> None:
    for n in range(50):
        table.admit(request(f"job-{n:04d}"))
    before = table.path.stat().st_size  # the pages are still in the -wal file
    table.checkpoint()
    table.checkpoint()  # reuses its connection
    assert table.path.stat().st_size > before
    probe = sqlite3.connect(str(table.path))
    try:
        busy, frames, copied = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        probe.close()
    assert busy == 0 and frames == copied
    assert table.counts() == {"Enqueue": 50}


def test_checkpoints_keep_the_wal_bounded_under_a_steady_stream_of_jobs(table: JobTable) -> None:
    """serverd's loop commits while a worker thread checkpoints: a passive checkpoint
    alone seldom finds the WAL free of a newer commit, and the WAL grew by ~37 KB a job
    (75 MB after these 2,000 jobs, measured); ``restart_wal`` starts it over."""
    stop = threading.Event()
    due = threading.Event()  # the WAL is large: the writer restarts it

    def checkpoints() -> None:
        while not stop.wait(0.02):
            if table.checkpoint():
                due.set()

    worker = threading.Thread(target=checkpoints)
    worker.start()
    try:
        for n in range(2000):
            if due.is_set():  # on the writer's thread, between jobs, as serverd's loop does
                due.clear()
                table.restart_wal()
            job_id = f"job-{n:06d}"
            table.admit(request(job_id))
            table.started(("site/cam-1", job_id), "local-0", 0)
            table.finish(("site/cam-1", job_id), Status.EXIT, b"r" * 300)
            time.sleep(0.0005)  # the loop's other work between jobs
    finally:
        stop.set()
        worker.join()
    wal = table.path.with_name(table.path.name + "-wal")
    assert wal.stat().st_size < 20 * 2**20
    assert table.counts() == {"Exit": 2000}


def test_another_devices_job_id_is_a_job_of_its_own_never_the_stored_result(
    table: JobTable,
) -> None:
    """On main the table was keyed on the job id: device ``evil`` sending edge-01's job
    id got edge-01's stored result."""
    table.admit(request("job-0001", "edge-01"))
    table.finish(("edge-01", "job-0001"), Status.EXIT, b"edge-01's result")
    foreign = table.admit(request("job-0001", "evil"))
    assert foreign.kind is Admission.NEW and foreign.reply is None
    assert table.get(("evil", "job-0001"))["status"] == "Enqueue"  # type: ignore[index]
    assert table.get(("edge-01", "job-0001"))["reply"] == b"edge-01's result"  # type: ignore[index]
    assert table.admit(request("job-0001", "edge-01")).reply == b"edge-01's result"


def test_a_table_of_the_previous_release_is_migrated_with_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    db = sqlite_utils.Database(path)
    migrate(db, MIGRATIONS[:1], OffloadError, "old table")
    db.execute(
        "INSERT INTO jobs (job_id, device_id, model, status, received, reply) "
        "VALUES ('job-0001', 'edge-01', 'person', 'Exit', 1, x'6f6b')"
    )
    db.conn.commit()
    db.close()
    table = JobTable(path, clock=Clock())
    assert table.admit(request("job-0001", "edge-01")).reply == b"ok"
    assert table.admit(request("job-0001", "evil")).kind is Admission.NEW
    indexes = {i.name for i in sqlite_utils.Database(path).table("jobs").indexes}
    assert {"jobs_status", "jobs_received"} <= indexes


def test_a_full_disk_keeps_the_table_working_and_is_one_outage_in_the_log(
    table: JobTable, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's page limit answers a write that needs a new page as a full disk does
    (SQLITE_FULL): the job stays open and the table keeps answering; once there is room,
    the next write stores the reply. Meanwhile the table says RUNNING: it cannot know the
    job was answered; serverd, which no longer holds it, runs its redelivery again
    (``test_service_faults.py``)."""
    key = ("site/cam-1", "job-0001")
    table.admit(request())
    pages = table._db.execute("PRAGMA page_count").fetchone()[0]
    table._db.execute(f"PRAGMA max_page_count={pages}")
    caplog.set_level(logging.WARNING, logger="serverd.jobtable")
    reply = bytes(range(256)) * 256  # 64 KB: needs pages the file may not grow
    for _ in range(5):
        table.finish(key, Status.EXIT, reply)
    assert table.failures == 5
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "database or disk is full" in errors[0]
    row = table.get(key)
    assert row is not None and row["status"] == "Enqueue" and row["reply"] is None
    assert table.admit(request()).kind is Admission.RUNNING  # reads and small writes go on
    row = table.get(key)
    assert row is not None and row["deliveries"] == 2
    table._db.execute(f"PRAGMA max_page_count={pages * 100}")
    table.finish(key, Status.EXIT, reply)
    assert table.admit(request()).reply == reply and table.failures == 5


def test_a_table_that_refuses_every_write_runs_every_delivery(table: JobTable) -> None:
    """A read-only table cannot record deliveries: each runs (the same reply comes again),
    none is dropped as a duplicate, and no call raises."""
    key = ("site/cam-1", "job-0001")
    table._db.execute("PRAGMA query_only=1")
    assert [table.admit(request()).kind for _ in range(3)] == [Admission.NEW] * 3
    table.started(key, "local-0", 0)
    table.requeued(key)
    table.finish(key, Status.EXIT, b"ok")
    assert table.prune(older_than_ms=10**12) == 0
    assert table.failures == 7 and table.get(key) is None


def test_a_table_that_fails_its_reads_still_gives_counts(table: JobTable) -> None:
    """Storage gone bad (here the connection itself): the status's counts come back empty
    instead of failing the status API and the systemd status line."""
    table.admit(request())
    assert table.counts() == {"Enqueue": 1}
    table._db.conn.close()
    assert table.counts() == {} and table.failures == 1


def _recount(path: Path) -> dict[str, int]:
    """Jobs by status the slow way, on a connection of its own."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    return dict(rows)


def test_counts_are_a_tally_kept_exact_through_every_kind_of_change(tmp_path: Path) -> None:
    """``counts`` reads the triggers' tally (a handful of rows, whatever the table's size),
    not the table: admissions, redeliveries, placements, requeues, closes, retries,
    deletions by age and by cap, and a restart's interruptions all move it as they move
    the rows, and a statement the database refuses moves neither."""
    path = tmp_path / "jobs.sqlite"
    table = JobTable(path, clock=Clock())
    for n in range(6):
        table.admit(request(f"job-{n:04d}"))
    table.admit(request("job-0000"))  # a redelivery of an open job: no new row
    table.started(("site/cam-1", "job-0001"), "local-0", 0)
    table.started(("site/cam-1", "job-0002"), "local-0", 0)
    table.requeued(("site/cam-1", "job-0002"))
    table.finish(("site/cam-1", "job-0003"), Status.EXIT, b"ok")
    table.finish(("site/cam-1", "job-0004"), Status.FAILED, None, "busy", retryable=True)
    table.finish(("site/cam-1", "job-0005"), Status.EXPIRED, b"late")
    assert (
        table.counts()
        == _recount(path)
        == {"Enqueue": 2, "Inferencing": 1, "Exit": 1, "Failed": 1, "Expired": 1}
    )
    table.admit(request("job-0004"))  # a retryable failure runs again
    assert table.prune(older_than_ms=10**12) == 2  # the Exit and the Expired
    assert table.counts() == _recount(path) == {"Enqueue": 3, "Inferencing": 1}
    table._db.conn.execute("PRAGMA query_only = 1")  # every write refused from here
    table.finish(("site/cam-1", "job-0000"), Status.EXIT, b"ok")
    table._db.conn.execute("PRAGMA query_only = 0")
    assert table.counts() == _recount(path) == {"Enqueue": 3, "Inferencing": 1}
    table.close()
    restarted = JobTable(path, clock=Clock())  # the open jobs are interrupted
    assert restarted.counts() == _recount(path) == {"Failed": 4}
    _finished_rows(restarted, 2_000)
    restarted.max_bytes = restarted.used_bytes() // 2
    assert restarted.cut_to_cap(limit=1_500) == 1_500
    assert restarted.counts() == _recount(path) == {"Failed": 4, "Exit": 500}
    triggers = {r[0] for r in restarted._db.execute("SELECT name FROM sqlite_master")}
    assert {"jobs_tally_insert", "jobs_tally_delete", "jobs_tally_update"} <= triggers
    plans = _plans(restarted, restarted.counts, "SELECT")
    assert plans and not [p for p in plans if "jobs" in p.split()], plans


def test_a_table_of_an_earlier_release_gets_its_tally_from_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    db = sqlite_utils.Database(path)
    migrate(db, MIGRATIONS[:2], OffloadError, "old table")
    db.conn.executemany(
        "INSERT INTO jobs (job_id, device_id, model, status, received) "
        "VALUES (?, 'edge-01', 'person', ?, 1)",
        [("job-0001", "Exit"), ("job-0002", "Exit"), ("job-0003", "Failed")],
    )
    db.conn.commit()
    db.close()
    table = JobTable(path, clock=Clock())
    assert table.counts() == {"Exit": 2, "Failed": 1}
    table.admit(request("job-0004", "edge-01"))
    assert table.counts() == _recount(path) == {"Exit": 2, "Failed": 1, "Enqueue": 1}


def _finished_rows(table: JobTable, count: int, received: int = 1, name: str = "bulk") -> None:
    """``count`` finished jobs received from ``received`` on, one a millisecond, written in
    one transaction (a flood's worth without a flood's time)."""
    with table._db.atomic():
        table._db.conn.executemany(
            "INSERT INTO jobs (job_id, device_id, model, status, received, ended, reply) "
            "VALUES (?, 'site/cam-9', 'person', 'Exit', ?, ?, ?)",
            ((f"{name}-{n:07d}", received + n, received + n, b"r" * 300) for n in range(count)),
        )


def _plans(table: JobTable, call: Callable[[], object], verb: str = "DELETE") -> list[str]:
    """The query plans of the ``verb`` statements ``call`` runs on the table."""
    statements: list[str] = []
    table._db.conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        table._db.conn.set_trace_callback(None)
    return [
        str(row[3])
        for sql in statements
        if sql.lstrip().upper().startswith(verb)
        for row in table._db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
    ]


def test_past_its_cap_the_oldest_finished_jobs_go_first_open_ones_stay_and_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, only age bounded the table: one device certificate's flood of refused
    requests (each a row) left ~91 GB a day. Now maintenance cuts a table past its cap
    back under it, oldest finished jobs first, and says so once, not once a batch."""
    cap = 2**20
    table = JobTable(tmp_path / "jobs.sqlite", clock=Clock(), max_bytes=cap)
    caplog.set_level(logging.INFO, logger="serverd.jobtable")
    for n in range(3):  # the oldest rows of all, still open
        table.admit(request(f"job-open{n:02d}"))
    flood = [f"job-{n:06d}" for n in range(4000)]
    for n, job_id in enumerate(flood):
        table.admit(request(job_id))
        table.finish(("site/cam-1", job_id), Status.FAILED, b"e" * 1000, error="unknown model")
        if n % 250 == 249:  # a maintenance tick
            while table.cut_to_cap():
                pass
            assert table.used_bytes() <= cap
    kept = [r[0] for r in table._db.execute("SELECT job_id FROM jobs WHERE status='Failed'")]
    assert 0 < len(kept) < len(flood) and sorted(kept) == flood[-len(kept) :]  # the newest
    assert table.pruned_over_cap == len(flood) - len(kept)
    assert table.counts()["Enqueue"] == 3 and table.failures == 0
    assert table.admit(request(flood[0])).kind is Admission.NEW  # cut: a redelivery runs
    assert table.admit(request(flood[-1])).kind is Admission.DONE
    table.checkpoint()  # the freed pages are reused: the file stops growing near the cap
    assert table.path.stat().st_size < 1.5 * cap
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [text for level, text in lines if level == logging.WARNING] == [
        f"job table {table.path}: 1 MB in use, past its cap of 1 MB: deleting its oldest "
        "finished jobs before retention_s (a redelivery of one runs again); raise "
        "job_table_max_mb to keep them"
    ]
    assert len([text for _, text in lines if "under its cap again" in text]) == 1


def test_a_table_past_its_cap_with_open_jobs_only_deletes_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = JobTable(tmp_path / "jobs.sqlite", clock=Clock(), max_bytes=4096)
    caplog.set_level(logging.INFO, logger="serverd.jobtable")
    for n in range(3):
        table.admit(request(f"job-open{n:02d}"))
    assert [table.cut_to_cap() for _ in range(3)] == [0, 0, 0]
    assert table.counts() == {"Enqueue": 3} and table.pruned_over_cap == 0
    assert len([r for r in caplog.records if "open jobs only" in r.getMessage()]) == 1


def test_age_pruning_deletes_in_batches_oldest_first_through_the_received_index(
    table: JobTable,
) -> None:
    """Before, pruning was one DELETE over the whole table (no index on ``ended``):
    417 ms on the loop for 2 M rows, whether any row was due or none."""
    table.admit(request("job-open01"))  # received first of all, and open
    _finished_rows(table, 1200, received=2_000_000)
    table._db.execute("UPDATE jobs SET received=5000000 WHERE job_id='bulk-0001199'")
    cutoff = 3_000_000  # all but that last one are due
    assert [table.prune(cutoff, limit=500) for _ in range(4)] == [500, 500, 199, 0]
    left = [r[0] for r in table._db.execute("SELECT job_id FROM jobs ORDER BY received")]
    assert left == ["job-open01", "bulk-0001199"]
    plans = _plans(table, lambda: (table.prune(cutoff), table.cut_to_cap()))
    assert plans and not [p for p in plans if p.startswith("SCAN")], plans


def test_a_maintenance_tick_deletes_a_bounded_share_and_frees_the_loop_between_batches(
    table: JobTable,
) -> None:
    """A table past its retention by 12,000 jobs: each tick deletes TICK_BATCHES batches
    at most, and other tasks run between them; the next tick goes on."""
    per_tick = TICK_BATCHES * BATCH
    _finished_rows(table, int(2.4 * per_tick), received=10)
    table._clock = lambda: 10**12  # all of them received long ago

    async def tick() -> tuple[int, int]:
        turns = 0

        async def other() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        other_task = asyncio.create_task(other())
        await asyncio.sleep(0)
        deleted = await table.trim(retention_s=3600.0)
        other_task.cancel()
        return deleted, turns

    ticks = [asyncio.run(tick()) for _ in range(4)]
    assert [deleted for deleted, _ in ticks] == [per_tick, per_tick, int(0.4 * per_tick), 0]
    assert ticks[0][1] >= TICK_BATCHES  # the loop ran other tasks between the batches
    assert table.counts() == {}


def test_jobs_due_by_age_go_first_uncounted_and_never_hold_off_the_cap(table: JobTable) -> None:
    """Each tick finds some jobs due by age in a steady stream: they are pruned as such
    (not counted as cut), and the cap is kept all the same in the same tick."""
    table.max_bytes = 2**20
    table._clock = lambda: 10**9
    _finished_rows(table, 100, received=1, name="old")  # received long before retention_s
    _finished_rows(table, 6000, received=10**9 - 10_000, name="new")
    assert table.used_bytes() > 2 * table.max_bytes
    deleted = 0
    while batch := asyncio.run(table.trim(retention_s=3600.0)):
        deleted += batch
    assert table.used_bytes() <= table.max_bytes
    assert table.pruned_over_cap == deleted - 100
    assert not table._db.execute("SELECT 1 FROM jobs WHERE job_id LIKE 'old-%'").fetchall()
