"""packaging/dev/setup.sh on a fresh Debian 12: the Debian packages it needs come before
the steps that use them.

The script runs in a copy of its folder with stand-ins for the system tools on PATH:
``dpkg-query`` says nothing is installed, ``apt-get`` and ``python3`` record their calls,
and ``python3`` fails after recording, which ends the script (``set -e``) right where a
fresh machine without python3-venv would fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.paths import REPO

SETUP = REPO / "packaging" / "dev" / "setup.sh"
STAND_INS = {
    "dpkg-query": "exit 1",  # not installed
    "apt-get": "exit 0",
    "python3": "exit 1",  # the venv step: stop here
}


def test_python3_venv_is_installed_before_the_venv_is_made(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "packaging" / "dev").mkdir(parents=True)
    shutil.copy(SETUP, checkout / "packaging" / "dev" / "setup.sh")
    (checkout / "pyproject.toml").write_text("")
    tools = tmp_path / "bin"
    tools.mkdir()
    calls = tmp_path / "calls"
    for name, body in STAND_INS.items():
        (tools / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n{body}\n')
        (tools / name).chmod(0o755)
    subprocess.run(
        ["bash", str(checkout / "packaging" / "dev" / "setup.sh")],
        env={**os.environ, "PATH": f"{tools}:/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
    )
    lines = calls.read_text().splitlines()
    venv = lines.index("python3 -m venv .venv")
    installed = [
        line.split() for line in lines[:venv] if line.startswith("apt-get ") and " install " in line
    ]
    assert any("python3-venv" in words for words in installed), lines
