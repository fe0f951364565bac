"""The notify protocol on a real AF_UNIX datagram socket: path and abstract addresses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefed.sdnotify import STATUS_MAX, Notifier, watchdog_interval
from tests.support.notify import NotifyListener


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path, abstract=request.param)
    yield lst
    lst.close()


def test_the_listener_waits_for_the_key_it_is_asked_for(listener: NotifyListener) -> None:
    """A CI run saw wait_for("STOPPING") return the READY note (an absent key matched an
    empty prefix) and the next assertion read the notes before STOPPING had arrived."""
    Notifier(listener.env()).ready("up")
    assert listener.wait_for("READY", 5).fields["READY"] == "1"
    with pytest.raises(AssertionError, match=r"no STOPPING within 0\.3 s"):
        listener.wait_for("STOPPING", 0.3)


def test_ready_status_watchdog_and_stopping_arrive(listener: NotifyListener) -> None:
    now = [100.0]
    notifier = Notifier(listener.env(watchdog_s=2.0), clock=lambda: now[0])
    assert notifier.enabled and notifier.watchdog_s == 2.0
    notifier.ready("serving   3 models\non 1 camera")
    notifier.watchdog()
    notifier.watchdog()  # not due again yet: half the interval has not passed
    now[0] += 1.0
    notifier.watchdog()
    notifier.stopping()
    listener.wait_for("STOPPING", 5)
    notes = listener.snapshot()
    assert notes[0].fields == {"READY": "1", "STATUS": "serving 3 models on 1 camera"}
    assert [n.fields for n in notes[1:3]] == [{"WATCHDOG": "1"}] * 2
    assert notes[3].fields["STOPPING"] == "1"
    notifier.close()


def test_status_is_kept_short(listener: NotifyListener) -> None:
    notifier = Notifier(listener.env())
    notifier.status("x" * 1000)
    note = listener.wait_for("STATUS", 5)
    assert len(note.fields["STATUS"]) == STATUS_MAX and note.fields["STATUS"].endswith("...")


def test_watchdog_of_another_process_or_zero_is_off() -> None:
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}, pid) == 30
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid) is None


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_s is None and not notifier.watchdog_due()
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()


def test_a_vanished_socket_is_logged_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    notifier.ready("x")
    notifier.status("y")
    assert caplog.text.count("sd_notify to") == 1  # once per outage, not per message
