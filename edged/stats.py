"""Small thread-safe measurement helpers: latency windows and rate meters."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np


class LatencyWindow:
    """The last ``size`` latencies (ms) with percentiles, plus lifetime count and errors."""

    def __init__(self, size: int = 512) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0
        self.errors = 0

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)
            self.count += 1

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
