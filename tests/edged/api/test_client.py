"""``edged status``: the same status in a terminal, from a running daemon."""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import time

import pytest

from edged.api.client import add_subparsers, cmd_status, fetch_status, format_status
from edgefed.errors import EdgeFedError
from edgefed.testing.wait import wait_until

from .conftest import Daemon


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edged")
    add_subparsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_status_prints_cameras_models_outbox_and_links(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    wait_until("a completed frame", lambda: daemon.app.pipeline.completed.total > 0)
    args = parse(["status", "--url", daemon.url])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("edged demo/edge-01: up ")
    assert any(line.startswith("vtest") and "running" in line for line in lines)
    for model in ("person", "pose", "face", "scene"):
        assert any(line.split()[:2] == [model, "yes"] for line in lines), model
    assert "outbox: not configured" in lines and "links: none configured" in lines


def test_status_prints_when_a_links_client_certificate_ends(daemon: Daemon) -> None:
    status = fetch_status(daemon.url, 5.0)
    soon, gone = time.time() + 12 * 86400, time.time() - 60
    status["links"] = [
        {"name": "mqtt", "connected": True, "cert_expires": soon},
        {"name": "eventbus", "connected": False, "cert_expires": gone},
        {"name": "plain", "connected": True, "cert_expires": None},
    ]
    (line,) = [ln for ln in format_status(status).splitlines() if ln.startswith("links: ")]
    day = datetime.datetime.fromtimestamp(soon, datetime.UTC).strftime("%Y-%m-%d")
    assert line.startswith(f"links: mqtt up (certificate until {day}), eventbus DOWN (client ")
    assert "certificate EXPIRED" in line and line.endswith(", plain up")


def test_status_prints_why_a_camera_is_down(daemon: Daemon) -> None:
    """As for models: the reason under the table, where the alerts' runbook sends a reader."""
    status = fetch_status(daemon.url, 5.0)
    camera = status["cameras"][0]
    camera |= {"state": "reconnecting", "last_error": "RTSP 401 Unauthorized"}
    lines = format_status(status).splitlines()
    assert f"  {camera['name']}: RTSP 401 Unauthorized" in lines
    camera["last_error"] = None
    assert not any("Unauthorized" in line for line in format_status(status).splitlines())


def test_status_json_is_the_api_document(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_status(parse(["status", "--url", daemon.url + "/", "--json"])) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["device_id"] == "demo/edge-01"
    assert {m["name"] for m in printed["models"]} == {"person", "pose", "face", "scene"}
    assert format_status(printed).startswith("edged demo/edge-01")


def test_status_of_an_unreachable_daemon_is_an_edgefed_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        with pytest.raises(EdgeFedError, match="cannot reach edged"):
            fetch_status(f"http://127.0.0.1:{port}", timeout=2)
