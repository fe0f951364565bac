"""Model export in a throwaway venv (e.g. torch -> ONNX), cached by its inputs.

The venv is created without pip and filled by the running interpreter's pip
(``pip --python VENV install``), so heavy exporters never touch the daemon's own
environment. An export's output is cached under a key made of the script, the
weights wheel, the requirements and the installed wheels, so a rebuild reuses it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from edgefed.errors import ImageError

STAMP_NAME = ".edgefed-export-stamp"


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _run(cmd: Sequence[str], what: str, timeout: float) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what} timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise ImageError(f"{what} could not start: {exc.strerror or exc}") from exc
    if proc.returncode != 0:
        raise ImageError(f"{what} failed: {_last_line(proc.stderr)}")


class ExportVenv:
    """A venv holding exactly the pinned requirements and wheels of an export."""

    def __init__(self, folder: Path, pip_args: Sequence[str] = (), timeout: float = 1800) -> None:
        self.folder = folder
        self._pip_args = list(pip_args)
        self._timeout = timeout

    @property
    def python(self) -> Path:
        return self.folder / "bin" / "python"

    def ensure(self, requirements: Sequence[str], wheels: Sequence[Path]) -> None:
        """Create or refresh the venv unless it already holds exactly this set."""
        want = json.dumps(
            {"requirements": sorted(requirements), "wheels": sorted(w.name for w in wheels)}
        )
        stamp = self.folder / STAMP_NAME
        if stamp.is_file() and stamp.read_text() == want and self.python.exists():
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        _run(
            [sys.executable, "-m", "venv", "--without-pip", str(self.folder)],
            "creating the export venv",
            self._timeout,
        )
        pip = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(self.python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *self._pip_args,
        ]
        if requirements:
            _run([*pip, *requirements], "installing the export requirements", self._timeout)
        if wheels:
            _run([*pip, "--no-deps", *map(str, wheels)], "installing export wheels", self._timeout)
        stamp.write_text(want)

    def run_script(self, script: Path, weights: Path, out: Path) -> None:
        cmd = [str(self.python), str(script), "--weights", str(weights), "--out", str(out)]
        _run(cmd, f"export script {script.name}", self._timeout)
        if not out.is_file():
            raise ImageError(f"export script {script.name} wrote no {out.name}")


def export_key(
    script: Path,
    weights_sha256: str,
    member: str,
    requirements: Sequence[str],
    wheel_shas: Sequence[str],
) -> str:
    """Cache key of one export: changes whenever any of its inputs does."""
    h = hashlib.sha256()
    h.update(script.read_bytes())
    h.update(
        json.dumps([weights_sha256, member, sorted(requirements), sorted(wheel_shas)]).encode()
    )
    return h.hexdigest()[:32]


class ExportCache:
    """Exported model files by key: ``<folder>/<key>/<output>``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def lookup(self, key: str, output: str) -> Path | None:
        path = self.folder / key / output
        return path if path.is_file() else None

    def store(self, key: str, produced: Path) -> Path:
        dest_dir = self.folder / key
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / produced.name
        tmp = dest.with_name(dest.name + ".partial")
        shutil.copyfile(produced, tmp)
        tmp.replace(dest)
        return dest
