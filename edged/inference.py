"""Per-model inference workers: a bounded queue and a few threads around one ModelRunner.

Inference sessions release the GIL, so a thread per model lets heterogeneous models
run at the same time on the same frame. A model that raises is contained: the error
is counted and logged, the task is reported done, and the other models keep running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edged.framejob import FrameJob
from edged.stats import LatencyWindow
from edgefed.models.types import Box, Result

log = logging.getLogger(__name__)


@dataclass
class Task:
    """One model run on one frame: the frame's job and the regions to run on."""

    job: FrameJob
    regions: Sequence[Box | None]
    enqueued: float = field(default_factory=time.monotonic)
    tracks: Sequence[tuple[Box, int]] = ()  # tracked parent boxes of a cascade, with their ids


DoneCallback = Callable[[str, Task, list[Result] | None, float, BaseException | None], None]
DropCallback = Callable[[str, Task], None]


class ModelWorker:
    """Runs ``runner.infer`` for queued tasks on ``threads`` named threads."""

    def __init__(
        self,
        name: str,
        runner: Any,  # edgefed.models.runner.ModelRunner
        *,
        threads: int,
        queue_size: int,
        lossless: bool,
        on_done: DoneCallback,
        on_drop: DropCallback,
    ) -> None:
        self.name = name
        self.runner = runner
        self._threads_wanted = threads
        self._queue: deque[Task] = deque()
        self._queue_size = queue_size
        self._lossless = lossless
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._on_done = on_done
        self._on_drop = on_drop
        self.latency = LatencyWindow()
        self.dropped = 0
        self.busy = 0
        self.progress = time.monotonic()  # when a run last started or finished

    def start(self) -> None:
        for i in range(self._threads_wanted):
            t = threading.Thread(target=self._loop, name=f"model-{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, task: Task) -> None:
        """Queue a task; when full, drop the oldest (or wait, in lossless mode)."""
        dropped: Task | None = None
        with self._cond:
            if self._lossless:
                while len(self._queue) >= self._queue_size and not self._stopping:
                    self._cond.wait(0.1)
            elif len(self._queue) >= self._queue_size:
                dropped = self._queue.popleft()
                self.dropped += 1
            self._queue.append(task)
            self._cond.notify_all()
        if dropped is not None:
            self._on_drop(self.name, dropped)

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for task in pending:
            self._on_drop(self.name, task)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def _next(self) -> Task | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait(0.5)
            if self._stopping:
                return None
            task = self._queue.popleft()
            if not self.busy:
                self.progress = time.monotonic()  # an idle worker starts the clock afresh
            self.busy += 1
            self._cond.notify_all()
            return task

    def _loop(self) -> None:
        while (task := self._next()) is not None:
            start = time.perf_counter()
            results: list[Result] | None = None
            error: BaseException | None = None
            try:
                results = self.runner.infer(task.job.frame.image, task.regions)
            except Exception as exc:  # contained: one model's fault never stops the others
                error = exc
                self.latency.error()
                log.warning("model %s failed on frame %s: %s", self.name, task.job.key, exc)
            ms = (time.perf_counter() - start) * 1000.0
            if error is None:
                self.latency.add(ms)
            try:
                self._on_done(self.name, task, results, ms, error)
            except Exception:
                log.exception("result handling failed for model %s", self.name)
            with self._cond:  # after on_done, which may queue cascade work: idle() stays exact
                self.busy -= 1
                self.progress = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {
            "queue_depth": self.depth,
            "busy": self.busy,
            "dropped": self.dropped,
            "inferences": self.latency.count,
            "errors": self.latency.errors,
            **self.latency.percentiles(),
            **self.latency.histogram(),
        }
