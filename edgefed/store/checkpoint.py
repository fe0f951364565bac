"""Checkpoints the outbox's WAL on a thread of its own, so that commits do not wait for it.

A commit in WAL mode appends the changed pages to the ``-wal`` file; with
``synchronous=NORMAL`` it does not sync, and a job is safe from the death of the process
as soon as that append returns. A checkpoint later copies the pages into the database
and syncs both files. Left to SQLite's auto-checkpoint, that copy and its fsyncs run in
whichever commit crosses the threshold (about half of the enqueue time of 50 KB jobs,
measured with ``python -m bench outbox``). This thread runs ``PASSIVE`` checkpoints on
its own connection instead, batched: once ``max_commits`` commits are waiting (at 50 KB
frames, ~5 MB of WAL, well under the auto-checkpoint's 16 MB), or once the oldest waiting
commit is ``max_age_s`` old. Checkpointing at most every 10 ms made the offload round
trip's own commits slower (``tiny_p50_ms`` of ``python -m bench offload-rtt`` 6.1-6.4 ms
against 5.4-5.6 batched): the copy and its fsyncs compete with them for the disk and the
two cores.

A passive checkpoint copies what was committed when it began, so under a steady stream
of commits (a job every few milliseconds) it seldom leaves the WAL wholly copied when the
next transaction begins, and only then does SQLite start the WAL over: it grew to the
auto-checkpoint's 1,000 pages, and from there every commit ran a checkpoint of its own
until one restarted it (1% of the offload round trip's enqueues took ~1.5 ms instead of
~0.15). So once a checkpoint finds ``RESTART_FRAMES`` frames in the WAL, this thread
calls ``restart``: the writer's own connection, between its transactions, runs a
``RESTART`` checkpoint (the little the passive one left, and its fsyncs: about a
millisecond here), after which the next commit writes from the start of the WAL. On the
writer's connection, not this one: a ``RESTART`` here would hold the write lock while a
transaction of the writer that began with a read could not wait for it, and would fail
("database is locked"). The outbox's auto-checkpoint, set above the bound, only bounds
the WAL if this thread cannot. Durability is unchanged: no commit skips a checkpoint.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefed.outage import Outage

log = logging.getLogger(__name__)
RESTART_FRAMES = 2000  # WAL frames (pages written) past which the WAL is restarted


def checkpoint(conn: sqlite3.Connection) -> int:
    """A passive checkpoint on ``conn``, a connection that does not write; returns the
    number of frames in the WAL (all copied unless a reader holds an older snapshot)."""
    _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
    return int(frames)


def restart(conn: sqlite3.Connection) -> None:
    """On the writer's connection, outside any transaction of its own: copy what is left
    and make the next commit write from the start of the WAL."""
    conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


class Checkpointer:
    """Owns one thread and one connection; ``poke`` after a commit, ``stop`` to end both.

    ``restart`` runs ``restart()`` on the writer's connection while no transaction of the
    writer is open (it takes the writer's lock); it is called from this thread."""

    def __init__(
        self,
        path: Path,
        restart: Callable[[], None],
        max_commits: int = 32,
        max_age_s: float = 0.5,
    ) -> None:
        self._restart = restart
        self.max_commits = max_commits
        self.max_age_s = max_age_s
        self.runs = 0
        self.restarts = 0
        self.errors = 0
        self._failures = Outage(log, f"background checkpoint of {path}")
        self._lock = threading.Lock()
        self._waiting = 0  # commits since the last checkpoint began
        self._first = 0.0  # monotonic time of the oldest of them
        self._wake = threading.Event()
        self._stop = threading.Event()
        # raises sqlite3.Error; the outbox translates it
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._thread = threading.Thread(target=self._run, name="outbox-checkpoint", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def poke(self) -> None:
        """The outbox committed: checkpoint when enough has piled up or grown old."""
        with self._lock:
            if self._waiting == 0:
                self._first = time.monotonic()
            self._waiting += 1
            due = self._waiting == 1 or self._waiting >= self.max_commits
        if due:  # the first commit starts the age timer; max_commits ends the wait early
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop.is_set():
                    return
                with self._lock:
                    waiting, first = self._waiting, self._first
                if waiting == 0:
                    continue
                if waiting < self.max_commits:
                    # sleep out the age of the oldest commit, unless max_commits comes first
                    self._wake.wait(max(0.0, first + self.max_age_s - time.monotonic()))
                    self._wake.clear()
                    if self._stop.is_set():
                        return
                with self._lock:
                    self._waiting = 0
                self._checkpoint()
        finally:
            self._conn.close()

    def _checkpoint(self) -> None:
        try:
            frames = checkpoint(self._conn)
            self.runs += 1
            if frames >= RESTART_FRAMES:
                self._restart()
                self.restarts += 1
        except sqlite3.Error as exc:  # the auto-checkpoint still bounds the WAL
            self.errors += 1
            self._failures.failed(exc)
        else:
            self._failures.ok()
