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
from .httpclient import put_json


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
