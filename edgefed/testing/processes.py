"""Stopping a child process the way the tests, the bench and the demo stop theirs."""

from __future__ import annotations

import subprocess
from typing import Any


def terminate(process: subprocess.Popen[Any] | None, wait_s: float = 30.0) -> int | None:
    """SIGTERM, wait ``wait_s`` (then SIGKILL); the exit code, None if never started."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode
