"""ApiServer lifecycle: a busy port is a ConfigError, stop() ends open streams, no token."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest

from edged.api.config import ApiConfig
from edged.api.mjpeg import read_parts
from edged.api.server import ApiServer
from edgefed.errors import EXIT_RUNTIME, StartError, describe_fatal
from edgefed.testing.wait import wait_until

from .conftest import TOKEN, Daemon
from .httpclient import call, put_json


def test_a_busy_port_fails_start_with_an_error_systemd_restarts(daemon: Daemon) -> None:
    """A port in use (or an address not up yet at boot) may pass: not a ConfigError,
    whose exit status the units keep from restarting."""
    assert daemon.api.port is not None
    server = ApiServer(ApiConfig(port=daemon.api.port), daemon.sources, env={})
    with pytest.raises(StartError, match="cannot listen") as raised:
        server.start()
    assert describe_fatal(raised.value)[1] == EXIT_RUNTIME
    server.stop()


def test_without_a_token_mutating_calls_are_refused(daemon: Daemon) -> None:
    server = ApiServer(ApiConfig(port=0), daemon.sources, env={})
    server.start()
    try:
        answer = put_json(server.url + "/api/v1/config", {"motion_threshold": 30}, TOKEN)
        assert answer.status == 403
        assert "no API token" in answer.json()["reason"]
    finally:
        server.stop()
    assert daemon.runtime.current().motion_threshold == 25


async def stream_until_closed(url: str, first: threading.Event) -> int:
    parts = 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        async for _ in read_parts(resp):
            parts += 1
            first.set()
    return parts


def test_stop_ends_open_preview_streams(daemon: Daemon) -> None:
    wait_until("a completed frame", lambda: daemon.preview.latest("vtest") is not None)
    server = ApiServer(ApiConfig(port=0), daemon.sources, env={})
    server.start()
    first = threading.Event()
    result: list[int] = []
    viewer = threading.Thread(
        target=lambda: result.append(
            asyncio.run(stream_until_closed(server.url + "/api/v1/preview.mjpg", first))
        ),
        name="test-viewer",
    )
    viewer.start()
    assert first.wait(30), "no frame arrived"
    server.stop()
    viewer.join(30)
    assert not viewer.is_alive() and result and result[0] >= 1


def test_on_loopback_only_requests_to_localhost_are_answered(daemon: Daemon) -> None:
    """A page whose name an attacker rebinds to 127.0.0.1 (DNS rebinding), opened in the
    browser of an operator with the ssh tunnel the docs give, read the status and the
    preview: its requests carry the page's own name as Host. An API exposed on purpose
    (host 0.0.0.0) is reached by other names and answers them."""
    assert daemon.api.port is not None
    status = f"http://127.0.0.1:{daemon.api.port}/api/v1/status"
    for host in ("127.0.0.1", "localhost", "[::1]"):
        assert call(status, headers={"Host": f"{host}:{daemon.api.port}"}).status == 200, host
    rebound = call(status, headers={"Host": f"rebind.attacker.example:{daemon.api.port}"})
    assert rebound.status == 421 and rebound.json()["error"] == "misdirected"
    exposed = ApiServer(ApiConfig(host="0.0.0.0", port=0), daemon.sources, env={})
    exposed.start()
    try:
        named = call(
            f"http://127.0.0.1:{exposed.port}/healthz", headers={"Host": "edge-01.site.example"}
        )
        assert named.status == 200
    finally:
        exposed.stop()
