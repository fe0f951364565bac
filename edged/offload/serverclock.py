"""serverd's wall clock as this edge estimates it: the clock offload deadlines are made on.

A request's ``deadline`` is an absolute time that serverd judges on its own clock. An edge
box that boots without a real-time clock, or a site without NTP, runs seconds to years off
serverd's: an edge more than a job's lifetime (5 s by default) behind had every job refused
as late on arrival, one ahead had its jobs kept past the point it gave up on them.

``ServerClock`` is serverd's time learnt from its replies: each carries serverd's time when
it answered (a result's ``completed``, an error's ``at``), which came before the reply
reached the edge, so ``server time - edge time at receipt`` is a lower bound of the offset,
short by the reply's transit. The bounds are kept against the time since boot
(``CLOCK_BOOTTIME``, which runs on while the box is suspended, unlike the monotonic clock),
so that the edge's wall clock may step (NTP reaching a box that booted in 1970) without
moving serverd's time as the edge tells it. The largest bound of the last one to two
``window_s`` is the estimate (the reply that waited least, as NTP's clock filter takes the
sample with the least delay): a reply the broker held while the edge was away, or one
resent from serverd's store, gives a looser bound that loses to a tighter one of the same
windows. If serverd's clock steps ahead the estimate follows at once; if it steps back,
within two windows. ``observe`` returns how far a change moved the clock once it adds up
to a second, so that the caller moves the jobs it timed on the clock before.

Until the first reply this clock is the edge's own: the first jobs of an edge more than
their lifetime behind are refused, and their refusals teach it serverd's clock. The
estimate is kept in ``state`` (a small JSON file beside the outbox) with the boot's id, so
a restart of edged within the same boot starts from it; after a reboot it is learnt again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from edgefed.clock import Clock, boot_ns, now_ms
from edgefed.files import write_durably
from edgefed.outage import Repeats
from edgefed.wire import MAX_EPOCH_MS

log = logging.getLogger(__name__)

WINDOW_S = 60.0
SKEWED_MS = 1000  # an offset larger than this is logged (the site's clocks need NTP)
STEP_MS = 1000  # a change of the estimate this large moves the jobs timed on it
MIN_SERVER_MS = 1_577_836_800_000  # 2020-01-01: no serverd runs before
MAX_SERVER_MS = MAX_EPOCH_MS // 2  # far past any clock, with room for deadlines on the wire
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def since_boot() -> float:
    """Seconds since boot, suspended time included (Linux), else the monotonic clock."""
    return boot_ns() / 1e9


def boot_id() -> str:
    """This boot's id (Linux); '' where there is none, so nothing is ever reused."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


class ServerClock:
    """``now_ms`` on serverd's clock, as far as its replies tell (a ``Clock``)."""

    def __init__(
        self,
        local: Clock = now_ms,
        window_s: float = WINDOW_S,
        since_boot: Callable[[], float] = since_boot,
        state: Path | None = None,
        boot: Callable[[], str] = boot_id,
    ) -> None:
        self._local, self._since_boot, self.window_s = local, since_boot, window_s
        self._state, self._boot = state, boot()
        # serverd's clock minus the time since boot (ms), once a reply told
        self._from_boot: int | None = self._load()
        # the largest bound of the current window and of the one before (a sliding maximum
        # over one to two windows): one loose bound (a reply the broker held while edged
        # restarted) never drags the estimate down, the one kept from before included
        self._bounds: list[int | None] = [None, self._from_boot]
        self._window_at = since_boot()
        self._unmoved = 0  # changes of the estimate too small to move the jobs, added up
        self._skew, self._state_failures = Repeats(log), Repeats(log)

    @property
    def learnt(self) -> bool:
        """Whether a reply (of this boot) told serverd's clock."""
        return self._from_boot is not None

    def __call__(self) -> int:
        if self._from_boot is None:
            return self._local()
        return self._boot_ms() + self._from_boot

    @property
    def offset_ms(self) -> int:
        """serverd's clock minus this device's wall clock, now (0 before any reply)."""
        return self() - self._local()

    def observe(self, server_ms: int) -> int:
        """serverd said ``server_ms`` was its time when it answered a reply received now;
        returns how far the clock moved (ms) if that, with the changes before it too small
        to count, is over ``STEP_MS``, else 0."""
        if not MIN_SERVER_MS <= server_ms <= MAX_SERVER_MS:
            return 0  # no clock a serverd runs on: its jobs' times would leave the wire
        now = self._since_boot()
        boot_ms = int(now * 1000)  # one reading: the change below is the estimate's alone
        before = self._local() - boot_ms if self._from_boot is None else self._from_boot
        bound = server_ms - boot_ms
        if now - self._window_at > self.window_s:
            self._bounds, self._window_at = [self._bounds[1], None], now
        current = self._bounds[1]
        self._bounds[1] = bound if current is None else max(current, bound)
        self._from_boot = max(b for b in self._bounds if b is not None)
        if abs(offset := self.offset_ms) > SKEWED_MS:  # once a minute while so
            ahead = "ahead of" if offset > 0 else "behind"
            self._skew(
                "skew",
                f"serverd's clock is {abs(offset) / 1000:.1f} s {ahead} this device's: "
                "offload deadlines follow serverd's (set up NTP on the device)",
            )
        self._unmoved += self._from_boot - before
        if abs(self._unmoved) <= STEP_MS:
            return 0
        step, self._unmoved = self._unmoved, 0
        self._save()
        return step

    def _boot_ms(self) -> int:
        return int(self._since_boot() * 1000)

    def _load(self) -> int | None:
        if self._state is None or not self._boot:
            return None
        try:
            kept = json.loads(self._state.read_text())
            if kept.get("boot_id") == self._boot and isinstance(kept.get("from_boot_ms"), int):
                return int(kept["from_boot_ms"])
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or unreadable: learnt again from the next reply
        return None

    def _save(self) -> None:
        if self._state is None or self._from_boot is None or not self._boot:
            return
        kept = {"boot_id": self._boot, "from_boot_ms": self._from_boot}
        try:
            write_durably(self._state, json.dumps(kept).encode())
        except OSError as exc:
            self._state_failures("save", f"cannot keep serverd's clock in {self._state}: {exc}")
