"""ServerClock: serverd's clock from the times its replies carry, by the tightest bound."""

from __future__ import annotations

import logging

import pytest

from edged.offload.serverclock import ServerClock


class Clocks:
    """The edge's wall clock (ms) and monotonic clock (s), moved by hand."""

    def __init__(self) -> None:
        self.wall, self.mono = 1_000_000, 0.0

    def local(self) -> int:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def test_without_replies_it_is_the_edge_s_clock(clocks: Clocks) -> None:
    clock = ServerClock(clocks.local, monotonic=clocks.monotonic)
    assert clock() == clocks.wall and clock.offset_ms == 0


def test_the_reply_that_waited_least_sets_the_offset(clocks: Clocks) -> None:
    """serverd an hour ahead; replies reach the edge 5 ms, 2 s (held by the broker) and
    30 s (resent from serverd's store) after serverd stamped them: the 5 ms one wins,
    whatever the order."""
    clock = ServerClock(clocks.local, monotonic=clocks.monotonic)
    hour = 3_600_000
    for transit in (2_000, 5, 30_000):
        clock.observe(clocks.wall + hour - transit)
        clocks.mono += 1.0
    assert clock.offset_ms == hour - 5
    assert clock() == clocks.wall + hour - 5


def test_it_follows_the_edge_s_clock_stepping_back_at_once_and_ahead_within_two_windows(
    clocks: Clocks,
) -> None:
    clock = ServerClock(clocks.local, window_s=60.0, monotonic=clocks.monotonic)
    clock.observe(clocks.wall - 10)  # in step with serverd, 10 ms transit
    assert clock.offset_ms == -10
    clocks.wall -= 86_400_000  # NTP steps the edge back a day: serverd is a day ahead
    clock.observe(clocks.wall + 86_400_000 - 10)
    assert clock.offset_ms == 86_400_000 - 10
    clocks.wall += 86_400_000  # and ahead again
    for _ in range(3):  # within the window the older, larger bound stands
        clocks.mono += 20.0
        clock.observe(clocks.wall - 10)
        assert clock.offset_ms == 86_400_000 - 10
    for _ in range(6):  # two windows on, it is gone
        clocks.mono += 20.0
        clock.observe(clocks.wall - 10)
    assert clock.offset_ms == -10


def test_one_loose_bound_after_a_quiet_spell_does_not_drag_the_estimate_down(
    clocks: Clocks,
) -> None:
    clock = ServerClock(clocks.local, window_s=60.0, monotonic=clocks.monotonic)
    clock.observe(clocks.wall + 5_000 - 5)  # serverd 5 s ahead
    clocks.mono += 90.0  # a quiet spell past one window
    clock.observe(clocks.wall + 5_000 - 40_000)  # a reply the broker held for 40 s
    assert clock.offset_ms == 5_000 - 5


def test_a_clock_off_by_over_a_second_is_said(
    clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ServerClock(clocks.local, monotonic=clocks.monotonic)
    with caplog.at_level(logging.WARNING, "edged.offload.serverclock"):
        clock.observe(clocks.wall + 500)
        assert not caplog.records
        clock.observe(clocks.wall - 7_200_000)  # loose: the 500 ms bound stands
        assert not caplog.records
        clocks.wall -= 7_200_000  # the edge's clock steps back two hours
        clock.observe(clocks.wall + 7_200_000 + 500)
    (record,) = caplog.records
    assert "serverd's clock is 7200.5 s ahead of this device's" in record.getMessage()
