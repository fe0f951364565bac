"""edged under systemd: READY once serving, WATCHDOG only while the pipeline moves.

:class:`PipelineWatch` is ticked by :meth:`edged.app.EdgedApp.run`, the daemon's own
supervisory loop. It pets the watchdog only when :meth:`edged.pipeline.Pipeline.stalled`
names no thread, so a dispatcher blocked on a hung model (or a model run that never ends)
stops the WATCHDOG messages and systemd restarts edged. STATUS carries the summary line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edged.pipeline import Pipeline
from edgefed.sdnotify import Notifier

log = logging.getLogger(__name__)


class PipelineWatch:
    def __init__(
        self,
        notifier: Notifier,
        pipeline: Pipeline,
        status_line: Callable[[], str],
        status_interval: float,
    ) -> None:
        self._notifier = notifier
        self._pipeline = pipeline
        self._status_line = status_line
        self._status_interval = status_interval
        self._last_status = time.monotonic()
        self._stalled: list[str] = []

    def ready(self, text: str) -> None:
        self._notifier.ready(text)
        self._notifier.watchdog()

    def tick(self) -> None:
        """One turn of the supervisory loop: watchdog if alive, STATUS now and then."""
        interval = self._notifier.watchdog_s
        if interval is not None:
            stalled = self._pipeline.stalled(interval / 2)
            if stalled != self._stalled:
                if stalled:
                    log.error("pipeline stalled: %s; watchdog withheld", ", ".join(stalled))
                    self._notifier.status(f"stalled: {', '.join(stalled)}")
                else:
                    log.info("pipeline moving again")
                self._stalled = stalled
            if not stalled:
                self._notifier.watchdog()
        now = time.monotonic()
        if now - self._last_status >= self._status_interval:
            self._last_status = now
            if not self._stalled:
                self._notifier.status(self._status_line())

    def stopping(self) -> None:
        self._notifier.stopping("stopping: draining the pipeline")
