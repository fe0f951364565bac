"""Pre-roll for the three-frame gate: the first frames of a motion reach the models too.

The three-frame rule needs a change in both ``|A - B|`` and ``|B - C|``, so the frame on
which a motion starts (changed against its predecessor only) is rejected, and the gate
passes the motion from the next frame on. ``PreRoll`` keeps the frames the rule could
not yet decide (``GateResult.fresh``: the newest difference alone changed), up to
``size`` of them, and hands them over, oldest first, with the first frame the gate
passes; they carry that frame's motion boxes. A frame with no change at all empties
the ring, so a static frame, or a one-frame flicker that brightness matching cancels,
is never sent. ``discarded`` counts the frames decided not to send (a frame waiting in
the ring is not yet either), so a count of static frames made from it never goes down.
Pure code.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Generic, TypeVar

from edged.motion import GateResult

T = TypeVar("T")


class PreRoll(Generic[T]):
    """A small ring of undecided frames in front of the gate's verdicts."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring: deque[tuple[T, GateResult]] = deque(maxlen=max(size, 1))
        self.sent = 0  # frames sent from the ring so far
        self.discarded = 0  # frames fed and decided not to send

    def feed(self, item: T, result: GateResult) -> list[tuple[T, GateResult]]:
        """The frames to send now (empty, or the ring's frames and then ``item``)."""
        if result.motion:
            early = [
                (it, replace(res, motion=True, boxes=list(result.boxes))) for it, res in self._ring
            ]
            self._ring.clear()
            self.sent += len(early)
            return [*early, (item, result)]
        if result.fresh and self.size > 0:
            if len(self._ring) == self._ring.maxlen:
                self.discarded += 1  # the oldest leaves unsent
            self._ring.append((item, result))
        else:
            self.discarded += len(self._ring) + 1  # no change: they and this frame
            self._ring.clear()
        return []

    @property
    def pending(self) -> int:
        """Frames in the ring, not yet decided."""
        return len(self._ring)
