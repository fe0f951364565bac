"""The one wall clock of EdgeFed: epoch milliseconds, as every wire message and table holds.

Deadlines, job times and event timestamps cross processes and hosts, so they are wall
time, not monotonic. Components take a ``Clock`` argument defaulting to ``now_ms`` so
tests can drive time themselves. ``SteadyClock`` is for the durations a process times
itself (how long a federated round collects, the interval between rounds): epoch
milliseconds that a step of the wall clock does not move.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]


def now_ms() -> int:
    """Milliseconds since the epoch, truncated (never rounded up into the future)."""
    return time.time_ns() // 1_000_000


def boot_ns() -> int:
    """Nanoseconds since boot, suspended or paused time included (Linux), else monotonic."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.monotonic_ns() if boottime is None else time.clock_gettime_ns(boottime)


class SteadyClock:
    """Epoch ms that never step: the wall clock when made, advanced by the monotonic clock
    since. NTP stepping a server's clock back an hour would otherwise hold a round open,
    and the next one back, for that hour (forward: close it at once); this clock differs
    from the wall clock by the steps since it was made, which only what it times sees."""

    def __init__(self, wall: Clock = now_ms, monotonic: Callable[[], int] = boot_ns):
        self._monotonic = monotonic
        self._wall_at, self._monotonic_at = wall(), monotonic()

    def __call__(self) -> int:
        return self._wall_at + (self._monotonic() - self._monotonic_at) // 1_000_000
