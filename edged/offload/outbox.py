"""The persistent outbox: every offloaded job is a row in SQLite (WAL), the system of record.

The transitions are those of ``edgefed.lifecycle``; this module only stores them. Each
operation is one transaction, so a job survives kill -9 of the process at any point
(WAL with ``synchronous=NORMAL`` loses nothing when the process dies; ``FULL`` also
covers power loss). The outbox is bounded by open jobs and their payload bytes: past
the bound the oldest jobs of the lowest priority are shed (closed as Failed, counted),
never newer or higher-priority ones. One connection serves all threads under a lock;
``batch()`` groups a burst of operations into one commit. The database itself (opening,
transactions, totals, reads) is ``edged.offload.store.OutboxStore``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

from edged.offload.records import (
    COLUMNS,
    Enqueued,
    JobRecord,
    NewJob,
    OutboxConfig,
    RecordOutcome,
    SweepReport,
    sql_in,
    to_json,
    to_record,
)
from edged.offload.store import OutboxStore
from edgefed import lifecycle
from edgefed.clock import Clock, now_ms
from edgefed.errors import OffloadError
from edgefed.lifecycle import Status

# Pruning finished jobs to ``keep_finished`` walks that many index entries, which grows
# with the setting (thousands by default): a sweep does it at most this often.
PRUNE_INTERVAL_MS = 10_000


class Outbox(OutboxStore):
    """The SQLite adapter of the job state machine: its transitions (callers hold the
    lock in the private helpers unless stated)."""

    def __init__(self, config: OutboxConfig, clock: Clock = now_ms) -> None:
        super().__init__(config, clock)
        self._pruned_at: int | None = None  # last pruning of finished jobs (sweep)

    def enqueue(self, job: NewJob) -> Enqueued:
        """Store a job (Enqueue); sheds older lower-priority jobs if the outbox is full."""
        req, size, now = job.request, len(job.body), self._clock()
        with self._lock, self._tx():
            shed = self._make_room(req.priority, req.created, size)
            if shed is None:
                if self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (req.job_id,)).fetchone():
                    raise OffloadError(f"job {req.job_id} is already in the outbox")
                self.shed_total += 1
                return Enqueued(False, [])
            row = (
                req.job_id, req.device_id, req.model, job.requester, req.payload_kind, size,
                req.priority, req.deadline, req.created, str(Status.ENQUEUE), now, now,
                job.reason, to_json(req.metadata),
                req.local.model_dump_json() if req.local else None, to_json(job.local_result),
            )  # fmt: skip
            try:  # the primary key refuses a duplicate; the transaction then rolls back
                self._db.conn.execute(
                    "INSERT INTO jobs (id, device, model, requester, payload_kind, "
                    "payload_bytes, priority, deadline, created, status, updated, iteration, "
                    "next_attempt, reason, metadata, local_summary, local_result) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                    row,
                )
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" not in str(exc):
                    raise
                raise OffloadError(f"job {req.job_id} is already in the outbox") from exc
            self._db.conn.execute(
                "INSERT INTO payloads (id, body) VALUES (?, ?)", (req.job_id, job.body)
            )
            self.shed_total += len(shed)
            self._open_rows += 1
            self._open_bytes += size
            return Enqueued(True, shed)

    def claim(self, limit: int, skip: Collection[str] = ()) -> list[tuple[JobRecord, bytes]]:
        """Take up to ``limit`` due jobs, highest priority first then oldest (Preprocessing);
        the jobs in ``skip`` are left alone."""
        now = self._clock()
        skipped = f"AND id NOT IN ({', '.join('?' * len(skip))}) " if skip else ""
        with self._lock, self._tx():
            rows = self._db.execute(
                f"SELECT {COLUMNS}, (SELECT body FROM payloads WHERE payloads.id = jobs.id) "
                f"AS payload FROM jobs WHERE status IN {sql_in([Status.ENQUEUE])} "
                f"AND next_attempt <= ? AND deadline > ? {skipped}"
                "ORDER BY priority DESC, created ASC LIMIT ?",
                (now, now, *skip, limit),
            ).fetchall()
            timeout = int(self.config.result_timeout_s * 1000)
            self._db.conn.executemany(
                "UPDATE jobs SET status = ?, started = coalesce(started, ?), updated = ?, "
                "next_attempt = ? WHERE id = ?",
                [(str(Status.PREPROCESSING), now, now, now + timeout, r["id"]) for r in rows],
            )
        return [(to_record(r, Status.PREPROCESSING), bytes(r["payload"])) for r in rows]

    def claim_sent(self, job_ids: list[str], at: int | None = None) -> list[str]:
        """Claim the given jobs (Enqueue -> Preprocessing) as ``claim`` would have at time
        ``at`` (default now), for a client that held their frames and sent them; returns
        the ids it claimed (not those claimed before or closed)."""
        if not job_ids:
            return []
        now = self._clock() if at is None else at
        timeout = int(self.config.result_timeout_s * 1000)
        marks = ", ".join("?" * len(job_ids))
        with self._lock, self._tx():
            rows = self._db.conn.execute(
                "UPDATE jobs SET status = ?, started = coalesce(started, ?), updated = ?, "
                f"next_attempt = ? WHERE status = ? AND id IN ({marks}) RETURNING id",
                (str(Status.PREPROCESSING), now, now, now + timeout, str(Status.ENQUEUE), *job_ids),
            ).fetchall()
        return [row["id"] for row in rows]

    def release(self, job_id: str, error: str) -> bool:
        """A claimed job could not be published: due again at once, not counted as a retry."""
        return self._move(job_id, Status.ENQUEUE, "last_error = ?, next_attempt = ?", error, 0)

    def mark_sent(self, job_id: str) -> bool:
        return self._move(job_id, Status.PREPROCESSING_COMPLETE)

    def mark_accepted(self, job_id: str) -> bool:
        return self._move(job_id, Status.INFERENCING)

    def record_result(self, job_id: str, result: dict[str, Any]) -> RecordOutcome:
        """Store the server's result once; duplicates and late answers are ignored, counted."""
        if self._move(job_id, Status.INFERENCING_COMPLETE, "result = ?", to_json(result)):
            return "recorded"
        job = self.get(job_id)
        if job is None:
            return "unknown"
        if job.status in (Status.EXPIRED, Status.FAILED):
            self.late += 1
            return "late"
        self.duplicates += 1
        return "duplicate"

    def record_error(
        self, job_id: str, reason: str, retryable: bool, shed: bool = False
    ) -> Status | None:
        """A server error for an open job: retry with backoff, or fail now; a job the
        server ``shed`` unrun closes Expired (its local result stands)."""
        marks = sql_in(lifecycle.AWAITING)
        with self._lock, self._tx():
            row = self._db.execute(
                f"SELECT iteration, payload_bytes FROM jobs WHERE id = ? AND status IN {marks}",
                (job_id,),
            ).fetchone()
            if row is None:
                return None
            if shed or not retryable:
                status = Status.EXPIRED if shed else Status.FAILED
                self._close([(job_id, row["payload_bytes"])], status, reason)
                return status
            return self._fail_attempt(job_id, row["iteration"], row["payload_bytes"], reason)

    def begin_postprocess(self, job_id: str) -> JobRecord | None:
        """Inferencing_complete -> Postprocessing; returns the job with its result."""
        marks = sql_in(lifecycle.sources(Status.POSTPROCESSING))
        with self._write():
            row = self._db.conn.execute(
                f"UPDATE jobs SET status = ?, updated = ? WHERE id = ? AND status IN {marks} "
                f"RETURNING {COLUMNS}",
                (str(Status.POSTPROCESSING), self._clock(), job_id),
            ).fetchone()
        return to_record(row) if row is not None else None

    def finish(self, job_id: str) -> bool:
        """Postprocessing -> Postprocessing_complete -> Exit, in one transaction."""
        with self._lock, self._tx():
            row = self._db.execute(
                "UPDATE jobs SET status = ?, updated = ? WHERE id = ? AND status = ? "
                "RETURNING payload_bytes",
                (
                    str(Status.POSTPROCESSING_COMPLETE),
                    self._clock(),
                    job_id,
                    str(Status.POSTPROCESSING),
                ),
            ).fetchone()
            if row is None:
                return False
            self._close([(job_id, row["payload_bytes"])], Status.EXIT, None)
            return True

    def sweep(self, retry_timeouts: bool) -> SweepReport:
        """Expire jobs past their deadline; retry (or fail) jobs whose answer is overdue;
        every ``PRUNE_INTERVAL_MS``, forget finished jobs beyond ``keep_finished``."""
        now = self._clock()
        retried: list[str] = []
        failed: list[str] = []
        with self._lock, self._tx():
            marks = sql_in(lifecycle.AWAITING)
            due = self._db.execute(
                f"SELECT id, payload_bytes FROM jobs WHERE status IN {marks} AND deadline <= ?",
                (now,),
            ).fetchall()
            expired = [r["id"] for r in due]
            self._close(
                [(r["id"], r["payload_bytes"]) for r in due],
                Status.EXPIRED,
                "deadline passed without a server result; the local result stands",
            )
            if retry_timeouts:
                marks = sql_in(lifecycle.IN_FLIGHT)
                for r in self._db.execute(
                    f"SELECT id, iteration, payload_bytes FROM jobs WHERE status IN {marks} "
                    "AND next_attempt <= ?",
                    (now,),
                ).fetchall():
                    reason = "no answer from the server in time"
                    status = self._fail_attempt(r["id"], r["iteration"], r["payload_bytes"], reason)
                    (failed if status == Status.FAILED else retried).append(r["id"])
            # abs: after the clock stepped back (or serverd's was learnt behind it), the
            # next sweep prunes and starts over, rather than none until it caught up
            if self._pruned_at is None or abs(now - self._pruned_at) >= PRUNE_INTERVAL_MS:
                self._pruned_at = now
                self._db.execute(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE ended IS NOT NULL "
                    "ORDER BY ended DESC LIMIT -1 OFFSET ?)",
                    (self.config.keep_finished,),
                )
        return SweepReport(expired, retried, failed)

    def recover(self) -> list[JobRecord]:
        """After a restart: re-queue jobs caught mid-publish, give jobs sent before it at
        most one (current) result timeout, and return the results still to deliver."""
        now = self._clock()
        marks = sql_in(lifecycle.IN_FLIGHT)
        with self._lock, self._tx():
            self._db.execute(
                "UPDATE jobs SET status = ?, next_attempt = ?, updated = ? WHERE status = ?",
                (str(Status.ENQUEUE), now, now, str(Status.PREPROCESSING)),
            )
            self._db.execute(
                f"UPDATE jobs SET next_attempt = min(next_attempt, ?) WHERE status IN {marks}",
                (now + int(self.config.result_timeout_s * 1000),),
            )
        return self.page(statuses=lifecycle.DELIVERING, limit=1_000_000, oldest_first=True)

    def extend_timers(self) -> None:
        """The link came back: give jobs sent before it dropped a full timeout to answer."""
        now = self._clock()
        marks = sql_in(lifecycle.IN_FLIGHT)
        with self._lock, self._tx():
            self._db.execute(
                f"UPDATE jobs SET next_attempt = max(next_attempt, ?) WHERE status IN {marks}",
                (now + int(self.config.result_timeout_s * 1000),),
            )

    def stats(self) -> dict[str, int]:
        return {
            "open_jobs": self._open_rows,
            "open_bytes": self._open_bytes,
            "shed": self.shed_total,
            "duplicate_results": self.duplicates,
            "late_results": self.late,
        }

    def _move(self, job_id: str, new: Status, extra: str = "", *params: Any) -> bool:
        """Move one job to ``new`` if its status allows it; takes the lock itself."""
        marks = sql_in(lifecycle.sources(new))
        sets = "status = ?, updated = ?" + (f", {extra}" if extra else "")
        with self._write():
            cursor = self._db.conn.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND status IN {marks}",
                (str(new), self._clock(), *params, job_id),
            )
            return cursor.rowcount == 1

    def _fail_attempt(self, job_id: str, iteration: int, size: int, reason: str) -> Status:
        attempt = iteration + 1
        target = lifecycle.next_after_failure(attempt, self.config.max_iterations)
        if target == Status.FAILED:
            self._close([(job_id, size)], Status.FAILED, f"{reason} (after {attempt} attempts)")
            return target
        delay = lifecycle.retry_delay_ms(
            attempt, int(self.config.retry_base_s * 1000), int(self.config.retry_cap_s * 1000)
        )
        now = self._clock()
        self._db.execute(
            "UPDATE jobs SET status = ?, iteration = ?, next_attempt = ?, last_error = ?, "
            "updated = ? WHERE id = ?",
            (str(Status.ENQUEUE), attempt, now + delay, reason, now, job_id),
        )
        return target

    def _close(self, rows: list[tuple[str, int]], status: Status, error: str | None) -> None:
        """Close open jobs: terminal status, end time, payload dropped, totals updated."""
        if not rows:
            return
        now = self._clock()
        self._db.conn.executemany(
            "UPDATE jobs SET status = ?, ended = ?, updated = ?, "
            "last_error = coalesce(?, last_error) WHERE id = ?",
            [(str(status), now, now, error, job_id) for job_id, _ in rows],
        )
        # in the closing transaction, one job at a time (~30 us per frame): deleting a sweep's
        # worth at once held the worker and the outbox lock for milliseconds
        self._db.conn.executemany(
            "DELETE FROM payloads WHERE id = ?", [(job_id,) for job_id, _ in rows]
        )
        self._open_rows -= len(rows)
        self._open_bytes -= sum(size for _, size in rows)

    def _make_room(self, priority: int, created: int, size: int) -> list[str] | None:
        """Shed the oldest lowest-priority open jobs until the new one fits; None: it cannot."""
        cfg = self.config
        if size > cfg.max_bytes:
            return None
        shed: list[tuple[str, int]] = []
        rows, nbytes = self._open_rows + 1, self._open_bytes + size
        if rows <= cfg.max_jobs and nbytes <= cfg.max_bytes:
            return []
        marks = sql_in(lifecycle.AWAITING)
        candidates = self._db.execute(
            f"SELECT id, payload_bytes FROM jobs WHERE status IN {marks} "
            "AND (priority < ? OR (priority = ? AND created <= ?)) "
            "ORDER BY priority ASC, created ASC",
            (priority, priority, created),
        )
        for row in candidates:
            if rows <= cfg.max_jobs and nbytes <= cfg.max_bytes:
                break
            shed.append((row["id"], row["payload_bytes"]))
            rows -= 1
            nbytes -= row["payload_bytes"]
        if rows > cfg.max_jobs or nbytes > cfg.max_bytes:
            return None
        self._close(shed, Status.FAILED, "shed: the outbox was full")
        return [job_id for job_id, _ in shed]
