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
two cores. The auto-checkpoint stays as the bound
on the WAL's size: it then finds the pages already copied. Durability is unchanged: no
commit waits for, or skips, a checkpoint.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class Checkpointer:
    """Owns one thread and one connection; ``poke`` after a commit, ``stop`` to end both."""

    def __init__(self, path: Path, max_commits: int = 32, max_age_s: float = 0.5) -> None:
        self.max_commits = max_commits
        self.max_age_s = max_age_s
        self.runs = 0
        self.errors = 0
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
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.runs += 1
        except sqlite3.Error:  # the auto-checkpoint still bounds the WAL
            self.errors += 1
            log.warning("outbox: background checkpoint failed", exc_info=True)
