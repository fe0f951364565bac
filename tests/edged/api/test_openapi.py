"""The OpenAPI document is valid and truthful: schemathesis fuzzes the live daemon with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edged.api.openapi import build_openapi
from edged.settings import RuntimeSettings

from .conftest import TOKEN, Daemon
from .httpclient import call

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def test_document_lists_every_route(daemon: Daemon) -> None:
    served = call(daemon.url + "/api/v1/openapi.json").json()
    assert served == build_openapi(list(daemon.app.pipeline.workers))
    assert served["openapi"].startswith("3.1")
    paths = served["paths"]
    for path in (
        "/healthz", "/readyz", "/metrics", "/api/v1/status", "/api/v1/models",
        "/api/v1/events", "/api/v1/outbox", "/api/v1/config", "/api/v1/preview.jpg",
        "/api/v1/preview.mjpg", "/api/v1/openapi.json", "/",
    ):  # fmt: skip
        assert path in paths, path
    assert set(paths["/api/v1/config"]) == {"get", "put"}
    assert paths["/api/v1/config"]["put"]["security"] == [{"bearer": []}]


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(
    daemon: Daemon, restore_settings: RuntimeSettings, tmp_path: Path
) -> None:
    if not SCHEMATHESIS.exists():
        pytest.fail("schemathesis is not installed: run packaging/dev/setup.sh", pytrace=False)
    cmd = [
        str(SCHEMATHESIS), "run", f"{daemon.url}/api/v1/openapi.json",
        "--checks", "all",
        "--exclude-path", "/api/v1/preview.mjpg",  # a stream never ends
        "--header", f"Authorization: Bearer {TOKEN}",
        "--max-examples", "10",
        "--seed", "5",
        "--workers", "1",
        "--request-timeout", "10",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
