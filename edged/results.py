"""Result sinks: the JSON-lines file, the recent-events log and the periodic summary."""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any

from edged.framejob import FrameJob
from edgefed.errors import StartError

log = logging.getLogger(__name__)


class JsonlSink:
    """Appends one JSON object per completed frame to ``path``, and the
    ``offload_result`` records the offload path writes with ``write``.

    Each line goes to the file in one unbuffered write, so a write that fails (a full
    disk) raises at once and keeps nothing in memory to grow while the disk stays full.
    If it wrote part of a line, the next line starts on a line of its own.

    With ``max_bytes`` the file is rotated before a line would take it past that size:
    ``results.jsonl`` becomes ``results.jsonl.1`` (the older ones move up to ``.keep``;
    the oldest is dropped), so the results take at most ``(keep + 1) * max_bytes`` of the
    disk (unrotated, the demo's lines fill ~2.7 GB a day at 10 frames/s: configuration.md).
    """

    def __init__(self, path: Path, max_bytes: int | None = None, keep: int = 1) -> None:
        """Open ``path`` for appending; a path edged cannot write (its directory's mode,
        a directory in its place) is a ``StartError`` naming it: exit 5, one line."""
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.rotations = 0
        self._lock = threading.Lock()
        self._closed = False  # by close(): later writes are dropped
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[bytes] = self._open()
        except OSError as exc:
            raise StartError(f"results file {path}: {exc.strerror or exc}") from exc
        self._partial = False  # a failed write may have left part of a line

    def __call__(self, job: FrameJob) -> None:
        self.write(job.record())

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._closed:  # an outcome told while edged stops is not written
                return
            if self._file.closed:  # a rotation could not reopen it: try again
                self._file = self._open()
            limit = self.max_bytes
            if limit is not None and self._size > 0 and self._size + len(line) > limit:
                self._rotate()
            full = b"\n" + line if self._partial else line
            written = 0
            try:
                while written < len(full):
                    written += self._file.write(full[written:]) or 0
            finally:  # the file ends inside a line unless the last byte written was "\n"
                self._partial = self._partial if not written else full[written - 1] != 10
                self._size += written

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._file.close()

    def _open(self) -> IO[bytes]:
        out = self.path.open("ab", buffering=0)
        self._size = out.tell()
        return out

    def _rotate(self) -> None:
        self._file.close()
        self._partial = False  # a cut line stays at the end of the old file
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._file = self._open()


class EventLog:
    """The last ``size`` frame records with a monotonically increasing sequence number."""

    def __init__(self, size: int = 500) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._seq = 0
        self.detections: dict[str, int] = {}

    def __call__(self, job: FrameJob) -> None:
        record = job.record()
        with self._lock:
            self._seq += 1
            record["seq"] = self._seq
            self._events.append(record)
            for name, results in job.results.items():
                self.detections[name] = self.detections.get(name, 0) + len(results)

    def page(self, after: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """Records with ``seq > after``, oldest first, at most ``limit``."""
        with self._lock:
            return [e for e in self._events if e["seq"] > after][:limit]

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq
