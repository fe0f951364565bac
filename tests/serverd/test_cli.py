"""The ``serverd`` command: check-config, and ``run`` as a real process.

The running process uses no Triton of its own: it is pointed at one of the shared
fixture's Tritons as an external endpoint, which also covers external endpoints and
model discovery through Triton's repository index.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefed.errors import EXIT_CONFIG
from edgefed.testing.broker import Broker
from edgefed.testing.presence import Presence
from edgefed.wire import OffloadResult, Topics
from serverd.cli import main
from serverd.config import parse_config
from tests.serverd.harness import Edge, ServerdThread, frame_jpeg
from tests.support.paths import REPO


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


@pytest.fixture
def cli_config(tmp_path: Path, serverd: ServerdThread, shared_broker: Broker) -> Path:
    external = serverd.app.supervisors["local-1"].process.grpc_url
    return write_config(
        tmp_path / "serverd.yaml",
        {
            "server_id": "cli-server",
            "prefix": "cli",
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"port": shared_broker.port, "client_id": "serverd-cli"},
            "api": {"port": 0},
            "triton": {"instances": 0},
            "endpoints": [{"name": "ext", "url": external}],
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
    assert presence.next("offline").id == "cli-server"


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
