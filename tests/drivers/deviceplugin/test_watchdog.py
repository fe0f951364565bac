"""The device plugin under a real sd_notify socket: READY, WATCHDOG from its poll loop, STOPPING.

A stuck driver is made real, not mocked: one device's state file becomes a FIFO, so the fake
NPU's ``devices()`` blocks in ``open()`` like a wedged vendor sysfs read until the test
writes to it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefed.testing.kubelet import KubeletStandIn
from tests.support.notify import NotifyListener
from tests.support.paths import REPO

from .conftest import STOP_WAIT_S, plugin_command

WATCHDOG_S = 1.0  # the plugin pets at half of it; it polls every 0.1 s (plugin_command)
RESOURCE = "edgefed.io/npu-fake-x220"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path)
    yield lst
    lst.close()


def start(tmp_path: Path, socket_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    config = tmp_path / "driver.yaml"
    config.write_text(
        f"type: fake-npu\ndevices: 2\nmodel_name: fake-x220\nstate_dir: {tmp_path / 'npu'}\n",
        encoding="utf-8",
    )
    return subprocess.Popen(
        plugin_command(config, socket_dir),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.terminate()
    out, _ = proc.communicate(timeout=STOP_WAIT_S)
    return proc.returncode, out.decode(errors="replace")


def test_ready_watchdog_at_its_interval_and_stopping(
    tmp_path: Path, socket_dir: Path, kubelet: KubeletStandIn, listener: NotifyListener
) -> None:
    proc = start(tmp_path, socket_dir, listener.env(watchdog_s=WATCHDOG_S))
    try:
        ready = listener.wait_for("READY", 30)
        kubelet.next_registration()
        registered = listener.wait_for("STATUS", 10, f"{RESOURCE} 2/2 healthy; registered")
        time.sleep(3 * WATCHDOG_S)
        code, output = stop(proc)
    finally:
        proc.kill()
    assert code == 0, output
    assert ready.fields["STATUS"].startswith(f"{RESOURCE} 2/2 healthy")
    assert registered.at >= ready.at
    pets = [t for t in listener.times("WATCHDOG") if t >= ready.at]
    assert len(pets) >= 5
    assert max(b - a for a, b in itertools.pairwise(pets)) < WATCHDOG_S
    listener.wait_for("STOPPING", 5)  # sent before the exit, maybe not yet read
    assert listener.snapshot()[-1].fields["STOPPING"] == "1"


def test_a_stuck_driver_stops_the_watchdog_until_it_answers(
    tmp_path: Path, socket_dir: Path, listener: NotifyListener
) -> None:
    proc = start(tmp_path, socket_dir, listener.env(watchdog_s=WATCHDOG_S))
    try:
        listener.wait_for("READY", 30)
        listener.wait_for("WATCHDOG", 30)  # it pets while its driver answers
        fifo = tmp_path / "npu" / ".npu1.fifo"
        os.mkfifo(fifo)
        os.replace(fifo, tmp_path / "npu" / "npu1")  # the next devices() blocks reading it
        stuck = time.monotonic()
        time.sleep(4 * WATCHDOG_S)
        # answer the blocked read, and put a plain state file back for the polls after it;
        # timed before the writer starts: the round it unblocks may pet before join returns
        answered = time.monotonic()
        writer = threading.Thread(target=answer, args=(tmp_path / "npu" / "npu1",))
        writer.start()
        writer.join(10)
        deadline = time.monotonic() + 30  # and again once it answers (a loaded host: late)
        while not any(t > answered for t in listener.times("WATCHDOG")):
            assert time.monotonic() < deadline, "no WATCHDOG after the driver answered"
            time.sleep(0.1)
        code, output = stop(proc)
    finally:
        proc.kill()
    assert code == 0, output
    pets = listener.times("WATCHDOG")
    # a round under way at the swap read the old file and may still pet: on a loaded
    # host it (and the listener) can take longer than half an interval to get there
    assert [t for t in pets if stuck + WATCHDOG_S < t < answered] == []
    assert any(t < stuck for t in pets) and any(t > answered for t in pets)


def answer(fifo: Path) -> None:
    with fifo.open("w", encoding="utf-8") as pipe:  # opens once the plugin's reader waits
        plain = fifo.with_name(".npu1.new")
        plain.write_text("ok\n", encoding="utf-8")
        os.replace(plain, fifo)
        pipe.write("ok\n")


def test_a_poll_interval_too_long_for_the_watchdog_is_refused(
    tmp_path: Path, socket_dir: Path, listener: NotifyListener
) -> None:
    proc = start(tmp_path, socket_dir, listener.env(watchdog_s=0.1))  # polls every 0.1 s
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "more than half the watchdog interval" in out.decode()
    assert listener.snapshot() == []  # never READY
