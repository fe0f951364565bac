"""The frame ring between a camera's capture thread and its consumer.

Bounded and thread-safe. By default the newest frame wins: a live camera must never
wait for a slow consumer, so a full ring drops its oldest frame and counts it. In
lossless mode (file replay, benchmarks) ``put`` waits for space instead.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured frame."""

    camera: str
    index: int  # per camera, counts every delivered frame (across loops and reconnects)
    ts: float  # time.monotonic() at capture
    wall: float  # time.time() at capture
    image: np.ndarray  # BGR, HxWx3 uint8


class FrameRing:
    """Thread-safe bounded frame buffer between a capture thread and its consumer.

    Default mode, newest wins: ``put`` never blocks and a full ring drops its oldest
    frame (counted in ``drops``). ``lossless=True`` makes ``put`` wait for space
    instead (file replay, benchmarks). ``close`` wakes every waiter.
    """

    def __init__(self, capacity: int, lossless: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity, self.lossless = capacity, lossless
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._drops = 0
        self._closed = False

    def put(self, frame: Frame, timeout: float | None = None) -> bool:
        """Add a frame; False if the ring is closed (or, lossless, still full at timeout)."""
        with self._cond:
            if self.lossless:
                self._cond.wait_for(
                    lambda: self._closed or len(self._items) < self.capacity, timeout
                )
            if self._closed or (self.lossless and len(self._items) >= self.capacity):
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self._drops += 1
            self._items.append(frame)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest buffered frame, waiting up to ``timeout``; None on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or bool(self._items), timeout)
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def drops(self) -> int:
        return self._drops

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
