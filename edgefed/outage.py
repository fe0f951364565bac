"""A failure that repeats, logged as one outage: when it starts, now and then while it
lasts, and when it ends.

A full disk or a store that refuses writes fails on every frame; logging each failure
with its traceback buries the cause in thousands of identical lines (and fills the disk
further). An ``Outage`` logs the first failure with its traceback, then at most one line
every ``remind_s`` with the count and the latest error, and one line when a call succeeds
``settle_s`` after the last failure (an operation that fails now and then, such as a
write that only some calls make, is one outage, not one per call). Thread-safe;
``failures`` counts every failure, for status and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, ParamSpec

REMIND_S = 300.0
SETTLE_S = 30.0
REPEAT_S = 60.0

P = ParamSpec("P")


class Outage:
    """The state of one repeating failure (``what`` names the operation in the log)."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        remind_s: float = REMIND_S,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.what = what
        self.remind_s = remind_s
        self.settle_s = settle_s
        self.failures = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current outage started
        self._count = 0  # failures in the current outage
        self._reminded = 0.0
        self._last = 0.0  # the latest failure

    @property
    def active(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        """Call from the ``except`` block of the failed operation."""
        now = self._clock()
        with self._lock:
            self.failures += 1
            self._count += 1
            self._last = now
            if self._since is None:
                self._since = self._reminded = now
                first = True
            elif now - self._reminded >= self.remind_s:
                self._reminded = now
                first = False
            else:
                return
            count, elapsed = self._count, now - self._since
        if first:
            self.log.error(
                "%s failed: %s (while it keeps failing, one line every %.0f s)",
                self.what,
                exc,
                self.remind_s,
                exc_info=exc,
            )
        else:
            self.log.error(
                "%s still failing: %d times in %.0f s, latest: %s", self.what, count, elapsed, exc
            )

    @contextlib.contextmanager
    def contained(self, *kinds: type[Exception]) -> Iterator[None]:
        """The block is one try of the operation: an exception of ``kinds`` (any, by
        default) is a failure, logged as this outage's and not raised; else ``ok``."""
        catch = kinds or (Exception,)
        try:
            yield
        except catch as exc:
            self.failed(exc)
        else:
            self.ok()

    def ok(self) -> None:
        """Call after the operation succeeded; ends an outage ``settle_s`` after its last
        failure."""
        if self._since is None:  # the common case, without the lock
            return
        now = self._clock()
        with self._lock:
            if self._since is None or now - self._last < self.settle_s:
                return
            count, elapsed = self._count, now - self._since
            self._since, self._count = None, 0
        self.log.warning("%s works again after %d failures in %.0f s", self.what, count, elapsed)


class Repeats:
    """A line that can come once per input (a dropped message, a job refused), logged
    without flooding: the first of each ``key`` at once, then at most one line per
    ``every_s``, which says how many were left out since the last. Thread-safe; keys are
    meant to be few (an error code, a kind of input), never the input's own ids."""

    def __init__(
        self,
        log: logging.Logger,
        level: int = logging.WARNING,
        every_s: float = REPEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.level, self.every_s = log, level, every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, int]] = {}  # key -> (last line, left out)

    def __call__(self, key: str, text: str) -> None:
        now = self._clock()
        with self._lock:
            last, left_out = self._state.get(key, (-math.inf, 0))
            if now - last < self.every_s:
                self._state[key] = (last, left_out + 1)
                return
            self._state[key] = (now, 0)
        if left_out:
            text += f" ({left_out} more like it in the last {now - last:.0f} s not logged)"
        self.log.log(self.level, "%s", text)


class Sinks(Generic[P]):
    """Callables that are each given every call's arguments; a failing one is an outage
    of its own and never keeps them from the others."""

    def __init__(self, log: logging.Logger, what: str, sinks: Iterable[Callable[P, object]]):
        self._log, self._what = log, what
        self._sinks: list[tuple[Callable[P, object], Outage]] = []
        for sink in sinks:
            self.add(sink)

    def add(self, sink: Callable[P, object]) -> None:
        name = getattr(sink, "__qualname__", type(sink).__name__)
        self._sinks = [*self._sinks, (sink, Outage(self._log, f"{self._what} {name}"))]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for sink, outage in self._sinks:
            with outage.contained():
                sink(*args, **kwargs)

    @property
    def failures(self) -> int:
        return sum(outage.failures for _, outage in self._sinks)
