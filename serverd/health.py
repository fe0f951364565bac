"""Readiness of serverd's Triton instances, probed on a period.

Every ``health_interval_s`` each endpoint's readiness is probed; an instance that turns
ready is reported up (its models are listed first if it was unreachable at start), one
that stops being ready is reported down. The scheduler's view of each instance is what
the probe compares against, so a report is made once per change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from edgefed.errors import OffloadError
from edgefed.outage import Outage
from serverd.scheduler import Scheduler
from serverd.triton.client import TritonEndpoint

log = logging.getLogger(__name__)


async def stopped(stop: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``stop``; True once it is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout)
    except TimeoutError:
        return False
    return True


async def periodic(
    stop: asyncio.Event, interval_s: float, step: Callable[[], Awaitable[None]], what: str
) -> None:
    """Run ``step`` now and every ``interval_s`` until ``stop``; a run that fails is part
    of an outage in the log (``what`` names it), never the loop's end."""
    faults = Outage(log, what)
    while True:
        with faults.contained():
            await step()
        if await stopped(stop, interval_s):
            return


class HealthWatch:
    """Probes ``endpoints``; calls ``up(name, True)`` or ``down(name, reason)`` on a change."""

    def __init__(
        self,
        endpoints: Mapping[str, TritonEndpoint],
        scheduler: Scheduler,
        up: Callable[[str, bool], None],
        down: Callable[[str, str], None],
        interval_s: float,
    ) -> None:
        self._endpoints = endpoints
        self._scheduler = scheduler
        self._up = up
        self._down = down
        self._interval_s = interval_s

    async def run(self, stop: asyncio.Event) -> None:
        """Probe every ``interval_s`` until ``stop`` (a failed probe never ends it: this
        loop is what brings an instance back)."""
        await periodic(stop, self._interval_s, self.probe, "probing the Triton instances")

    async def probe(self) -> None:
        names = list(self._endpoints)
        ready = await asyncio.gather(*(self._endpoints[n].ready() for n in names))
        known = {i.name: i for i in self._scheduler.instances()}
        healthy = {name: i.healthy for name, i in known.items()}
        for name, ok in zip(names, ready, strict=True):
            if ok and name in known and not known[name].models:
                await self._discover(name)
            if ok and not healthy.get(name, True):
                self._up(name, True)
            elif not ok and healthy.get(name, False):
                self._down(name, "not ready")

    async def _discover(self, name: str) -> None:
        """Learn the models of an endpoint that was unreachable at start."""
        try:
            models = await self._endpoints[name].models()
        except OffloadError as exc:
            log.warning("cannot list the models of %s: %s", name, exc)
            return
        self._scheduler.set_models(name, models)
        log.info("instance %s serves %s", name, ", ".join(sorted(models)) or "nothing")
