"""How both daemons take signals (docs/systemd.md, "Signals").

- SIGTERM or SIGINT: stop cleanly (drain, save, say goodbye); the daemon's own ``stop``.
- The same again while stopping: stop now, without draining, as ``kill -9`` would, with
  exit status 128 + the signal's number: for an operator who will not wait (systemd
  itself sends SIGTERM once, then SIGKILL after ``TimeoutStopSec``). Nothing stored is
  lost that way: edged's outbox is crash-safe, and the jobs serverd held unanswered are
  sent again by their edges.
- SIGHUP: neither daemon reloads its configuration (a restart applies a changed one; the
  runtime settings change through the API or the device twin). Its default action, death,
  took a daemon down for good when a log-rotation script or a closing terminal sent it
  (systemd's ``Restart=on-failure`` takes a death by SIGHUP for a clean stop): it is
  logged and ignored.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopSignals:
    """The signal handler: ``handle(signum)`` for each signal in ``SIGNALS``."""

    def __init__(self, log: logging.Logger, daemon: str, stop: Callable[[], None]) -> None:
        self._log, self._daemon, self._stop = log, daemon, stop
        self.received = 0  # stop signals so far

    def handle(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            self._log.warning(
                "received SIGHUP: %s does not reload its configuration; restart it to apply "
                "a changed one",
                self._daemon,
            )
            return
        self.received += 1
        if self.received == 1:
            self._stop()  # first: the log line below may fail (a write it interrupted)
            self._log.info("received %s, stopping", name)
            return
        # Straight to the file descriptor: edged's handler runs in its main thread
        # wherever that is, perhaps inside a write to stderr (logging's would fail there)
        os.write(2, f"received {name} again: stopping now, without draining\n".encode())
        os._exit(128 + signum)
