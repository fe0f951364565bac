"""A wheel built from the checkout's files runs outside the checkout (issue 13).

The source is what a clean clone holds (tracked and new, not git-ignored files: no
generated stubs, no ``firmware-images/build``), copied to a temporary directory and built
with ``pip wheel --no-deps``. The wheel is installed into a fresh venv (no system site
packages); its dependencies come from this test's own environment through a ``.pth``
line that sys.path reads after the venv's site-packages, so the wheel's edgefed, edged,
serverd and drivers win. Every command then runs from a temporary working directory with
neither the checkout nor PYTHONPATH on sys.path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.packaging.brokerfiles import with_broker_files
from tests.support.paths import IMAGES_DIR, REPO, TRUST_DIR

pytestmark = pytest.mark.slow

PROFILED = ("pose_detector", "efficientnet_lite0")
DEV_KEY = TRUST_DIR / "dev-signing.pub"
PROBE = """
import json, sys
import drivers, drivers.deviceplugin.api_pb2_grpc, edged, edged.api.routes, edgefed, serverd
import edgefed.dmi.api_pb2_grpc
from drivers.deviceplugin import stubs
from edgefed.dmi import stubs as dmi_stubs
from edged.twin.properties import load_property_table
from edgefed import paths
from serverd.triton import install
stubs.load()
dmi_stubs.load()  # beside the device-plugin stubs: both declare v1beta1.Device
print(json.dumps({
    "modules": [m.__file__ for m in (drivers, edged, edgefed, serverd,
                                     drivers.deviceplugin.api_pb2_grpc,
                                     edgefed.dmi.api_pb2_grpc)],
    "sys_path": sys.path,
    "checkout": str(paths.CHECKOUT),
    "twin": load_property_table().names(),
    "static": sorted(p.name for p in edged.api.routes.STATIC.iterdir()),
    "backends": sorted(p.name for p in install.BACKENDS_SOURCE.iterdir()),
    "setup_script": str(install.SETUP_SCRIPT),
    "examples": [str(paths.resource(p, "example-config.yaml")) for p in ("edged", "serverd")],
}))
"""


def clean_source(dest: Path) -> Path:
    """Copy what a clean clone would hold (the working tree's versions) into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:  # not a git checkout (an sdist): build from it as it is
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".venv*", "var", "build"))
        return dest
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a staged deletion or rename leaves a listed path behind
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@dataclass(frozen=True)
class Installed:
    venv: Path
    work: Path
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *cmd: str, env: dict[str, str] | None = None) -> str:
        return run(list(cmd), self.work, self.env | (env or {}))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    source = clean_source(tmp / "src")
    assert not (source / "drivers/deviceplugin/api_pb2.py").exists()  # generated, ignored
    assert not (source / "edgefed/dmi/api_pb2.py").exists()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "EDGEFED_", "EDGED__", "SERVERD__"))
    }
    # no build isolation: the build requirements (setuptools, grpcio-tools) are in this
    # environment already, and the test then needs no package index
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)],
        tmp, env, timeout=180)  # fmt: skip
    (wheel,) = (tmp / "dist").glob("edgefed-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    python = str(venv / "bin" / "python")
    run([*pip, "--python", python, "install", "--no-deps", str(wheel)], tmp, env, timeout=120)
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  tmp, env).strip()  # fmt: skip
    # after the venv's own site-packages: the wheel's packages win, the rest comes from here
    (Path(purelib) / "zz-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "work"
    work.mkdir()
    return Installed(venv, work, env)


def test_the_wheel_not_the_checkout_is_imported(installed: Installed) -> None:
    info = json.loads(installed.run(installed.bin("python"), "-c", PROBE))
    for module in info["modules"]:
        assert Path(module).is_relative_to(installed.venv), module
    assert str(REPO) not in info["sys_path"] and "" not in info["sys_path"][1:]
    assert info["checkout"] == "None"
    assert "motion_threshold" in info["twin"]
    assert info["static"] == ["dashboard.css", "dashboard.js", "index.html"]
    assert {"echo", "npu"} <= set(info["backends"])
    for path in (info["setup_script"], *info["examples"]):
        assert Path(path).is_file() and Path(path).is_relative_to(installed.venv), path


def test_commands_run_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    """check-config on the demo and packaged configs, profile on real images, the plugin."""
    if not all((IMAGES_DIR / name / "manifest.yaml").is_file() for name in PROFILED):
        pytest.fail(f"model images missing in {IMAGES_DIR}: run packaging/dev/setup.sh")
    site = installed.venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    edged_example, serverd_example = (
        str(site / "site-packages" / package / "example-config.yaml")
        for package in ("edged", "serverd")
    )
    # its broker's certificates made as docs/security.md says, in tmp_path
    serverd_example = str(with_broker_files(Path(serverd_example), tmp_path))
    edged_demo = str(REPO / "packaging/dev/demo-edged.yaml")
    serverd_demo = tmp_path / "serverd.yaml"  # the shape packaging/dev/demo.py writes
    serverd_demo.write_text(
        yaml.safe_dump(
            {
                "server_id": "demo-server",
                "state_dir": str(tmp_path / "state" / "serverd"),
                "mqtt": {"host": "127.0.0.1", "port": 1883, "client_id": "demo-serverd"},
                "images": {"dir": str(IMAGES_DIR), "trusted_keys": [str(DEV_KEY)]},
                "triton": {
                    "venv": str(REPO / ".venv-triton"),
                    "instances": 1,
                    "models": [{"name": "person", "image": "pose_detector"}],
                },
            }
        )
    )
    state = tmp_path / "state"
    edged, serverd = installed.bin("edged"), installed.bin("serverd")
    checks: dict[str, tuple[Callable[[], str], list[str]]] = {
        "edged demo": (
            lambda: installed.run(edged, "check-config", edged_demo),
            ["device_id: demo/edge-01", "image: pose_landmarks", "/var/lib/edgefed/edged"],
        ),
        "edged example": (
            lambda: installed.run(edged, "check-config", edged_example),
            ["state_dir: /var/lib/edgefed/edged", "dir: /var/lib/edgefed/images",
             "/etc/edgefed/keys/image-signing.pub", "path: /var/lib/edgefed/edged/outbox.sqlite"],
        ),
        "edged example, EDGEFED_STATE_DIR": (
            lambda: installed.run(
                edged, "check-config", edged_example,
                env={"EDGEFED_STATE_DIR": str(state), "EDGEFED_IMAGES_DIR": str(IMAGES_DIR)},
            ),
            [f"state_dir: {state}/edged", f"dir: {IMAGES_DIR}"],
        ),
        "serverd demo": (
            lambda: installed.run(serverd, "check-config", str(serverd_demo)),
            ["server_id: demo-server", f"state_dir: {state}/serverd"],
        ),
        "serverd example": (
            lambda: installed.run(serverd, "check-config", serverd_example),
            ["state_dir: /var/lib/edgefed/serverd", "venv: /var/lib/edgefed/venv-triton"],
        ),
        "edged profile": (
            lambda: installed.run(
                edged, "profile", *(str(IMAGES_DIR / name) for name in PROFILED),
                "--trust", str(DEV_KEY), "--iterations", "3",
            ),
            [*PROFILED, "litert", "onnxruntime", "p50 ms"],
        ),
        "device plugin": (
            lambda: installed.run(installed.bin("python"), "-m", "drivers.deviceplugin", "--help"),
            ["usage:", "--driver-config"],
        ),
        "image build outside a checkout": (
            lambda: installed.run(edged, "image", "build", "--help"),
            ["required outside a checkout"],
        ),
    }  # fmt: skip
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = {name: pool.submit(call) for name, (call, _) in checks.items()}
        for name, (_, expected) in checks.items():
            out = outputs[name].result()
            for text in expected:
                assert text in out, f"{name}: {text!r} not in\n{out}"
    assert not (installed.work / "var").exists()  # nothing relative to the working directory
