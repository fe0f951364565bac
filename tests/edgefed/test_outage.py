"""A repeating failure logged as one outage."""

from __future__ import annotations

import logging

import pytest

from edgefed.outage import Outage, Repeats, Sinks

log = logging.getLogger("tests.outage")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    return [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]


def test_an_outage_logs_its_start_reminders_and_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tests.outage")
    clock = Clock()
    outage = Outage(log, "writing results", remind_s=60, clock=clock)
    outage.ok()  # nothing failed: nothing to say
    for _ in range(1000):
        clock.t += 0.125
        outage.failed(OSError(28, "No space left on device"))
    assert outage.active and outage.failures == 1000
    clock.t += 29
    outage.ok()  # a success between failures does not end it
    assert outage.active
    clock.t += 1
    outage.ok()  # one settle_s (30 s) after the last failure does
    outage.ok()
    assert not outage.active
    assert lines(caplog) == [
        (
            logging.ERROR,
            "writing results failed: [Errno 28] No space left on device "
            "(while it keeps failing, one line every 60 s)",
            True,
        ),
        (
            logging.ERROR,
            "writing results still failing: 481 times in 60 s, latest: "
            "[Errno 28] No space left on device",
            False,
        ),
        (
            logging.ERROR,
            "writing results still failing: 961 times in 120 s, latest: "
            "[Errno 28] No space left on device",
            False,
        ),
        (logging.WARNING, "writing results works again after 1000 failures in 155 s", False),
    ]
    caplog.clear()
    outage.failed(ValueError("again"))  # a new outage is told in full
    assert outage.failures == 1001 and lines(caplog)[0][1].startswith("writing results failed")


def test_a_failing_sink_keeps_no_item_from_the_others(caplog: pytest.LogCaptureFixture) -> None:
    got: list[int] = []

    def full_disk(item: int) -> None:
        raise OSError(28, "No space left on device")

    sinks = Sinks(log, "result sink", [full_disk, got.append])
    for i in range(50):
        sinks(i)
    assert got == list(range(50)) and sinks.failures == 50
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        "result sink test_a_failing_sink_keeps_no_item_from_the_others.<locals>.full_disk failed"
    )


def test_contained_takes_the_kinds_it_is_given_and_lets_others_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(log, "a write", settle_s=0, clock=clock)
    with outage.contained(OSError):
        raise OSError(28, "No space left on device")
    assert outage.active and outage.failures == 1
    with pytest.raises(ValueError), outage.contained(OSError):
        raise ValueError("a bug, not the disk")
    assert outage.failures == 1
    clock.t += 1
    with outage.contained():  # any exception by default; none here: the outage ends
        pass
    assert not outage.active
    with outage.contained():
        raise RuntimeError("any")
    assert outage.failures == 2
    assert [m for _, m, _ in lines(caplog)][-1].startswith("a write failed: any")


def test_repeats_log_the_first_of_each_kind_then_a_count_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tests.outage")
    clock = Clock()
    repeats = Repeats(log, logging.WARNING, every_s=60, clock=clock)
    for n in range(1000):  # a peer sending 8 bad messages a second for 125 s
        clock.t += 0.125
        repeats("dropped", f"dropped message {n}: not a job")
    repeats("shed", "job shed under overload")
    left_out = " (479 more like it in the last 60 s not logged)"
    assert lines(caplog) == [
        (logging.WARNING, "dropped message 0: not a job", False),
        (logging.WARNING, "dropped message 480: not a job" + left_out, False),
        (logging.WARNING, "dropped message 960: not a job" + left_out, False),
        (logging.WARNING, "job shed under overload", False),
    ]
