"""The daemons' signal handling (``edgefed.signals``) in a process of its own: the
second stop signal ends the process, which only a real exit shows."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.support.paths import REPO

HANDLER = """
import logging, signal, sys, time
from edgefed.signals import SIGNALS, StopSignals
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
stops = []
signals = StopSignals(logging.getLogger("d"), "d", lambda: stops.append(1))
for signum in SIGNALS:
    signal.signal(signum, lambda n, _f: signals.handle(n))
print("ready", flush=True)
while not stops:
    time.sleep(0.05)
print("stopping", flush=True)
time.sleep(20)  # a daemon draining slowly
sys.exit(0)
"""


def test_sighup_is_logged_a_stop_signal_stops_and_a_second_one_ends_the_process() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HANDLER],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "stopping\n"  # the first stops, once
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGINT
    assert err.splitlines() == [
        "received SIGHUP: d does not reload its configuration; restart it to apply a changed one",
        "received SIGTERM, stopping",
        "received SIGINT again: stopping now, without draining",
    ]
