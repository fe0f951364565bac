"""A real sd_notify socket for tests: what systemd listens on, recorded with arrival times."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Note:
    at: float  # time.monotonic() on arrival
    fields: dict[str, str]


class NotifyListener:
    """Binds an AF_UNIX datagram socket (a path, or abstract with ``abstract=True``)."""

    def __init__(self, directory: Path, abstract: bool = False) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"edgefed-test-{uuid.uuid4().hex}"
            self._sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            path = directory / "notify.sock"
            self._sock.bind(str(path))
            self.address = str(path)
        self._sock.settimeout(0.2)
        self.notes: list[Note] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def env(self, watchdog_s: float | None = None) -> dict[str, str]:
        env = os.environ | {"NOTIFY_SOCKET": self.address}
        env.pop("WATCHDOG_PID", None)
        if watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1_000_000))
        return env

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.notes.append(Note(time.monotonic(), fields))

    def snapshot(self) -> list[Note]:
        with self._lock:
            return list(self.notes)

    def times(self, key: str) -> list[float]:
        return [n.at for n in self.snapshot() if key in n.fields]

    def wait_for(self, key: str, timeout: float, prefix: str = "") -> Note:
        """The first note with ``key`` whose value starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for note in self.snapshot():
                if key in note.fields and note.fields[key].startswith(prefix):
                    return note
            time.sleep(0.05)
        raise AssertionError(f"no {key} within {timeout} s; got {self.snapshot()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
