"""Small thread-safe measurement helpers: latency windows and rate meters."""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 80.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
"""Upper bounds of the lifetime latency histogram (ms); 80 is the round-trip target."""


class LatencyWindow:
    """The last ``size`` latencies (ms) with percentiles, plus lifetime count and errors.

    Every latency is also counted in a lifetime histogram (``BUCKETS_MS``), which a
    metrics scraper can aggregate across runs and devices (percentiles cannot be).
    """

    def __init__(self, size: int = 512) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._buckets = [0] * len(BUCKETS_MS)  # not cumulative: one count per bucket
        self._sum_ms = 0.0
        self.count = 0
        self.errors = 0

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)
            self.count += 1
            self._sum_ms += ms
            index = bisect.bisect_left(BUCKETS_MS, ms)
            if index < len(BUCKETS_MS):
                self._buckets[index] += 1

    def histogram(self) -> dict[str, Any]:
        """Lifetime histogram: cumulative ``[[le_ms, count], ...]`` (without +Inf), sum, count."""
        with self._lock:
            counts, total, count = list(self._buckets), self._sum_ms, self.count
        cumulative = list(itertools.accumulate(counts))
        return {
            "latency_buckets": [[le, n] for le, n in zip(BUCKETS_MS, cumulative, strict=True)],
            "latency_sum_ms": round(total, 3),
            "latency_count": count,  # read with the buckets: the +Inf bucket
        }

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def percentiles(self) -> dict[str, float | None]:
        with self._lock:
            values = np.fromiter(self._values, dtype=np.float64)
        if values.size == 0:
            return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
        p50, p99 = np.percentile(values, [50, 99])
        return {
            "p50_ms": round(float(p50), 3),
            "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(values.mean()), 3),
        }


class RateMeter:
    """Events per second as an exponential moving average over ``tau_s`` seconds.

    A reading decays once the next event is overdue (later than one interval at the
    current rate), so a rate whose events stopped falls to 0 instead of keeping its
    last value for ever; between events on time it is the average itself."""

    def __init__(self, tau_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._tau = tau_s
        self._clock = clock
        self._rate = 0.0
        self._last: float | None = None
        self._lock = threading.Lock()
        self.total = 0

    def tick(self, n: int = 1) -> None:
        now = self._clock()
        with self._lock:
            self.total += n
            if self._last is None:
                self._last = now
                return
            dt = max(now - self._last, 1e-6)
            alpha = 1.0 - float(np.exp(-dt / self._tau))
            self._rate += alpha * (n / dt - self._rate)
            self._last = now

    @property
    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            rate, last = self._rate, self._last
        if last is None or rate <= 0:
            return 0.0
        overdue = (now - last) - 1.0 / rate
        if overdue > 0:
            rate *= float(np.exp(-overdue / self._tau))
        return round(rate, 2)
