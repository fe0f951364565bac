"""serverd's own job table (SQLite, WAL): dedupe by job id, statuses, stored replies.

Delivery from the edge is at-least-once, so the same job id may arrive several times.
``admit`` decides what a delivery means:

- ``NEW``: first sight (or a retry of a job that failed in a way worth retrying, or
  that a serverd restart interrupted): run it;
- ``RUNNING``: the job is queued or on Triton now: drop the duplicate;
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
"""

from __future__ import annotations

import enum
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from edgefed.clock import now_ms
from edgefed.errors import OffloadError
from edgefed.lifecycle import Status
from edgefed.store import Migrations, migrate, open_database
from edgefed.store.checkpoint import RESTART_FRAMES, checkpoint, restart
from edgefed.wire import OffloadRequest

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


MIGRATIONS: Migrations = [("0001_create_jobs", _create_jobs)]


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
            row = self._db.execute(
                "SELECT status, retryable, reply FROM jobs WHERE job_id=?", (request.job_id,)
            ).fetchone()
            self._db.execute(
                "UPDATE jobs SET deliveries = deliveries + 1 WHERE job_id=?", (request.job_id,)
            )
            if row["status"] in OPEN:
                return Admitted(Admission.RUNNING)
            if row["retryable"] or row["reply"] is None:
                self._db.execute(
                    "UPDATE jobs SET status=?, received=?, started=NULL, ended=NULL, "
                    "error=NULL, reply=NULL, retryable=0, instance=NULL WHERE job_id=?",
                    (Status.ENQUEUE.value, now, request.job_id),
                )
                return Admitted(Admission.NEW)
            return Admitted(Admission.DONE, bytes(row["reply"]))

    def started(self, job_id: str, instance: str, iteration: int) -> None:
        """The job was placed on ``instance`` (iteration 0 first, +1 per re-placement).

        A no-op for a job that is no longer queued (it may already have been answered).
        """
        self._db.execute(
            "UPDATE jobs SET status=?, instance=?, iteration=?, "
            "started=coalesce(started, ?) WHERE job_id=? AND status=?",
            (
                Status.INFERENCING.value,
                instance,
                iteration,
                self._clock(),
                job_id,
                Status.ENQUEUE.value,
            ),
        )

    def requeued(self, job_id: str) -> None:
        self._db.execute(
            "UPDATE jobs SET status=?, instance=NULL WHERE job_id=?",
            (Status.ENQUEUE.value, job_id),
        )

    def finish(
        self,
        job_id: str,
        status: Status,
        reply: bytes | None,
        error: str | None = None,
        retryable: bool = False,
    ) -> None:
        """Close a job with its encoded reply (re-sent to duplicates unless retryable)."""
        self._db.execute(
            "UPDATE jobs SET status=?, reply=?, error=?, retryable=?, ended=? WHERE job_id=?",
            (status.value, reply, error, int(retryable), self._clock(), job_id),
        )

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else dict(row)

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def prune(self, older_than_ms: int) -> int:
        """Delete finished jobs that ended before ``older_than_ms``; returns how many."""
        return int(
            self._db.execute(
                f"DELETE FROM jobs WHERE ended < ? AND status NOT IN ({','.join('?' * len(OPEN))})",
                (older_than_ms, *OPEN),
            ).rowcount
        )
