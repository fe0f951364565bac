"""Rate meters: a steady rate reads steady, a rate whose events stopped falls to 0."""

from __future__ import annotations

from edged.stats import RateMeter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_steady_rate_reads_steady_between_events() -> None:
    clock = Clock()
    meter = RateMeter(tau_s=2.0, clock=clock)
    for _ in range(200):
        clock.now += 0.1
        meter.tick()
    assert meter.rate == 10.0
    clock.now += 0.09  # the next frame is not due yet
    assert meter.rate == 10.0


def test_a_rate_whose_events_stopped_decays_to_zero() -> None:
    """On main ``pipeline_fps`` kept its last value for ever when frames stopped."""
    clock = Clock()
    meter = RateMeter(tau_s=2.0, clock=clock)
    for _ in range(200):
        clock.now += 0.1
        meter.tick()
    clock.now += 2.1
    assert 0 < meter.rate < 4
    clock.now += 30
    assert meter.rate == 0.0
    assert meter.total == 200


def test_no_events_is_zero() -> None:
    assert RateMeter().rate == 0.0
