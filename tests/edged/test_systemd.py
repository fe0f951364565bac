"""edged under a real sd_notify socket: READY, WATCHDOG at the interval, STATUS, STOPPING,
and no WATCHDOG while the pipeline is stuck (a model run that hangs on the fake NPU)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefed.errors import EXIT_OK
from tests.support.configs import demo_config, write_config
from tests.support.notify import NotifyListener
from tests.support.paths import REPO

# a pet every 1 s; edged withholds it while one model run takes over 1 s (a stall)
WATCHDOG_S = 2.0


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path)
    yield lst
    lst.close()


def run_edged(cfg: Path, listener: NotifyListener) -> subprocess.Popen[str]:
    env = listener.env(watchdog_s=WATCHDOG_S) | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "-c", str(cfg), "--compact"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc.returncode, err


SCENE = {"name": "scene", "image": "efficientnet_lite0", "regions": "full"}


def one_model(tmp_path: Path, **sections: Any) -> Path:
    """The demo config with only the ONNX classifier (the fake NPU runs ONNX models)."""
    raw = demo_config(tmp_path, **({"models": [SCENE]} | sections))
    raw["output"]["summary_interval_s"] = 1
    return write_config(tmp_path, raw)


def test_ready_then_watchdog_at_half_the_interval_then_stopping(
    tmp_path: Path, listener: NotifyListener
) -> None:
    proc = run_edged(one_model(tmp_path), listener)
    try:
        ready = listener.wait_for("READY", 60)
        assert ready.fields["STATUS"] == "running 1 models on 1 cameras"
        time.sleep(6)
    finally:
        code, err = stop(proc)
    assert code == EXIT_OK, err
    pets = [t for t in listener.times("WATCHDOG") if ready.at <= t <= ready.at + 6]
    gaps = [b - a for a, b in itertools.pairwise(pets)]
    assert len(pets) >= 4, pets  # every 1 s for 6 s, with slack for a loaded machine
    assert max(gaps) < WATCHDOG_S, gaps  # never late enough for systemd to kill edged
    statuses = [n.fields["STATUS"] for n in listener.snapshot() if "STATUS" in n.fields]
    assert any(s.startswith("frames=") for s in statuses), statuses
    listener.wait_for("STOPPING", 5)  # sent before the exit, maybe not yet read
    assert listener.snapshot()[-1].fields["STOPPING"] == "1"


def test_a_stuck_pipeline_stops_the_watchdog(tmp_path: Path, listener: NotifyListener) -> None:
    drivers = [{"type": "fake-npu", "latency_ms": 10_000, "state_dir": str(tmp_path / "npu")}]
    cfg = one_model(tmp_path, drivers=drivers, models=[SCENE | {"driver": "fake-npu"}])
    proc = run_edged(cfg, listener)
    try:
        listener.wait_for("READY", 60)
        stalled = listener.wait_for("STATUS", 10, prefix="stalled")
        time.sleep(3)
    finally:
        code, err = stop(proc)
    assert stalled.fields["STATUS"] == "stalled: model-scene"
    late = [t for t in listener.times("WATCHDOG") if stalled.at <= t <= stalled.at + 3]
    assert late == [], "edged kept petting the watchdog while its model hung"
    assert "pipeline stalled: model-scene; watchdog withheld" in err
    assert code == EXIT_OK, err
