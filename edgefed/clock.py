"""The one wall clock of EdgeFed: epoch milliseconds, as every wire message and table holds.

Deadlines, job times and event timestamps cross processes and hosts, so they are wall
time, not monotonic. Components take a ``Clock`` argument defaulting to ``now_ms`` so
tests can drive time themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]


def now_ms() -> int:
    """Milliseconds since the epoch, truncated (never rounded up into the future)."""
    return time.time_ns() // 1_000_000
