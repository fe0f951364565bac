"""Triton's life is tied to serverd's: a kill -9 of the process that started it takes it
down (parent-death signal), and a Triton left by an earlier run is found by its pid file
and stopped before a new one starts. Real ``tritonserver`` processes (the echo model)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefed.testing.wait import wait_until
from serverd.triton.install import TritonInstall
from serverd.triton.repository import TritonModelConfig, write_repository
from serverd.triton.supervisor import TritonPorts, TritonProcess
from tests.support.paths import IMAGES_DIR, REPO

VENV = REPO / ".venv-triton"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(autouse=True)
def _require_triton() -> None:
    if not (VENV / ".edgefed-installed").exists():
        pytest.fail("Triton's environment is missing: run bash serverd/triton/setup_env.sh")


def test_kill_9_of_its_parent_stops_triton(tmp_path: Path) -> None:
    """On main Triton kept running (and its ports) after serverd was killed with -9."""
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("triton_child.py")),
            str(VENV),
            str(tmp_path),
            str(IMAGES_DIR),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        triton_pid = int(child.stdout.readline())
        assert alive(triton_pid)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait_until("Triton to exit after its parent", lambda: not alive(triton_pid), 20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_a_triton_left_by_an_earlier_run_is_stopped_by_its_pid_file(tmp_path: Path) -> None:
    install = TritonInstall.locate(VENV)
    echo = [TritonModelConfig(name="echo", backend="echo")]
    repository = write_repository(tmp_path / "models", echo, IMAGES_DIR, [])
    ports = TritonPorts.free()
    earlier = TritonProcess(install, repository, tmp_path, "local-0", ports)
    earlier.start()
    old_pid = earlier.pid
    assert old_pid is not None and (tmp_path / "local-0.pid").read_text().strip() == str(old_pid)
    # a new run with the same state dir and ports: the earlier Triton holds them
    again = TritonProcess(install, repository, tmp_path, "local-0", ports)
    try:
        started = time.monotonic()
        again.start()
        assert not alive(old_pid)
        assert again.pid != old_pid and again.ready()
        assert time.monotonic() - started < 30
        assert (tmp_path / "local-0.pid").read_text().strip() == str(again.pid)
    finally:
        again.stop()
        earlier.stop()
    assert not (tmp_path / "local-0.pid").exists()
