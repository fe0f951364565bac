"""ServerClock: serverd's clock from the times its replies carry, by the tightest bound,
kept against the time since boot so that the edge's wall clock may step."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from edged.offload.serverclock import ServerClock, since_boot

HOUR, DAY = 3_600_000, 86_400_000


class Clocks:
    """serverd's wall clock and the edge's wall and monotonic clocks, moved by hand."""

    def __init__(self) -> None:
        self.server = 1_780_000_000_000  # ms, 2026
        self.wall = self.server  # the edge's wall clock, in step to begin with
        self.boot = 100.0  # s since boot

    def advance(self, seconds: float) -> None:
        self.server += int(seconds * 1000)
        self.wall += int(seconds * 1000)
        self.boot += seconds

    def reply(self, clock: ServerClock, after_s: float = 0.0, transit_ms: int = 10) -> int:
        """``after_s`` on, a reply serverd stamped ``transit_ms`` before it arrives."""
        self.advance(after_s)
        return clock.observe(self.server - transit_ms)

    def local(self) -> int:
        return self.wall

    def since_boot(self) -> float:
        return self.boot

    def clock(
        self, window_s: float = 60.0, state: Path | None = None, boot: str = "boot-1"
    ) -> ServerClock:
        return ServerClock(
            self.local, window_s=window_s, since_boot=self.since_boot, state=state,
            boot=lambda: boot,
        )  # fmt: skip


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def test_without_replies_it_is_the_edge_s_clock(clocks: Clocks) -> None:
    clock = clocks.clock()
    assert clock() == clocks.wall and clock.offset_ms == 0


def test_the_reply_that_waited_least_sets_the_offset(clocks: Clocks) -> None:
    """The edge an hour behind; replies reach it 2 s (held by the broker), 5 ms and 30 s
    (resent from serverd's store) after serverd stamped them: the 5 ms one wins."""
    clocks.wall -= HOUR
    clock = clocks.clock()
    for transit in (2_000, 5, 30_000):
        clock.observe(clocks.server - transit)
        clocks.advance(1.0)
    assert clock.offset_ms == HOUR - 5
    assert clock() == clocks.server - 5


def test_the_edge_s_wall_clock_stepping_does_not_move_serverd_s_time(clocks: Clocks) -> None:
    """A box booted in 1970 learns serverd's clock, then NTP steps its own by 56 years:
    the jobs it makes keep serverd's time throughout (before, they ran 56 years ahead for
    two minutes, then jumped back)."""
    clocks.wall = 1000  # 1970
    clock = clocks.clock()
    clock.observe(clocks.server - 10)
    assert clock() == clocks.server - 10
    clocks.advance(5.0)
    clocks.wall = clocks.server  # NTP
    assert clock() == clocks.server - 10 and clock.offset_ms == -10
    for _ in range(10):  # and stays so as replies come, through several windows
        clocks.reply(clock, after_s=30.0)
        assert clock() == clocks.server - 10


def test_serverd_s_clock_stepping_ahead_is_followed_at_once_and_back_within_two_windows(
    clocks: Clocks,
) -> None:
    clock = clocks.clock(window_s=60.0)
    clocks.reply(clock)
    clocks.server += DAY
    clocks.reply(clock)
    assert clock() == clocks.server - 10
    clocks.server -= DAY
    for _ in range(3):  # within the window the larger bound stands
        clocks.reply(clock, after_s=20.0)
        assert clock() == clocks.server + DAY - 10
    for _ in range(6):  # two windows on, it is gone
        clocks.reply(clock, after_s=20.0)
    assert clock() == clocks.server - 10


def test_one_loose_bound_after_a_quiet_spell_does_not_drag_the_estimate_down(
    clocks: Clocks,
) -> None:
    clock = clocks.clock(window_s=60.0)
    clock.observe(clocks.server - 5)
    clocks.advance(90.0)  # a quiet spell past one window
    clock.observe(clocks.server - 40_000)  # a reply the broker held for 40 s
    assert clock() == clocks.server - 5


def test_times_no_serverd_runs_on_are_ignored(clocks: Clocks) -> None:
    clock = clocks.clock()
    for impossible in (5, 2**53 - 1):  # 1970; a time whose deadlines would leave the wire's range
        clock.observe(impossible)
    assert clock() == clocks.wall and clock.offset_ms == 0


def test_a_clock_off_by_over_a_second_is_said(
    clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    clock = clocks.clock()
    with caplog.at_level(logging.WARNING, "edged.offload.serverclock"):
        clock.observe(clocks.server + 500)  # serverd 0.5 s ahead: not worth a line
        assert not caplog.records
        clocks.wall -= 2 * HOUR  # the edge's clock steps back two hours
        clock.observe(clocks.server + 500)
    (record,) = caplog.records
    assert "serverd's clock is 7200.5 s ahead of this device's" in record.getMessage()


def test_observe_returns_how_far_the_clock_moved_once_it_adds_up_to_a_second(
    clocks: Clocks,
) -> None:
    """What the caller moves the jobs timed on the clock by."""
    clocks.wall += HOUR  # the edge an hour ahead
    clock = clocks.clock()
    assert clock.observe(clocks.server - 20) == -HOUR - 20  # learnt: the jobs move back
    assert clock.observe(clocks.server - 5) == 0  # refined by 15 ms: not worth a move
    for _ in range(3):
        clocks.server += 400  # serverd's clock slews ahead, 0.4 s a reply
        moved = clock.observe(clocks.server - 5)
    assert moved == 1215  # the 15 ms and 3 x 0.4 s, once over a second


def test_a_restart_within_the_boot_starts_from_the_kept_clock(
    clocks: Clocks, tmp_path: Path
) -> None:
    state = tmp_path / "outbox.sqlite.serverclock"
    clocks.wall -= HOUR
    clock = clocks.clock(state=state)
    clock.observe(clocks.server - 10)
    clocks.advance(30.0)
    again = clocks.clock(state=state)  # edged restarted, same boot
    assert again.learnt and again() == clocks.server - 10
    rebooted = clocks.clock(state=state, boot="boot-2")  # the time since boot starts over
    assert not rebooted.learnt and rebooted() == clocks.wall
    state.write_text("{not json")
    assert not clocks.clock(state=state).learnt


def test_a_state_that_cannot_be_written_is_said_and_the_clock_still_works(
    clocks: Clocks, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clocks.wall -= HOUR
    clock = clocks.clock(state=tmp_path / "missing-dir" / "outbox.sqlite.serverclock")
    with caplog.at_level(logging.WARNING, "edged.offload.serverclock"):
        assert clock.observe(clocks.server - 10) == HOUR - 10
    assert clock() == clocks.server - 10
    assert any("cannot keep serverd's clock" in r.getMessage() for r in caplog.records)


def test_the_clock_counts_suspended_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A box that sleeps: the monotonic clock stops, the time since boot (CLOCK_BOOTTIME)
    does not; it is the one the estimate is kept on."""
    read: list[int] = []
    real = time.clock_gettime_ns

    def recording(clock_id: int) -> int:
        read.append(clock_id)
        return real(clock_id)

    monkeypatch.setattr(time, "clock_gettime_ns", recording)
    monotonic = time.monotonic()
    assert since_boot() >= monotonic
    assert read == [time.CLOCK_BOOTTIME]


def test_replies_with_no_change_never_add_up_to_a_move(clocks: Clocks) -> None:
    """Each reading of the time since boot moves on (here 1 ms a reading): the change of
    the estimate is taken from one reading, so 2,000 replies move nothing (before, the
    time ``observe`` took between two readings added up: here a 1 s move after ~1,000)."""
    ticks = [clocks.boot]

    def ticking() -> float:
        ticks[0] += 0.001
        return ticks[0]

    clock = ServerClock(clocks.local, since_boot=ticking, boot=lambda: "boot-1")
    clock.observe(clocks.server - 5)
    server_minus_boot = clocks.server - 5 - int(ticks[0] * 1000)
    moved = [
        clock.observe(server_minus_boot + int(ticks[0] * 1000) + 1) for _ in range(2_000)
    ]  # each reply stamped as the estimate says, 1 ms before the reading
    assert set(moved) == {0}


def test_a_held_reply_after_a_restart_loses_to_the_kept_clock(
    clocks: Clocks, tmp_path: Path
) -> None:
    state = tmp_path / "outbox.sqlite.serverclock"
    clocks.wall -= HOUR
    clocks.clock(state=state).observe(clocks.server - 10)
    clocks.advance(30.0)
    again = clocks.clock(state=state)  # edged restarted; the broker held a reply 20 s
    assert again.observe(clocks.server - 20_000) == 0
    assert again() == clocks.server - 10
    assert json.loads(state.read_text())["from_boot_ms"] == clocks.server - 10 - int(
        clocks.boot * 1000
    )
