"""serverd's Triton supervision in a process that orphans come to, as they do to serverd
when it is a container's PID 1 (``PR_SET_CHILD_SUBREAPER`` stands in for PID 1): a real
Triton (the echo model, two instances: two python backend stubs) is killed with SIGKILL
twice. Prints one JSON line: the stubs the first Triton had, the restarts, the zombies
left among this process's children, and the exit code of a short-lived helper in this
process's own session, which exited meanwhile and is waited for only at the end: it is
not the reaper's to take (``test_triton_lifecycle.py``)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgefed.testing.wait import wait_until
from serverd.triton import supervisor
from serverd.triton.install import TritonInstall
from serverd.triton.reaper import children
from serverd.triton.repository import TritonModelConfig, write_repository
from serverd.triton.supervisor import TritonPorts, TritonProcess, TritonSupervisor

PR_SET_CHILD_SUBREAPER = 36


def main(venv: str, work: str, images: str) -> None:
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    supervisor.LOG_CHECK_S = 0.5  # the supervisor's periodic chores (serverd: every 10 s)
    echo = [TritonModelConfig(name="echo", backend="echo", instances=2)]
    repository = write_repository(Path(work) / "models", echo, Path(images), [])
    process = TritonProcess(
        TritonInstall.locate(Path(venv)), repository, Path(work), "local-0", TritonPorts.free()
    )
    ups: list[bool] = []
    watcher = TritonSupervisor(process, lambda _name, up: ups.append(up), restarts=10)
    helper = subprocess.Popen(["sh", "-c", "exit 3"])
    watcher.start()
    try:
        assert process.pid is not None
        stubs = len(children(process.pid))
        for crash in range(1, 3):
            os.kill(process.pid, signal.SIGKILL)
            wait_until("Triton to come back", lambda n=crash: ups.count(True) == n, 120)

        def zombies() -> set[int]:
            return {c.pid for c in children(os.getpid()) if c.state == "Z"} - {helper.pid}

        deadline = time.monotonic() + 10
        while zombies() and time.monotonic() < deadline:
            time.sleep(0.2)
        said = {"stubs": stubs, "restarts": ups.count(True), "zombies": len(zombies())}
        print(json.dumps(said | {"helper_exit": helper.wait()}))
    finally:
        watcher.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
