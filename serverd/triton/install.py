"""Where the Triton binary of ``.venv-triton`` lives and how to run it on these machines.

Encodes the traps of REFERENCE.md ("Running a real Triton on these machines"): the
python backend stub is copied next to ``libtriton_python.so`` by ``setup_env.sh``;
``LD_LIBRARY_PATH`` starts with the venv interpreter's ``LIBDIR`` (else the stub loads
the system libpython); ``PATH`` starts with the venv's ``bin`` (the stub takes
``python3`` from it and needs numpy < 2). Python-based backends are laid out in a
per-run backend directory next to a link to the python backend.

glibc's allocator is told to keep frame-sized buffers (``MALLOC_SETTINGS``, unless the
environment sets them already): in the python backend stub every decoded frame and
input tensor otherwise came from a fresh ``mmap`` and paid its page faults, which
doubled the JPEG decode of a 640x480 frame (2.6 ms against 1.4;
``detector_server_p50_ms.decode`` of ``python -m bench offload-rtt``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgefed.errors import OffloadError
from edgefed.paths import resource

BACKENDS_SOURCE = resource("serverd.triton", "backends")  # package data: our python backends
SETUP_SCRIPT = resource("serverd.triton", "setup_env.sh")  # with requirements.txt beside it
SETUP_HINT = f"run `bash {SETUP_SCRIPT}` first"
STUB = "triton_python_backend_stub"
# Allocations up to 8 MB (a 1080p BGR frame is 6.2 MB) come from the heap, and up to
# 64 MB of freed heap stays mapped for the next request instead of going back to the OS.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": "8388608", "MALLOC_TRIM_THRESHOLD_": "67108864"}

_PROBE = """
import importlib.util, json, pathlib, sysconfig
spec = importlib.util.find_spec("pytriton")
where = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
print(json.dumps({
    "server_dir": str(pathlib.Path(where[0]) / "tritonserver") if where else "",
    "libdir": sysconfig.get_config_var("LIBDIR") or "",
}))
"""


@dataclass(frozen=True)
class TritonInstall:
    """The resolved paths of one Triton environment (a venv with nvidia-pytriton)."""

    venv: Path
    server_dir: Path
    python_libdir: Path

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.server_dir / "backends" / "python"

    @property
    def cache_dir(self) -> Path:
        return self.server_dir / "caches"

    @classmethod
    def locate(cls, venv: Path) -> TritonInstall:
        """Ask the venv's interpreter where pytriton is; OffloadError if it is not usable."""
        venv = venv.absolute()  # Triton runs in another directory: PATH must be absolute
        python = venv / "bin" / "python"
        if not python.exists():
            raise OffloadError(f"no Triton environment at {venv}: {SETUP_HINT}")
        try:
            out = subprocess.run(
                [str(python), "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True
            )
            info = json.loads(out.stdout)
        except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
            raise OffloadError(f"cannot inspect the Triton environment {venv}: {exc}") from exc
        if not info["server_dir"]:
            raise OffloadError(f"nvidia-pytriton is not installed in {venv}: {SETUP_HINT}")
        install = cls(venv, Path(info["server_dir"]), Path(info["libdir"]))
        install.check()
        return install

    def check(self) -> None:
        """Every file the binary and the python backend need is in place."""
        for path in (self.binary, self.python_backend / "libtriton_python.so"):
            if not path.exists():
                raise OffloadError(f"Triton environment {self.venv} lacks {path}: {SETUP_HINT}")
        if not (self.python_backend / STUB).exists():
            raise OffloadError(
                f"the python backend stub is not next to libtriton_python.so in "
                f"{self.python_backend}: {SETUP_HINT}"
            )

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The process environment of ``tritonserver`` (PATH and LD_LIBRARY_PATH first)."""
        env = MALLOC_SETTINGS | dict(base)
        env["PATH"] = os.pathsep.join(filter(None, [str(self.venv / "bin"), base.get("PATH")]))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [str(self.python_libdir), base.get("LD_LIBRARY_PATH")])
        )
        env.pop("PYTHONPATH", None)  # the main venv's packages must not shadow numpy < 2
        env.pop("VIRTUAL_ENV", None)
        return env

    def backend_dir(self, work: Path) -> Path:
        """Lay out ``work/backends``: the python backend plus our python-based backends."""
        backends = work / "backends"
        backends.mkdir(parents=True, exist_ok=True)
        link = backends / "python"
        if link.is_symlink() and link.resolve() != self.python_backend.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(self.python_backend, target_is_directory=True)
        for source in sorted(BACKENDS_SOURCE.iterdir()):
            if (source / "model.py").is_file():
                target = backends / source.name
                target.mkdir(exist_ok=True)
                shutil.copyfile(source / "model.py", target / "model.py")
        return backends
