"""``pipeline.target_fps``: frames taken from a faster camera, spread evenly.

The frames taken are those nearest to a tick every ``1 / fps`` seconds: a frame is
taken once its time is within half a source interval of the next tick (half a period
when the source is not faster), and the tick then moves on by a whole period. So the
frames taken average ``fps`` exactly (a 30 fps camera at 10 gives every third frame;
at 25 fps, every second and third frame in turn), and a camera that already runs at
``fps`` keeps every frame even when its frames arrive a little early or late. A jump of
the clock (a gap longer than a period, or a step back: a looped file) starts the ticks
afresh. ``fps`` may change from one frame to the next (the device twin and the API set
it at run time).
"""

from __future__ import annotations

_ALPHA = 0.1  # weight of the newest source interval in its running mean
_MAX_INTERVAL = 1.0  # seconds; a longer wait between frames is a gap, not the source's rate


class RateLimiter:
    """Decides, frame by frame, which frames of one camera to take at ``fps``."""

    def __init__(self) -> None:
        self._tick: float | None = None
        self._last: float | None = None
        self._interval: float | None = None  # the source's mean frame interval

    def take(self, ts: float, fps: float | None) -> bool:
        """Whether the frame at ``ts`` (seconds) is taken; ``fps`` None takes every frame."""
        last, self._last = self._last, ts
        if last is not None and 0 < ts - last <= _MAX_INTERVAL:
            dt, mean = ts - last, self._interval
            self._interval = dt if mean is None else mean + _ALPHA * (dt - mean)
        if fps is None:
            self._tick = None
            return True
        period = 1.0 / fps
        tick = self._tick
        if tick is None or ts - tick > period or tick - ts > 1.5 * period:
            tick = ts  # the first frame, or the clock jumped
        if ts < tick - min(self._interval or period, period) / 2:
            self._tick = tick
            return False
        self._tick = tick + period
        return True
