"""The edge/server split of the distribution (docs/install.md), read from the source and run.

Each role's entry points are followed through every import (inside functions too, as in
``tests/test_layers.py``) to the third-party modules they can reach; those must be
installed by the base requirements plus the role's extra in pyproject.toml. Then each
role really runs with the other role's packages made unimportable.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.packaging.brokerfiles import with_broker_files
from tests.support.paths import REPO
from tests.test_layers import FIRST_PARTY, imported_modules

# drivers.registry names the built-in drivers as strings: they are entries of their own
ROLES = {
    "edge": (
        "edged.cli",
        "edged.app",
        "drivers.deviceplugin.__main__",
        *(f"drivers.{d}" for d in ("onnx_runtime", "litert", "fake_npu")),
    ),
    "server": ("serverd.cli", "serverd.app"),
}
# what a role must never pull in: the other role's heavy stack
FOREIGN = {
    "edge": {"tritonclient"},
    "server": {"cv2", "onnxruntime", "ai_edge_litert"},
}
# pins both roles carry: gRPC (device plugin / Triton client), the HTTP API with /metrics,
# and onnx (INT8 variants on the edge, federated version images on the server)
SHARED = {"grpcio", "protobuf", "aiohttp", "prometheus-client", "onnx"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_norm(re.split(r"[\[=<>!~; ]", r, maxsplit=1)[0]) for r in requirements}


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable_third_party(entries: tuple[str, ...]) -> set[str]:
    """Top-level third-party modules that ``entries`` can import, directly or not."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parents run first
        path = _module_file(name)
        if path is None:
            continue
        for imported in imported_modules(REPO, path):
            top = imported.split(".")[0]
            if top in FIRST_PARTY:
                todo += [m for m in (imported, imported.rsplit(".", 1)[0]) if _module_file(m)]
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return third


@pytest.mark.parametrize("role", sorted(ROLES))
def test_each_role_installs_what_it_imports_and_nothing_of_the_other(role: str) -> None:
    project = _pyproject()
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    installed = _requirement_names([*project["dependencies"], *extras[role]])  # type: ignore[misc]
    dists = importlib.metadata.packages_distributions()
    modules = reachable_third_party(ROLES[role])
    missing = {
        m: dists.get(m) for m in modules if not {_norm(d) for d in dists.get(m, [])} & installed
    }
    assert missing == {}, f"{role} imports modules its extra does not install: {missing}"
    assert modules & FOREIGN[role] == set()
    other = "server" if role == "edge" else "edge"
    shared = _requirement_names(extras[other]) & _requirement_names(extras[role])
    assert {_norm(d) for m in FOREIGN[role] for d in dists.get(m, [])} & installed == set()
    assert shared <= SHARED


def test_dev_installs_both_roles() -> None:
    dev = _pyproject()["optional-dependencies"]["dev"]  # type: ignore[index]
    roles = [r for r in dev if r.startswith("edgefed[")]
    assert len(roles) == 1 and {"edge", "server"} <= set(roles[0][8:-1].split(","))


BLOCKER = """
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError(f'{{name}} is not installed in this role', name=name)
        return None
sys.meta_path.insert(0, Absent())
for module in {imports!r}:
    __import__(module)
sys.argv = {argv!r}
runpy.run_module({main!r}, run_name='__main__')
"""


def run_without(blocked: set[str], imports: tuple[str, ...], main: str, *args: str) -> str:
    code = BLOCKER.format(blocked=sorted(blocked), imports=imports, argv=[main, *args], main=main)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_serverd_runs_without_the_camera_stack(tmp_path: Path) -> None:
    example = with_broker_files(REPO / "serverd" / "example-config.yaml", tmp_path)
    out = run_without(FOREIGN["server"], ("serverd.app",), "serverd", "check-config", str(example))
    assert "triton:" in out


def test_edged_and_the_device_plugin_run_without_the_triton_client() -> None:
    out = run_without(
        FOREIGN["edge"],
        ("edged.app", "drivers.deviceplugin.plugin"),
        "edged",
        "check-config",
        str(REPO / "edged" / "example-config.yaml"),
    )
    assert "cameras:" in out
    assert "usage" in run_without(FOREIGN["edge"], (), "drivers.deviceplugin", "--help")
