"""The live preview: a pipeline sink keeps the newest frame, a renderer draws it on demand.

``PreviewSink`` runs on pipeline threads and only swaps a reference, so a daemon with
no viewer pays nothing. ``PreviewRenderer`` runs on the API's event loop: it renders
(annotate + JPEG, in its own worker thread) only when a viewer asks, at most
``fps`` times a second per camera and mask setting, and every viewer gets the same
bytes, so two viewers cost one render.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

from edged.framejob import FrameJob

from .draw import annotate, encode_jpeg

log = logging.getLogger(__name__)


class PreviewSink:
    """Keeps the newest completed FrameJob of each camera (a pipeline sink)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[int, FrameJob]] = {}
        self.frames = 0

    def __call__(self, job: FrameJob) -> None:
        with self._lock:
            self.frames += 1
            self._latest[job.frame.camera] = (self.frames, job)

    def latest(self, camera: str) -> tuple[int, FrameJob] | None:
        """(sequence number, job) of the camera's newest completed frame, if any."""
        with self._lock:
            return self._latest.get(camera)


@dataclass(frozen=True)
class Rendered:
    seq: int  # PreviewSink sequence number of the frame drawn
    jpeg: bytes
    at: float  # time.monotonic() of the render


class PreviewRenderer:
    """Shared, rate-capped rendering of the sink's newest frames (use on one event loop)."""

    def __init__(
        self,
        sink: PreviewSink,
        executor: Executor,
        *,
        fps: float,
        quality: int,
        max_width: int,
        max_viewers: int,
    ) -> None:
        self.sink = sink
        self.max_viewers = max_viewers
        self.interval = 1.0 / fps
        self._executor = executor
        self._quality = quality
        self._max_width = max_width
        self._cache: dict[tuple[str, bool], Rendered] = {}
        self._locks: dict[tuple[str, bool], asyncio.Lock] = {}
        self._failed: dict[tuple[str, bool], int] = {}  # sequence number that failed to render
        self.renders = 0
        self.viewers = 0

    async def frame(self, camera: str, mask: bool) -> Rendered | None:
        """The newest rendered frame; renders only if the frame changed and the cap allows."""
        key = (camera, mask)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            latest = self.sink.latest(camera)
            if latest is None:
                return None
            seq, job = latest
            now = time.monotonic()
            if cached is not None and (cached.seq == seq or now - cached.at < self.interval):
                return cached
            if self._failed.get(key) == seq:
                return cached
            loop = asyncio.get_running_loop()
            try:
                jpeg = await loop.run_in_executor(self._executor, self._render, job, mask)
            except Exception:  # a frame that cannot be drawn is skipped, the stream goes on
                log.exception("preview of %s frame %d failed", camera, job.frame.index)
                self._failed[key] = seq
                return cached
            self.renders += 1
            rendered = Rendered(seq, jpeg, now)
            self._cache[key] = rendered
            return rendered

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Count one open stream while the block runs."""
        self.viewers += 1
        try:
            yield
        finally:
            self.viewers -= 1

    def _render(self, job: FrameJob, mask: bool) -> bytes:
        image = annotate(job, mask=mask, max_width=self._max_width)
        return encode_jpeg(image, self._quality)
