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
from edgefed.outage import Outage
from edgefed.store import Migrations, migrate, open_database
from edgefed.store.checkpoint import RESTART_FRAMES, checkpoint, restart
from edgefed.wire import OffloadRequest
from serverd.health import periodic

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: serverd stopped before the job finished"


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


MIGRATIONS: Migrations = [
    ("0001_create_jobs", _create_jobs),
    ("0002_key_on_device_and_job", _key_on_device_and_job),
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
    """The SQLite adapter; ``clock`` returns epoch milliseconds."""

    def __init__(self, path: Path, clock: Callable[[], int] = now_ms) -> None:
        self.path = path
        self._clock = clock
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
        """Until ``stop``: prune jobs finished ``retention_s`` ago now and then; checkpoint
        the WAL off the loop every ``interval_s``."""
        next_prune = 0.0

        async def step() -> None:
            nonlocal next_prune
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + 60.0
                self.prune(self._clock() - int(retention_s * 1000))
            with self._checkpoints.contained(OffloadError):  # the auto-checkpoint bounds it
                if await asyncio.to_thread(self.checkpoint):
                    self.restart_wal()

        await periodic(stop, interval_s, step, f"maintaining the job table {self.path}")

    def get(self, key: JobKey) -> dict[str, Any] | None:
        row = self._db.execute(f"SELECT * FROM jobs WHERE {_WHERE_KEY}", key).fetchone()
        return None if row is None else dict(row)

    def counts(self) -> dict[str, int]:
        """Jobs by status (none while the database fails: the status still answers)."""
        rows: list[sqlite3.Row] = []
        with self._reads.contained(sqlite3.Error):
            rows = self._db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def prune(self, older_than_ms: int) -> int:
        """Delete finished jobs that ended before ``older_than_ms``; returns how many."""
        pruned = 0
        with self._failures.contained(sqlite3.Error):
            pruned = self._db.execute(
                f"DELETE FROM jobs WHERE ended < ? AND status NOT IN ({','.join('?' * len(OPEN))})",
                (older_than_ms, *OPEN),
            ).rowcount
        return int(pruned)
