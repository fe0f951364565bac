"""The OpenAPI document is valid and truthful: schemathesis fuzzes the live daemon with it."""

from __future__ import annotations

import json
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


@pytest.mark.slow
def test_schemathesis_without_the_token_is_refused_every_change_and_finds_no_5xx(
    daemon: Daemon, restore_settings: RuntimeSettings, tmp_path: Path
) -> None:
    """The same run with no token (no Authorization header, or schemathesis' guesses):
    every ``PUT /api/v1/config`` answers 401 or 403 whatever the body, other changing
    methods 401, 403 or 405 (not routed), nothing 5xx, and the settings stay as they
    were. The responses are read back from schemathesis' HAR report."""
    if not SCHEMATHESIS.exists():
        pytest.fail("schemathesis is not installed: run packaging/dev/setup.sh", pytrace=False)
    before = call(daemon.url + "/api/v1/config").json()
    cmd = [
        str(SCHEMATHESIS), "run", f"{daemon.url}/api/v1/openapi.json",
        "--checks", "not_a_server_error,ignored_auth",
        "--exclude-path", "/api/v1/preview.mjpg",  # a stream never ends
        "--max-examples", "30",
        "--seed", "7",
        "--workers", "1",
        "--request-timeout", "10",
        "--report", "har", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    entries = [
        e
        for har in tmp_path.glob("har-*.json")
        for e in json.loads(har.read_text())["log"]["entries"]
    ]
    mutating = [e for e in entries if e["request"]["method"] in ("PUT", "POST", "PATCH", "DELETE")]
    changes = [e for e in mutating if e["request"]["url"].endswith("/api/v1/config")]
    changes = [e for e in changes if e["request"]["method"] == "PUT"]  # the documented one
    assert len(changes) >= 30, f"only {len(changes)} PUT /api/v1/config calls made"
    assert {e["response"]["status"] for e in changes} <= {401, 403}
    # methods the API does not route (schemathesis probes them) are refused as well
    assert {e["response"]["status"] for e in mutating} <= {401, 403, 405}
    assert all(e["response"]["status"] < 500 for e in entries)
    assert TOKEN not in json.dumps([e["request"] for e in mutating])  # only none or guesses
    assert call(daemon.url + "/api/v1/config").json() == before
