"""The offload core's test rig (``tests/edged/offload/test_core*.py``): a core on a real
outbox on a temporary file, a fake clock shared by both, the effects recorded.

What is committed is read through a second SQLite connection, which sees only commits.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.offload.core import (
    Event,
    JobOutcome,
    OffloadCore,
    ReplyIn,
    Submitted,
    Timer,
    Unsent,
)
from edged.offload.outbox import Outbox
from edged.offload.records import NewJob, OutboxConfig
from edgefed.wire import (
    OffloadErrorMessage,
    OffloadRequest,
    OffloadResult,
    encode_request,
    new_job_id,
)

JPEG = b"\xff\xd8\xff\xe0" + b"\x10" * 200 + b"\xff\xd9"
START = 1_700_000_000_000  # epoch ms of the fake clock


class Effects:
    """Records the core's decisions; ``log`` has them in order, with what was committed."""

    def __init__(self, committed: Callable[[str], str | None]) -> None:
        self.committed = committed
        self.published: list[str] = []
        self.frames: dict[str, bytes] = {}
        self.timers: dict[Timer, float] = {}
        self.told: list[JobOutcome] = []
        self.log: list[tuple[str, str, str | None]] = []
        self.refuse: set[str] = set()  # job ids whose publish fails
        self.too_large: set[str] = set()  # job ids whose publish never can succeed

    def publish(self, job_id: str, frame: bytes) -> Unsent | None:
        if job_id in self.refuse:
            return Unsent("not connected")
        if job_id in self.too_large:
            return Unsent("larger than the broker takes", final=True)
        self.published.append(job_id)
        self.frames[job_id] = frame
        return None

    def start_timer(self, timer: Timer, delay_s: float) -> None:
        assert timer not in self.timers, f"{timer} armed twice"
        self.timers[timer] = delay_s

    def cancel_timer(self, timer: Timer) -> None:
        del self.timers[timer]

    def tell(self, outcome: JobOutcome) -> None:
        self.told.append(outcome)
        self.log.append(("tell", outcome.job_id, self.committed(outcome.job_id)))


class Rig:
    """A core on a real outbox, with a fake clock and the ids still being submitted."""

    def __init__(self, tmp_path: Path, window: int = 32, **outbox: Any) -> None:
        self.now = START
        self.path = tmp_path / "outbox.sqlite"
        settings = {"result_timeout_s": 1.0, "retry_base_s": 0.5, "retry_cap_s": 2.0}
        config = OutboxConfig(path=self.path, **(settings | outbox))
        self.outbox = Outbox(config, clock=self.clock)
        self.reader = sqlite3.connect(self.path)
        self.effects = Effects(self.committed)
        self.submitting: set[str] = set()
        self.core = OffloadCore(
            self.outbox,
            self.effects,
            window=window,
            sweep_interval_s=0.25,
            submitting=lambda: sorted(self.submitting),
            clock=self.clock,
        )
        self.commits = 0
        batch = self.outbox.batch

        @contextlib.contextmanager
        def counted() -> Iterator[None]:
            with batch():
                yield
            self.commits += 1

        self.outbox.batch = counted  # type: ignore[method-assign]

    def clock(self) -> int:
        return self.now

    def close(self) -> None:
        self.reader.close()
        self.outbox.close()

    def committed(self, job_id: str) -> str | None:
        row = self.reader.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def row(self, job_id: str, column: str) -> Any:
        query = f"SELECT {column} FROM jobs WHERE id = ?"
        return self.reader.execute(query, (job_id,)).fetchone()[0]

    def submit(self, priority: int = 0, ttl_ms: int = 60_000, n: int = 0) -> Submitted:
        """A job stored as ``OffloadClient.submit`` does (1 ms after the last); the event
        it posts."""
        self.now += 1
        request = OffloadRequest(
            job_id=new_job_id(),
            device_id="cam-1",
            model="det",
            priority=priority,
            deadline=self.now + ttl_ms,
            created=self.now,
            payload_kind="jpeg",
        )
        outcome = self.outbox.enqueue(NewJob(request, JPEG, "", "test", {"n": n}))
        return Submitted(outcome, request, encode_request(request, JPEG))

    def burst(self, *events: Event, connected: bool = True) -> bool:
        return self.core.burst(list(events), connected)

    def fire(self, timer: Timer, connected: bool = True) -> bool:
        """The timer fires and its event makes a burst of its own."""
        del self.effects.timers[timer]
        return self.burst(self.core.fired(timer), connected=connected)

    def result(
        self, job_id: str, log: list[tuple[str, str, str | None]] | None = None, size: int = 0
    ) -> ReplyIn:
        """The server's result for ``job_id``; ``size`` pads it with that many bytes."""
        results: list[dict[str, Any]] = [{"ok": 1}] + ([{"pad": "x" * size}] if size else [])
        reply = OffloadResult(
            job_id=job_id, device_id="cam-1", model="det", results=results, served_by="s",
            completed=self.now,
        )  # fmt: skip
        log = self.effects.log if log is None else log
        return ReplyIn(reply, lambda: log.append(("ack", job_id, self.committed(job_id))))

    def error(self, job_id: str, retryable: bool) -> ReplyIn:
        code = "overloaded" if retryable else "unknown_model"
        reply = OffloadErrorMessage(
            job_id=job_id, device_id="cam-1", code=code, reason="no", retryable=retryable
        )
        return ReplyIn(reply, lambda: self.effects.log.append(("ack", job_id, None)))


@contextlib.contextmanager
def commits_failing(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every commit of the outbox fails as a full disk makes a WAL append fail (at the
    commit, after the statements ran)."""
    real = rig.outbox.batch

    @contextlib.contextmanager
    def full_disk() -> Iterator[None]:
        with real():
            yield
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(rig.outbox, "batch", full_disk)
    yield
    monkeypatch.setattr(rig.outbox, "batch", real)


@contextlib.contextmanager
def disk_full(rig: Rig) -> Iterator[None]:
    """A real SQLITE_FULL: the outbox may not grow (SQLite's page limit answers a write
    that needs a new page as a full disk does)."""
    db = rig.outbox._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")
    yield
    db.execute(f"PRAGMA max_page_count={pages * 100}")
