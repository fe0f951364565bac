"""Fixtures: generated stubs, a kubelet stand-in, and the device plugin as a real process."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.deviceplugin import gen, stubs
from drivers.deviceplugin.stubs import Api
from edgefed.testing.kubelet import KubeletStandIn
from tests.support.paths import REPO

STOP_WAIT_S = 15.0


@pytest.fixture(scope="session")
def api() -> Api:
    """The v1beta1 stubs, generated from api.proto first if this is a clean clone."""
    gen.generate()
    return stubs.load()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short path: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="edgefed-dp-") as tmp:
        yield Path(tmp)


@pytest.fixture
def kubelet(api: Api, socket_dir: Path) -> Iterator[KubeletStandIn]:
    standin = KubeletStandIn(api, socket_dir).start()
    yield standin
    standin.stop()


@dataclass
class PluginProcess:
    proc: subprocess.Popen[str]
    state_dir: Path
    log: Path

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=STOP_WAIT_S)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8")


def plugin_command(driver_config: Path, socket_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "drivers.deviceplugin",
        "--driver-config",
        str(driver_config),
        "--socket-dir",
        str(socket_dir),
        "--resource-domain",
        "edgefed.io",
        "--poll-interval",
        "0.1",
        *extra,
    ]


@pytest.fixture
def plugin(
    api: Api, socket_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[PluginProcess]:
    """The plugin CLI advertising a two-device fake NPU whose state files live in tmp_path.

    Parametrize it indirectly with a tuple of further CLI options.
    """
    state_dir = tmp_path / "fake-npu"
    config = tmp_path / "driver.yaml"
    config.write_text(
        f"type: fake-npu\ndevices: 2\nmodel_name: fake-x220\nstate_dir: {state_dir}\n",
        encoding="utf-8",
    )
    log = tmp_path / "plugin.log"
    extra = (
        "--device-node",
        "/dev/fake-{id}",
        "--mount",
        f"{state_dir}:/run/fake-npu:ro",
        *getattr(request, "param", ()),
    )
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            plugin_command(config, socket_dir, *extra),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    running = PluginProcess(proc, state_dir, log)
    yield running
    if proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.stop()
    if proc.poll() is None:
        proc.kill()
        proc.wait()
