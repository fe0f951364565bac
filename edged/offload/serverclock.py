"""serverd's wall clock as this edge estimates it: the clock offload deadlines are made on.

A request's ``deadline`` is an absolute time that serverd judges on its own clock. An edge
box that boots without a real-time clock, or a site without NTP, runs seconds to years off
serverd's: an edge more than a job's lifetime (5 s by default) behind had every job refused
as late on arrival, one ahead had its jobs kept past the point it gave up on them.

``ServerClock`` is the edge's clock plus an offset learnt from serverd's replies: each
carries serverd's time when it answered (a result's ``completed``, an error's ``at``),
which came before the reply reached the edge, so ``server time - edge time at receipt``
is a lower bound of the offset, short by the reply's transit. The bounds are kept against
the edge's monotonic clock, so that the edge's wall clock may step (NTP reaching a box
that booted in 1970) without moving serverd's time as the edge tells it. The largest bound
of the last one to two ``window_s`` is the estimate (the reply that waited least, as NTP's
clock filter takes the sample with the least delay): a reply the broker held while the
edge was away, or one resent from serverd's store, gives a looser bound that loses to a
tighter one of the same windows. If serverd's clock steps ahead the estimate follows at
once; if it steps back, within two windows. Until the first reply this clock is the
edge's own: the first jobs of a skewed edge are refused (as before), and their refusals
teach it serverd's clock; the estimate is not kept across restarts, so the same happens
after one. The outbox and the client read this clock, so deadlines and retries on the edge
and serverd's verdicts agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edgefed.clock import Clock, now_ms
from edgefed.outage import Repeats
from edgefed.wire import MAX_EPOCH_MS

log = logging.getLogger(__name__)

WINDOW_S = 60.0
SKEWED_MS = 1000  # an offset larger than this is logged (the site's clocks need NTP)
MIN_SERVER_MS = 1_577_836_800_000  # 2020-01-01: no serverd runs before
MAX_SERVER_MS = MAX_EPOCH_MS // 2  # far past any clock, with room for deadlines on the wire


class ServerClock:
    """``now_ms`` on serverd's clock, as far as its replies tell (a ``Clock``)."""

    def __init__(
        self,
        local: Clock = now_ms,
        window_s: float = WINDOW_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._local, self._monotonic, self.window_s = local, monotonic, window_s
        # serverd's clock minus the monotonic one (ms), once a reply told: the edge's wall
        # clock may step (NTP reaching a box booted in 1970) without moving this clock
        self._from_monotonic: int | None = None
        # the largest bound of the current window and of the one before (a sliding maximum
        # over one to two windows): one loose bound never drags the estimate down
        self._bounds: list[int | None] = [None, None]
        self._window_at = monotonic()
        self._skew = Repeats(log)

    def __call__(self) -> int:
        if self._from_monotonic is None:
            return self._local()
        return self._monotonic_ms() + self._from_monotonic

    @property
    def offset_ms(self) -> int:
        """serverd's clock minus this device's wall clock, now (0 before any reply)."""
        return self() - self._local()

    def observe(self, server_ms: int) -> None:
        """serverd said ``server_ms`` was its time when it answered a reply received now."""
        if not MIN_SERVER_MS <= server_ms <= MAX_SERVER_MS:
            return  # no clock a serverd runs on: a bound would put the jobs' times off the wire
        bound = server_ms - self._monotonic_ms()
        if (now := self._monotonic()) - self._window_at > self.window_s:
            self._bounds, self._window_at = [self._bounds[1], None], now
        current = self._bounds[1]
        self._bounds[1] = bound if current is None else max(current, bound)
        self._from_monotonic = max(b for b in self._bounds if b is not None)
        if abs(offset := self.offset_ms) > SKEWED_MS:
            ahead = "ahead of" if offset > 0 else "behind"
            self._skew(
                "skew",
                f"serverd's clock is {abs(offset) / 1000:.1f} s {ahead} this device's: "
                "offload deadlines follow serverd's (set up NTP on the device)",
            )

    def _monotonic_ms(self) -> int:
        return int(self._monotonic() * 1000)
