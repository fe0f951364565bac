"""``SteadyClock``: epoch milliseconds that a step of the wall clock does not move."""

from __future__ import annotations

from edgefed.clock import SteadyClock, now_ms


def test_a_steady_clock_starts_at_the_wall_clock_and_runs_with_the_monotonic_one() -> None:
    wall, monotonic_ns = [1_800_000_000_000], [5_000_000_000]
    clock = SteadyClock(wall=lambda: wall[0], monotonic=lambda: monotonic_ns[0])
    assert clock() == 1_800_000_000_000
    monotonic_ns[0] += 2_500_000_000  # 2.5 s pass
    wall[0] -= 3_600_000  # and NTP steps the wall clock back an hour
    assert clock() == 1_800_000_002_500  # a round due in two minutes is still due then
    wall[0] += 7_200_000
    monotonic_ns[0] += 1_000_000
    assert clock() == 1_800_000_002_501


def test_the_default_steady_clock_is_the_wall_clock_while_the_wall_clock_does_not_step() -> None:
    assert abs(SteadyClock()() - now_ms()) < 1_000
