"""What every ``packaging/build`` target shares: steps, progress lines and the wheels.

The edgefed wheel is built from the checkout's files (tracked and new, never generated or
ignored ones) by the in-tree backend (``edgefed_build.py``); the pinned dependency wheels
of both roles are downloaded (binary only; kept between runs). The .deb packages and the
OCI images are both installed from these wheels, offline.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
# the configs both the .debs and the images ship in /etc/edgefed/
CONFIGS = {
    "edged.yaml": REPO / "edged" / "example-config.yaml",
    "serverd.yaml": REPO / "serverd" / "example-config.yaml",
    "npu-driver.yaml": PACKAGING / "debian" / "npu-driver.yaml",
}


class BuildError(Exception):
    """A step failed; the message says which and what it printed."""


class Progress:
    def __init__(self, steps: int) -> None:
        self._steps = steps
        self._done = 0
        self._start = time.monotonic()

    def step(self, what: str) -> None:
        self._done += 1
        elapsed = time.monotonic() - self._start
        print(f"[{self._done}/{self._steps}] {what} (+{elapsed:.1f} s)", flush=True)


def run(argv: list[str], cwd: Path = REPO) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        tail = "\n".join(line if len(line) < 300 else line[:297] + "..." for line in lines)
        raise BuildError(f"{' '.join(argv[:3])} ... failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def project() -> dict[str, object]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(data["project"])


def version() -> str:
    return str(project()["version"])


def pinned_requirements() -> list[str]:
    """The base requirements and those of the edge and server extras (``dev`` is not shipped)."""
    meta = project()
    extras = meta["optional-dependencies"]
    assert isinstance(extras, dict)
    reqs = [*meta["dependencies"], *extras["edge"], *extras["server"]]  # type: ignore[misc]
    return sorted(set(reqs))


def source_tree(dest: Path) -> Path:
    """The checkout's tracked and new files (what a clean clone plus your edits holds)."""
    names = run(["git", "ls-files", "-co", "--exclude-standard", "-z"]).split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def build_wheel(out: Path) -> Path:
    src = out / "src"
    shutil.rmtree(src, ignore_errors=True)
    source_tree(src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    for old in out.glob("wheels/edgefed-*.whl"):
        old.unlink()
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out / "wheels"), "."], src)
    shutil.rmtree(src)
    (wheel,) = out.glob("wheels/edgefed-*.whl")
    return wheel


def download_dependencies(out: Path, *lock_files: Path) -> int:
    """The pinned wheels of both roles, then those of each lock file (one resolution each:
    Triton's lock pins other versions than the roles); returns how many wheels ``out`` has.
    Each set is first resolved offline against the wheels a previous run kept (seconds),
    and downloaded only when that fails (a new pin, a first run)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = str(out / "wheels")
    download = [*pip, "download", "--only-binary=:all:", "-d", wheels]
    for requirements in [pinned_requirements(), *(["-r", str(lock)] for lock in lock_files)]:
        try:
            run([*download, "--no-index", "--find-links", wheels, *requirements])
        except BuildError:
            run([*download, *requirements])
    return len(list(out.glob("wheels/*.whl")))
