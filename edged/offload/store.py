"""The outbox's SQLite database: opening it, transactions, the open-job totals, and reads.

One connection serves all threads under a lock; ``batch()`` groups a burst of operations
into one commit. WAL checkpoints run on a thread of their own
(``edgefed.store.checkpoint``), so a commit does not wait for them. ``Outbox`` adds the
job transitions on top.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator

from edged.offload.records import COLUMNS, JobRecord, OutboxConfig, sql_in, to_record
from edged.offload.schema import MIGRATIONS
from edged.offload.serverclock import ServerClock
from edgefed import lifecycle
from edgefed.clock import Clock, now_ms
from edgefed.errors import OffloadError
from edgefed.lifecycle import Status
from edgefed.store import migrate, open_database
from edgefed.store.checkpoint import RESTART_FRAMES, Checkpointer, restart

# Frame-sized payloads (tens of KB) span 4x fewer pages than at the default 4096; with the
# partial indexes a status change still writes about one page. Measured: bench/outbox.py.
PAGE_SIZE = 16384


class OutboxStore:
    """The database of the outbox; ``_lock`` guards the connection and the totals."""

    def __init__(self, config: OutboxConfig, clock: Clock = now_ms) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self._db = open_database(
                config.path,
                synchronous=config.synchronous,
                # the checkpointer restarts the WAL long before this: the bound if it cannot
                autocheckpoint=2 * RESTART_FRAMES,
                page_size=PAGE_SIZE,
                shared=True,
                pragmas=(
                    # Debian builds SQLite with SECURE_DELETE on, which zeroes every freed
                    # page of a deleted frame through the WAL: 5 ms per sweep of 60 finished
                    # 78 KB jobs here, stalling the offload worker. FAST still purges b-tree
                    # pages and adds no I/O.
                    "secure_delete=FAST",
                    # The statement journals of multi-statement transactions stay in memory:
                    # on disk, each was a file created and unlinked in /var/tmp, six system
                    # calls a job.
                    "temp_store=MEMORY",
                ),
            )
            migrate(self._db, MIGRATIONS, OffloadError, f"outbox {config.path}")
            # payloads of jobs closed by an older edged, which deleted them in batches
            self._db.execute(
                "DELETE FROM payloads WHERE id IN (SELECT id FROM jobs WHERE ended IS NOT NULL)"
            )
            self._checkpointer = Checkpointer(config.path, self._restart_wal)
        except (OSError, sqlite3.Error) as exc:
            raise OffloadError(f"outbox {config.path}: {exc}") from exc
        self.shed_total = 0
        self.duplicates = 0
        self.late = 0
        self._batches = 0  # batches open (under the lock)
        self._open_rows = self._open_bytes = 0
        self._recount()

    def close(self) -> None:
        self._checkpointer.stop()  # first: its thread may be waiting for the lock
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run several operations as one transaction (one commit): group commit for bursts.

        A caller may go on after one operation of the batch failed (the offload core
        contains each step). SQLite answers some errors (a full disk, I/O) by rolling the
        whole transaction back; the operations after it would then each commit on their
        own while the batch's commit fails, so that the caller discards what they did
        (outcomes never told) although it was stored. Once that happened, every further
        write of the batch and its commit raise ``OffloadError`` instead: the batch
        changes nothing, as a failed commit should."""
        with self._lock, self._tx():
            self._batches += 1
            try:
                yield
                self._still_in_batch()
            finally:
                self._batches -= 1

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """The lock, for one write statement outside ``_tx`` (it commits alone, or with
        the batch around it); SQLite's errors leave as ``OffloadError``, as from ``_tx``."""
        with self._lock:
            self._still_in_batch()
            try:
                yield
            except sqlite3.Error as exc:
                raise OffloadError(f"outbox {self.config.path}: {exc}") from exc

    def _still_in_batch(self) -> None:
        """Raise if a batch is open and SQLite rolled its transaction back."""
        if self._batches and not self._db.conn.in_transaction:
            raise OffloadError(
                f"outbox {self.config.path}: an error in this batch (logged before) made "
                "SQLite roll its transaction back; nothing of it is stored"
            )

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return to_record(row) if row is not None else None

    def last_rowid(self) -> int:
        """The newest job's rowid (0 for none): the jobs stored after it are newer."""
        with self._lock:
            row = self._db.execute("SELECT coalesce(max(rowid), 0) AS last FROM jobs").fetchone()
        return int(row["last"])

    def shift_open(self, step_ms: int, after_rowid: int = 0) -> int:
        """Move the times of the open jobs stored after ``after_rowid`` by ``step_ms``: the
        clock they were timed on moved (``ServerClock``). Returns how many moved."""
        with self._lock, self._tx():
            moved = self._db.conn.execute(
                "UPDATE jobs SET created = created + ?, deadline = deadline + ?, "
                "next_attempt = next_attempt + ?, started = started + ?, updated = updated + ? "
                "WHERE ended IS NULL AND rowid > ?",
                (step_ms, step_ms, step_ms, step_ms, step_ms, after_rowid),
            )
        return moved.rowcount

    @property
    def clock_offset_ms(self) -> int:
        """How far the clock the jobs are timed on is from this device's (a ServerClock
        learns serverd's; 0 for any other)."""
        return self._clock.offset_ms if isinstance(self._clock, ServerClock) else 0

    def counts(self) -> dict[str, int]:
        """Jobs per status (every status listed, zeros included)."""
        out = {str(s): 0 for s in Status}
        with self._lock:
            for status, n in self._db.execute("SELECT status, count(*) FROM jobs GROUP BY status"):
                out[status] = n
        return out

    def page(
        self,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        offset: int = 0,
        oldest_first: bool = False,
    ) -> list[JobRecord]:
        """Jobs for the status API, newest first unless ``oldest_first``; no payloads."""
        marks = sql_in(statuses if statuses is not None else Status)
        order = "ASC" if oldest_first else "DESC"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE status IN {marks} "
                f"ORDER BY created {order}, id {order} LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [to_record(r) for r in rows]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction; if it rolls back, the in-memory totals are recounted. SQLite's
        own errors (locked by another process past the busy timeout, disk full) leave as
        ``OffloadError`` naming the file, so a caller's refusal path counts them."""
        self._still_in_batch()
        try:
            with self._db.atomic():
                yield
        except BaseException as exc:
            self._recount()
            if isinstance(exc, sqlite3.Error):
                raise OffloadError(f"outbox {self.config.path}: {exc}") from exc
            raise
        self._checkpointer.poke()

    def _restart_wal(self) -> None:
        """From the checkpointer's thread: the WAL is large; start it over, between
        transactions (the lock)."""
        with self._lock:
            restart(self._db.conn)

    def _recount(self) -> None:
        marks = sql_in(lifecycle.OPEN)
        row = self._db.execute(
            f"SELECT count(*), total(payload_bytes) FROM jobs WHERE status IN {marks}"
        ).fetchone()
        self._open_rows, self._open_bytes = int(row[0]), int(row[1])
