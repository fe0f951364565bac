"""The ``serverd`` command: check-config, and ``run`` as a real process.

The running process uses no Triton of its own: it is pointed at one of the shared
fixture's Tritons as an external endpoint, which also covers external endpoints and
model discovery through Triton's repository index.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefed.errors import EXIT_CONFIG
from edgefed.sdnotify import Notifier
from edgefed.testing.broker import Broker
from edgefed.testing.presence import Presence
from edgefed.wire import OffloadResult, Topics
from serverd.cli import main
from serverd.config import parse_config
from serverd.systemd import watchdog
from serverd.triton.install import TritonInstall
from serverd.triton.repository import TritonModelConfig, write_repository
from serverd.triton.supervisor import TritonPorts, TritonProcess
from tests.serverd.harness import Edge, frame_jpeg
from tests.support.notify import NotifyListener
from tests.support.paths import IMAGES_DIR, REPO

TRUSTED_KEY = IMAGES_DIR / "keys" / "dev-signing.pub"


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_check_config_prints_the_resolved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path / "ok.yaml",
        {
            "mqtt": {"client_id": "serverd-1"},
            "triton": {"models": [{"name": "person", "image": "pose_detector"}]},
        },
    )
    assert main(["check-config", str(config)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["triton"]["models"][0]["max_batch_size"] == 8
    assert resolved["scheduler"]["capacity"] == 4 and resolved["prefix"] == "edgefed"


def test_check_config_names_every_bad_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path / "bad.yaml",
        {
            "mqtt": {"client_id": "serverd-1", "port": 0},
            "triton": {"models": [{"name": "person"}]},
            "bogus": 1,
        },
    )
    assert main(["check-config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "mqtt.port" in err and "bogus" in err and "needs an image" in err


def test_a_config_without_any_triton_is_refused(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "none.yaml", {"mqtt": {"client_id": "s"}, "triton": {"instances": 0}}
    )
    assert main(["check-config", str(config)]) == EXIT_CONFIG


@pytest.fixture(scope="module")
def external_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gRPC address of a Triton serving "person" and "echo" with its APIs open: an
    external endpoint's Triton (`serverd run`, another process, has no key to send to
    one that serverd supervises)."""
    if not (REPO / ".venv-triton" / ".edgefed-installed").exists():
        pytest.fail("Triton's environment is missing: run bash serverd/triton/setup_env.sh")
    work = tmp_path_factory.mktemp("external-triton")
    models = [
        TritonModelConfig(
            name="person", image=Path("pose_detector"), driver={"type": "litert", "num_threads": 1}
        ),
        TritonModelConfig(name="echo", backend="echo"),
    ]
    repository = write_repository(work / "models", models, IMAGES_DIR, [TRUSTED_KEY])
    install = TritonInstall.locate(REPO / ".venv-triton")
    process = TritonProcess(install, repository, work, "ext", TritonPorts.free(), private=False)
    process.start()
    yield process.grpc_url
    process.stop()


@pytest.fixture
def cli_config(tmp_path: Path, external_triton: str, shared_broker: Broker) -> Path:
    return write_config(
        tmp_path / "serverd.yaml",
        {
            "server_id": "cli-server",
            "prefix": "cli",
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"port": shared_broker.port, "client_id": "serverd-cli"},
            "api": {"port": 0},
            "triton": {"instances": 0},
            "endpoints": [{"name": "ext", "url": external_triton}],
        },
    )


@pytest.fixture
def presence(shared_broker: Broker) -> Iterator[Presence]:
    watcher = Presence(shared_broker.port, Topics("cli").server_availability("cli-server"))
    yield watcher
    watcher.stop()


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "serverd", "run", "-c", str(config)],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_run_serves_an_external_triton_and_stops_cleanly_on_sigterm(
    cli_config: Path, presence: Presence, shared_broker: Broker
) -> None:
    process = start(cli_config)
    try:
        online = presence.next("online")
        assert {"echo", "person"} <= set(online.models) and online.role == "server"
        process.send_signal(signal.SIGHUP)  # logged, no stop: it serves the request below
        edge = Edge(shared_broker.port, device_id="cli-cam", prefix="cli")
        request = edge.request("echo")
        edge.send(request, frame_jpeg())
        ((reply, _),) = edge.collect(1)
        edge.close()
        assert isinstance(reply, OffloadResult) and reply.served_by == "cli-server/ext"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output.decode(errors="replace")
    assert b"received SIGTERM" in output
    assert b"received SIGHUP: serverd does not reload its configuration" in output
    assert presence.next("offline").id == "cli-server"


def test_run_notifies_systemd_ready_watchdog_status_and_stopping(
    cli_config: Path, presence: Presence, tmp_path: Path
) -> None:
    listener = NotifyListener(tmp_path, abstract=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "serverd", "run", "-c", str(cli_config)],
        cwd=REPO,
        env=listener.env(watchdog_s=2.0) | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        presence.next("online")
        ready = listener.wait_for("READY", 30)
        time.sleep(4)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        listener.close()
    assert process.returncode == 0, output.decode(errors="replace")
    assert (
        ready.fields["STATUS"].startswith("serving ")
        and "on 1 instance(s)" in ready.fields["STATUS"]
    )
    # a pet every 1 s, none as late as the interval (systemd's limit), on a loaded machine too
    pets = [t for t in listener.times("WATCHDOG") if ready.at <= t <= ready.at + 4]
    assert len(pets) >= 3 and max(b - a for a, b in itertools.pairwise(pets)) < 2.0
    assert listener.snapshot()[-1].fields["STOPPING"] == "1"


def test_a_blocked_event_loop_stops_the_watchdog(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path)
    notifier = Notifier(listener.env(watchdog_s=0.4))

    async def scenario() -> tuple[float, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(watchdog(notifier, stop, lambda: "ok", status_interval=0.2))
        await asyncio.sleep(1.0)
        blocked = time.monotonic()
        time.sleep(1.5)  # a callback that never yields: serverd's loop is stuck
        resumed = time.monotonic()
        await asyncio.sleep(0.5)
        stop.set()
        await task
        return blocked, resumed

    blocked, resumed = asyncio.run(scenario())
    listener.wait_for("STOPPING", 5)
    listener.close()
    pets = listener.times("WATCHDOG")
    # (a pet sent just before the block may be read a little after it on a loaded machine)
    assert [t for t in pets if blocked + 0.3 < t < resumed] == []
    assert any(t < blocked for t in pets) and any(t > resumed for t in pets)
    assert any(n.fields.get("STATUS") == "ok" for n in listener.snapshot())


def test_a_status_line_that_fails_never_stops_the_watchdog(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The status comes from the job table; storage that fails its reads must not make
    systemd kill a serverd that still serves (the watchdog task died here before)."""
    listener = NotifyListener(tmp_path)
    notifier = Notifier(listener.env(watchdog_s=0.4))

    def failing() -> str:
        raise sqlite3.DatabaseError("disk I/O error")

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(watchdog(notifier, stop, failing, status_interval=0.1))
        await asyncio.sleep(1.5)
        stop.set()
        await task

    started = time.monotonic()
    asyncio.run(scenario())
    listener.wait_for("STOPPING", 5)
    listener.close()
    pets = listener.times("WATCHDOG")
    assert any(t > started + 1.2 for t in pets)  # petted to the end
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "disk I/O error" in errors[0].getMessage()


def test_a_killed_serverd_is_announced_offline_by_its_last_will(
    cli_config: Path, presence: Presence
) -> None:
    process = start(cli_config)
    try:
        presence.next("online")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
    assert presence.next("offline").id == "cli-server"


def test_the_documented_configuration_is_valid() -> None:
    text = (REPO / "docs" / "serverd.md").read_text(encoding="utf-8")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(yaml.safe_load(block))
    assert [m.name for m in config.triton.models] == ["person", "echo"]
    assert config.endpoints[0].models == ["person"]
