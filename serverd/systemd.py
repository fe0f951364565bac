"""serverd under systemd: the watchdog is petted by a task on serverd's event loop.

Everything serverd does runs on one asyncio loop (MQTT, the scheduler, Triton calls), so
that loop is what must stay alive: a callback that blocks it also stops :func:`watchdog`,
and systemd restarts serverd. STATUS carries a one-line summary of the offload service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from edgefed.outage import Outage
from edgefed.sdnotify import Notifier

log = logging.getLogger(__name__)


async def watchdog(
    notifier: Notifier,
    stop: asyncio.Event,
    status_line: Callable[[], str],
    status_interval: float = 10.0,
) -> None:
    """Pet the watchdog and refresh STATUS until ``stop`` is set, then say STOPPING."""
    tick = min(notifier.watchdog_s / 4, 1.0) if notifier.watchdog_s else 1.0
    last_status = time.monotonic()
    faults = Outage(log, "the systemd status line")
    while not stop.is_set():
        notifier.watchdog()
        if time.monotonic() - last_status >= status_interval:
            last_status = time.monotonic()
            with faults.contained():  # a failing status is no reason for systemd to kill us
                notifier.status(status_line())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
    notifier.stopping("stopping: draining jobs")
