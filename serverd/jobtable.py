"""serverd's own job table (SQLite, WAL): dedupe by job, statuses, stored replies.

A job is known by its device and its id together (``JobKey``): the device is the one the
broker's ACL lets publish on the request topic, so a device that sends another device's
job id gets a job of its own, never the other device's stored result.

Delivery from the edge is at-least-once, so the same job may arrive several times.
``admit`` decides what a delivery means:

- ``NEW``: first sight (or a retry of a job that failed in a way worth retrying, or
  that a serverd restart interrupted): run it;
- ``RUNNING``: the job is open (queued or on Triton, as far as the table knows): the
  runner drops the duplicate of a job it holds; a close the table could not store
  leaves the row open too, so serverd runs again a job it is told is RUNNING but no
  longer holds;
- ``DONE``: the job finished: re-send the stored reply (result or final error) as is.

Statuses are the job-table names shared with the edge (``edgefed.lifecycle.Status``);
serverd uses ``Enqueue`` (received, queued), ``Inferencing`` (on a Triton instance),
``Exit`` (result sent), ``Failed`` and ``Expired``. A row keeps the device, model,
priority, deadline, times, the instance, the iteration (re-placements), the number of
deliveries and the encoded reply. Methods are called from one thread (the service's
event loop); each is one short transaction. WAL checkpoints are not left to those
commits: ``checkpoint`` runs them on its own connection from a worker thread; once the
WAL is large, ``restart_wal`` starts it over (without that, a steady stream of jobs grew
it by ~40 KB a job: 240 MB after 6,000 jobs of ``python -m bench offload-rtt``).

The table is bookkeeping, not the path of a job: a statement it refuses (a full disk, a
file made read-only, storage gone bad) is one outage in the log (``failures`` counts
them) and jobs still run and are answered. While writes fail, a job ``admit`` could not
record is run as ``NEW`` (a redelivery runs again; its reply is the same) and a reply
that could not be stored is not re-sent to duplicates (the row stays open: the job's
redelivery is ``RUNNING``, which serverd runs again); while reads fail, ``counts`` is
empty.

The table is bounded twice, by deletions of finished jobs only (an open job is never
deleted): by age (received ``retention_s`` ago) and by size (``max_bytes`` of pages in
use, read from the file's header: no scan). Past its cap, the oldest finished jobs go
until the table is back under ``LOW_WATER`` of it; ``pruned_over_cap`` counts them and
each such episode is one line in the log. Both delete through the ``received`` index in
transactions of ``BATCH`` rows, at most ``TICK_BATCHES`` a maintenance tick, yielding
to the loop between them, so neither blocks the loop for long whatever the table's size
(a full-table ``DELETE`` took 417 ms on 2 M rows).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from edgefed.clock import now_ms
from edgefed.errors import OffloadError
from edgefed.lifecycle import Status
from edgefed.outage import Outage, Repeats
from edgefed.store import Migrations, migrate, open_database
from edgefed.store.checkpoint import RESTART_FRAMES, checkpoint, restart
from edgefed.wire import OffloadRequest
from serverd.health import periodic

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: serverd stopped before the job finished"
DEFAULT_MAX_BYTES = 256 * 2**20
LOW_WATER = 0.9  # a table past its cap is cut back to this share of it
BATCH = 500  # rows deleted in one transaction on the loop: ~5 ms (bench/jobtable.py)
TICK_BATCHES = 10  # transactions a maintenance tick runs at most: 5,000 rows
CAP_NOTE_S = 3600.0  # a table that lives at its cap says so once an hour at most
_ALL = 2**62  # a ``received`` bound past every row: the cap deletes by age order alone


def _create_jobs(db: sqlite_utils.Database) -> None:
    db.table("jobs").create(
        {
            "job_id": str,
            "device_id": str,
            "model": str,
            "priority": int,
            "deadline": int,
            "created": int,
            "status": str,
            "received": int,
            "started": int,
            "ended": int,
            "iteration": int,
            "deliveries": int,
            "instance": str,
            "error": str,
            "retryable": int,
            "reply": bytes,
        },
        pk="job_id",
        not_null={"device_id", "model", "status", "received", "iteration", "deliveries"},
        defaults={"iteration": 0, "deliveries": 1, "retryable": 0},
    )
    db.table("jobs").create_index(["status"], index_name="jobs_status")
    db.table("jobs").create_index(["received"], index_name="jobs_received")


def _key_on_device_and_job(db: sqlite_utils.Database) -> None:
    """Jobs were keyed on the job id alone: one device could read another's result."""
    db.table("jobs").transform(pk=("device_id", "job_id"))
    db.table("jobs").create_index(["status"], index_name="jobs_status", if_not_exists=True)
    db.table("jobs").create_index(["received"], index_name="jobs_received", if_not_exists=True)


_COUNT_NEW = (
    "INSERT INTO job_counts VALUES (NEW.status, 1) "
    "ON CONFLICT (status) DO UPDATE SET jobs = jobs + 1;"
)
_UNCOUNT_OLD = "UPDATE job_counts SET jobs = jobs - 1 WHERE status = OLD.status;"


def _tally_statuses(db: sqlite_utils.Database) -> None:
    """``counts`` scanned the status index, 40-190 ms on the loop at each /metrics scrape
    of a table at its cap: triggers keep a tally by status in the same transaction as the
    change, so it is exact (a refused write changes neither). A later migration that
    rebuilds ``jobs`` (sqlite-utils ``transform``) drops its triggers: make them again."""
    for statement in (
        "CREATE TABLE job_counts (status TEXT PRIMARY KEY, jobs INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO job_counts SELECT status, count(*) FROM jobs GROUP BY status",
        f"CREATE TRIGGER jobs_tally_insert AFTER INSERT ON jobs BEGIN {_COUNT_NEW} END",
        f"CREATE TRIGGER jobs_tally_delete AFTER DELETE ON jobs BEGIN {_UNCOUNT_OLD} END",
        "CREATE TRIGGER jobs_tally_update AFTER UPDATE OF status ON jobs "
        f"WHEN OLD.status IS NOT NEW.status BEGIN {_UNCOUNT_OLD} {_COUNT_NEW} END",
    ):
        db.execute(statement)


MIGRATIONS: Migrations = [
    ("0001_create_jobs", _create_jobs),
    ("0002_key_on_device_and_job", _key_on_device_and_job),
    ("0003_tally_statuses", _tally_statuses),
]
JobKey = tuple[str, str]  # (device id, job id)
_WHERE_KEY = "device_id=? AND job_id=?"


class Admission(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class Admitted:
    kind: Admission
    reply: bytes | None = None  # for DONE: the stored encoded reply to re-send


OPEN = (Status.ENQUEUE.value, Status.INFERENCING.value)


class JobTable:
    """The SQLite adapter; ``clock`` returns epoch milliseconds; ``max_bytes`` is the cap
    on the pages in use (see the module doc)."""

    def __init__(
        self, path: Path, clock: Callable[[], int] = now_ms, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.pruned_over_cap = 0  # finished jobs deleted before retention_s to keep the cap
        self._clock = clock
        self._cap_episode: tuple[float, int] | None = None  # (since, deleted) while cutting
        self._cap_notes = Repeats(log, every_s=CAP_NOTE_S)
        self._cap_ends = Repeats(log, logging.INFO, every_s=CAP_NOTE_S)
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        self._failures = Outage(log, f"job table {path}")
        self._checkpoints = Outage(log, f"job table {path}: the checkpoint")
        self._reads = Outage(log, f"job table {path}: counting jobs")
        try:
            # No checkpoint (and its fsyncs, ~5 ms here) inside a commit on the event loop:
            # ``checkpoint`` runs them on another connection, off the loop. The
            # auto-checkpoint only bounds the WAL if that cannot restart it.
            self._db = open_database(path, autocheckpoint=10 * RESTART_FRAMES)
            migrate(self._db, MIGRATIONS, OffloadError, f"job table {path}")
            self.interrupted = self._db.execute(
                "UPDATE jobs SET status=?, error=?, retryable=1, reply=NULL, ended=? "
                f"WHERE status IN ({','.join('?' * len(OPEN))})",
                (Status.FAILED.value, INTERRUPTED, clock(), *OPEN),
            ).rowcount
        except (OSError, sqlite3.Error) as exc:
            raise OffloadError(f"job table {path}: {exc}") from exc

    @property
    def failures(self) -> int:
        """Statements and checkpoints the database refused since the start."""
        return self._failures.failures + self._checkpoints.failures + self._reads.failures

    def close(self) -> None:
        self._db.close()
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None

    def checkpoint(self) -> bool:
        """Copy the WAL back into the database (PASSIVE: never blocks the loop's writers);
        True if the WAL is large enough that ``restart_wal`` should start it over.

        Meant for a worker thread (``asyncio.to_thread``): it uses its own connection.
        """
        with self._checkpoint_lock:
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(
                        str(self.path), isolation_level=None, check_same_thread=False
                    )
                return checkpoint(self._checkpointer) >= RESTART_FRAMES
            except sqlite3.Error as exc:
                raise OffloadError(f"job table {self.path}: checkpoint: {exc}") from exc

    def restart_wal(self) -> None:
        """On the loop, between transactions: copy what the last checkpoint left (about a
        millisecond) and make the next commit write from the start of the WAL."""
        try:
            restart(self._db.conn)
        except sqlite3.Error as exc:
            raise OffloadError(f"job table {self.path}: checkpoint: {exc}") from exc

    def admit(self, request: OffloadRequest) -> Admitted:
        """Record a delivery of ``request`` and say whether to run it (see module doc)."""
        admitted = Admitted(Admission.NEW)  # what an unrecorded delivery gets
        with self._failures.contained(sqlite3.Error):
            admitted = self._admit(request)
        return admitted

    def _admit(self, request: OffloadRequest) -> Admitted:
        now = self._clock()
        with self._db.atomic():
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, device_id, model, priority, deadline, "
                "created, status, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.job_id,
                    request.device_id,
                    request.model,
                    request.priority,
                    request.deadline,
                    request.created,
                    Status.ENQUEUE.value,
                    now,
                ),
            ).rowcount
            if inserted:
                return Admitted(Admission.NEW)
            key = (request.device_id, request.job_id)
            row = self._db.execute(
                f"SELECT status, retryable, reply FROM jobs WHERE {_WHERE_KEY}", key
            ).fetchone()
            self._db.execute(f"UPDATE jobs SET deliveries = deliveries + 1 WHERE {_WHERE_KEY}", key)
            if row["status"] in OPEN:
                return Admitted(Admission.RUNNING)
            if row["retryable"] or row["reply"] is None:
                self._db.execute(
                    "UPDATE jobs SET status=?, received=?, started=NULL, ended=NULL, "
                    f"error=NULL, reply=NULL, retryable=0, instance=NULL WHERE {_WHERE_KEY}",
                    (Status.ENQUEUE.value, now, *key),
                )
                return Admitted(Admission.NEW)
            return Admitted(Admission.DONE, bytes(row["reply"]))

    def started(self, key: JobKey, instance: str, iteration: int) -> None:
        """The job was placed on ``instance`` (iteration 0 first, +1 per re-placement).

        A no-op for a job that is no longer queued (it may already have been answered).
        """
        with self._failures.contained(sqlite3.Error):
            self._db.execute(
                "UPDATE jobs SET status=?, instance=?, iteration=?, "
                f"started=coalesce(started, ?) WHERE {_WHERE_KEY} AND status=?",
                (
                    Status.INFERENCING.value,
                    instance,
                    iteration,
                    self._clock(),
                    *key,
                    Status.ENQUEUE.value,
                ),
            )

    def requeued(self, key: JobKey) -> None:
        with self._failures.contained(sqlite3.Error):
            self._db.execute(
                f"UPDATE jobs SET status=?, instance=NULL WHERE {_WHERE_KEY}",
                (Status.ENQUEUE.value, *key),
            )

    def finish(
        self,
        key: JobKey,
        status: Status,
        reply: bytes | None,
        error: str | None = None,
        retryable: bool = False,
    ) -> None:
        """Close a job with its encoded reply (re-sent to duplicates unless retryable)."""
        with self._failures.contained(sqlite3.Error):
            self._db.execute(
                "UPDATE jobs SET status=?, reply=?, error=?, retryable=?, ended=? "
                f"WHERE {_WHERE_KEY}",
                (status.value, reply, error, int(retryable), self._clock(), *key),
            )

    async def maintain(self, stop: asyncio.Event, interval_s: float, retention_s: float) -> None:
        """Until ``stop``, every ``interval_s``: ``trim`` the table, then checkpoint the WAL
        off the loop."""

        async def step() -> None:
            await self.trim(retention_s)
            with self._checkpoints.contained(OffloadError):  # the auto-checkpoint bounds it
                if await asyncio.to_thread(self.checkpoint):
                    self.restart_wal()

        await periodic(stop, interval_s, step, f"maintaining the job table {self.path}")

    async def trim(self, retention_s: float) -> int:
        """One tick's deletions: jobs received ``retention_s`` ago, then past the cap, in
        ``TICK_BATCHES`` batches of ``BATCH`` rows at most, the loop free between them (a
        deletion larger than a tick's goes on at the next tick). Returns how many."""
        deleted = 0
        for _ in range(TICK_BATCHES):
            batch = self.prune(self._clock() - int(retention_s * 1000))
            if batch < BATCH:  # none is left due by age: the rest of the batch is the cap's
                batch += self.cut_to_cap(BATCH - batch)
            deleted += batch
            if batch < BATCH:
                break
            await asyncio.sleep(0)
        return deleted

    def get(self, key: JobKey) -> dict[str, Any] | None:
        row = self._db.execute(f"SELECT * FROM jobs WHERE {_WHERE_KEY}", key).fetchone()
        return None if row is None else dict(row)

    def counts(self) -> dict[str, int]:
        """Jobs by status, from the triggers' tally (none while the database fails: the
        status still answers)."""
        rows: list[sqlite3.Row] = []
        with self._reads.contained(sqlite3.Error):
            rows = self._db.execute("SELECT status, jobs FROM job_counts WHERE jobs > 0").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def used_bytes(self) -> int:
        """The database's pages in use (the free list is not): from the header, no scan."""
        row = self._db.execute(
            "SELECT (page_count - freelist_count) * page_size "
            "FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()"
        ).fetchone()
        return int(row[0])

    def prune(self, older_than_ms: int, limit: int = BATCH) -> int:
        """Delete up to ``limit`` finished jobs received before ``older_than_ms``, oldest
        first; returns how many (fewer than ``limit``: none is left to prune)."""
        pruned = 0
        with self._failures.contained(sqlite3.Error):
            pruned = self._delete_oldest(older_than_ms, limit)
        return pruned

    def cut_to_cap(self, limit: int = BATCH) -> int:
        """Past ``max_bytes``, delete up to ``limit`` of the oldest finished jobs, and go on
        at each call until the table is under ``LOW_WATER`` of it (not at once back over
        the cap); returns how many."""
        cut = 0
        with self._failures.contained(sqlite3.Error):
            used = self.used_bytes()
            if self._cap_episode is None and used > self.max_bytes:
                self._cap_episode = (time.monotonic(), 0)
                self._cap_notes(
                    "over",
                    f"job table {self.path}: {used / 2**20:.0f} MB in use, past its cap of "
                    f"{self.max_bytes / 2**20:.0f} MB: deleting its oldest finished jobs "
                    "before retention_s (a redelivery of one runs again); raise "
                    "job_table_max_mb to keep them",
                )
            if self._cap_episode is None:
                return 0
            since, total = self._cap_episode
            if used <= LOW_WATER * self.max_bytes:
                self._cap_episode = None
                self._cap_ends(
                    "under",
                    f"job table {self.path}: under its cap again after deleting {total} "
                    f"finished jobs in {time.monotonic() - since:.0f} s",
                )
                return 0
            cut = self._delete_oldest(_ALL, limit)
            self._cap_episode = (since, total + cut)
            self.pruned_over_cap += cut
            if not cut:
                self._cap_notes("open", f"job table {self.path}: past its cap with open jobs only")
        return cut

    def _delete_oldest(self, received_before_ms: int, limit: int) -> int:
        """One transaction: the oldest finished jobs by the ``received`` index."""
        return int(
            self._db.execute(
                "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs WHERE received < ? "
                f"AND status NOT IN ({','.join('?' * len(OPEN))}) ORDER BY received LIMIT ?)",
                (received_before_ms, *OPEN, limit),
            ).rowcount
        )
