"""Per-model inference workers: a bounded queue and a few threads around one ModelRunner.

Inference sessions release the GIL, so a thread per model lets heterogeneous models
run at the same time on the same frame. A model that raises is contained: the error
is counted and logged, the task is reported done, and the other models keep running.
``swap_runner`` replaces the runner between two runs (a new federated version): no task
is dropped, the runs already started finish on the old runner, which is then closed.
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
from edgefed.outage import Outage

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
        self.swaps = 0
        self._in_use: dict[int, int] = {}  # id(runner) -> runs started on it, not finished
        self._retired: dict[int, Any] = {}  # swapped-out runners still in use
        self.progress = time.monotonic()  # when a run last started or finished
        # a device that keeps failing (a dead NPU, no fallback) fails every frame: one
        # outage in the log, not a line per run (12 a second at 10 frames a second)
        self._failures = Outage(log, f"model {name}")

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

    def swap_runner(self, runner: Any) -> None:
        """Run the next tasks on ``runner``; the old one is closed once idle."""
        with self._cond:
            old, self.runner = self.runner, runner
            self.swaps += 1
            if self._in_use.get(id(old)):
                self._retired[id(old)] = old
                old = None
        if old is not None:
            old.close()

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def _next(self) -> tuple[Task, Any] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait(0.5)
            if self._stopping:
                return None
            task = self._queue.popleft()
            if not self.busy:
                self.progress = time.monotonic()  # an idle worker starts the clock afresh
            self.busy += 1
            runner = self.runner
            self._in_use[id(runner)] = self._in_use.get(id(runner), 0) + 1
            self._cond.notify_all()
            return task, runner

    def _loop(self) -> None:
        while (picked := self._next()) is not None:
            task, runner = picked
            start = time.perf_counter()
            results: list[Result] | None = None
            error: BaseException | None = None
            try:
                results = runner.infer(task.job.frame.image, task.regions)
            except Exception as exc:  # contained: one model's fault never stops the others
                error = exc
                self.latency.error()
                self._failures.failed(exc)
            ms = (time.perf_counter() - start) * 1000.0
            if error is None:
                self.latency.add(ms)
                self._failures.ok()
            try:
                self._on_done(self.name, task, results, ms, error)
            except Exception:
                log.exception("result handling failed for model %s", self.name)
            with self._cond:  # after on_done, which may queue cascade work: idle() stays exact
                self.busy -= 1
                self.progress = time.monotonic()
                self._in_use[id(runner)] -= 1
                done_with = None
                if not self._in_use[id(runner)]:
                    del self._in_use[id(runner)]
                    done_with = self._retired.pop(id(runner), None)
            if done_with is not None:
                done_with.close()

    def stats(self) -> dict[str, Any]:
        return {
            "queue_depth": self.depth,
            "busy": self.busy,
            "dropped": self.dropped,
            "runner_swaps": self.swaps,
            "inferences": self.latency.count,
            "errors": self.latency.errors,
            **self.latency.percentiles(),
            **self.latency.histogram(),
        }
