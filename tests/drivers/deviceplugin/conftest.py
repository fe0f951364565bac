"""Fixtures: generated stubs, a kubelet stand-in, and the device plugin as a real process
or, for a driver a test holds (to kill its side-car), in a thread of the test's process."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.deviceplugin import gen, stubs
from drivers.deviceplugin.config import DevicePluginConfig
from drivers.deviceplugin.plugin import DevicePlugin
from drivers.deviceplugin.stubs import Api
from edgefed.driver import Driver
from edgefed.sdnotify import Notifier
from edgefed.testing.kubelet import KubeletStandIn
from tests.support.paths import REPO

STOP_WAIT_S = 15.0
POLL_S = 0.1  # the plugin's poll interval in these tests


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
        str(POLL_S),
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


class PluginThread:
    """``DevicePlugin.run`` serving ``driver`` on its own event loop in a thread."""

    def __init__(self, driver: Driver[Any], api: Api, socket_dir: Path) -> None:
        config = DevicePluginConfig(socket_dir=socket_dir, poll_interval_s=POLL_S)
        self._plugin = DevicePlugin(driver, config, api, Notifier({}))
        self._serving = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None  # what ended the plugin, if anything did
        self._thread = threading.Thread(target=self._main, name="device-plugin")
        self._thread.start()
        self._serving.wait(STOP_WAIT_S)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # the test asserts there is none
            self.error = exc

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._serving.set()
        await self._plugin.run(self._stop)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self.running:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_WAIT_S)


@pytest.fixture
def serve(api: Api, socket_dir: Path) -> Iterator[Callable[[Driver[Any]], PluginThread]]:
    """Start the device plugin on a driver in this process; stopped after the test."""
    started: list[PluginThread] = []

    def serve(driver: Driver[Any]) -> PluginThread:
        started.append(PluginThread(driver, api, socket_dir))
        return started[-1]

    yield serve
    for plugin in started:
        plugin.stop()
