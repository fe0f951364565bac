"""The systemd notify protocol (sd_notify(3)), written out: no library, no libsystemd.

systemd starts a ``Type=notify`` unit with ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). A
daemon sends newline-separated ``KEY=VALUE`` datagrams: ``READY=1`` once serving,
``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` (we send at half of it), ``STOPPING=1`` when
shutting down and ``STATUS=...`` for ``systemctl status``. Without ``NOTIFY_SOCKET`` every
call is a no-op, so the daemons run the same way from a shell.

Who calls :meth:`Notifier.watchdog` is the point of a watchdog: it must be the loop whose
death we want systemd to see (edged's supervisory loop, and only while the pipeline's
dispatchers make progress; serverd's asyncio loop), never a helper thread of its own.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

STATUS_MAX = 200  # characters: a STATUS line is a short summary, not a report


def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between systemd's watchdog deadlines for process ``pid``, or None if off."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(pid):
        return None  # the watchdog belongs to another process (a parent that exec'd us)
    return int(usec) / 1_000_000


class Notifier:
    """Sends notify messages to systemd (or to whatever listens on ``NOTIFY_SOCKET``)."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        self._socket_path = env.get("NOTIFY_SOCKET") or None
        self.watchdog_s = watchdog_interval(env, os.getpid()) if self._socket_path else None
        self._clock = clock
        self._last_pet = float("-inf")
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._socket_path is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={_short(status)}")

    def stopping(self, status: str = "stopping") -> None:
        self._send(f"STOPPING=1\nSTATUS={_short(status)}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={_short(text)}")

    def watchdog_due(self) -> bool:
        """True when half the watchdog interval has passed since the last WATCHDOG."""
        if self.watchdog_s is None:
            return False
        return self._clock() - self._last_pet >= self.watchdog_s / 2

    def watchdog(self) -> None:
        """Pet the watchdog if it is due; call it from the loop that must stay alive."""
        if self.watchdog_due():
            self._last_pet = self._clock()
            self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if self._socket_path is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), _address(self._socket_path))
            self._failed = False
        except OSError as exc:
            # systemd going away must not take the daemon with it; say so once per outage
            if not self._failed:
                log.warning("sd_notify to %s failed: %s", self._socket_path, exc)
            self._failed = True


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= STATUS_MAX else line[: STATUS_MAX - 3] + "..."
