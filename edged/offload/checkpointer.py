"""Checkpoints the outbox's WAL on a thread of its own, so that commits do not wait for it.

A commit in WAL mode appends the changed pages to the ``-wal`` file; with
``synchronous=NORMAL`` it does not sync, and a job is safe from the death of the process
as soon as that append returns. A checkpoint later copies the pages into the database
and syncs both files. Left to SQLite's auto-checkpoint, that copy and its fsyncs run in
whichever commit crosses the threshold (about half of the enqueue time of 50 KB jobs,
measured with ``python -m bench outbox``). This thread runs ``PASSIVE`` checkpoints on
its own connection when the outbox has written, at most one per ``interval_s``. The
auto-checkpoint stays as the bound on the WAL's size: it then finds the pages already
copied. Durability is unchanged: no commit waits for, or skips, a checkpoint.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class Checkpointer:
    """Owns one thread and one connection; ``poke`` after a commit, ``stop`` to end both."""

    def __init__(self, path: Path, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.runs = 0
        self.errors = 0
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
        """The outbox committed: checkpoint soon."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                if self._stop.is_set():
                    return
                self._wake.clear()
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error:  # the auto-checkpoint still bounds the WAL
                    self.errors += 1
                    log.warning("outbox: background checkpoint failed", exc_info=True)
                self._stop.wait(self.interval_s)
        finally:
            self._conn.close()
