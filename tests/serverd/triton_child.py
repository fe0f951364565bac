"""Starts one real Triton (the echo model) as serverd would, prints its pid, then sleeps
until killed: the process the kill -9 test kills (``test_triton_lifecycle.py``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from serverd.triton.install import TritonInstall
from serverd.triton.repository import TritonModelConfig, write_repository
from serverd.triton.supervisor import TritonPorts, TritonProcess


def main(venv: str, work: str, images: str) -> None:
    work_dir = Path(work)
    echo = [TritonModelConfig(name="echo", backend="echo")]
    repository = write_repository(work_dir / "models", echo, Path(images), [])
    process = TritonProcess(
        TritonInstall.locate(Path(venv)), repository, work_dir, "local-0", TritonPorts.free()
    )
    process.start()
    print(process.pid, flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
