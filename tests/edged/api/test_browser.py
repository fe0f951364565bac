"""The dashboard in a real browser (headless Debian chromium) on a running edged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edgefed.testing.wait import wait_until
from tests.support.paths import REPO

from .cdp import CHROMIUM, Browser, Page
from .conftest import Daemon

ARTIFACTS = REPO / "artifacts" / "api"
pytestmark = [pytest.mark.slow]


@pytest.fixture(autouse=True)
def _need_chromium() -> None:
    if CHROMIUM is None:  # the set-up installs Debian's chromium: missing means a broken set-up
        pytest.fail("chromium is not installed: run packaging/dev/setup.sh", pytrace=False)


async def until(what: str, probe: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def pixels(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


async def stream_box(page: Page) -> dict[str, float]:
    box: dict[str, float] = await page.evaluate(
        "(() => { const r = document.getElementById('stream').getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
    )
    return box


async def drive_dashboard(url: str, profile: Path) -> dict[str, Any]:
    async with Browser(profile) as browser:
        page = await browser.open(url + "/")
        await until(
            "the dashboard to load",
            lambda: page.evaluate(
                f"location.href === {url + '/'!r} && document.readyState === 'complete'"
            ),
        )
        await until(
            "the stream to show a frame",
            lambda: page.evaluate("document.getElementById('stream').naturalWidth > 0"),
        )
        size = await page.evaluate(
            "[document.getElementById('stream').naturalWidth,"
            " document.getElementById('stream').naturalHeight]"
        )
        frames_before = int(await page.evaluate("document.getElementById('frames').textContent"))
        box = await stream_box(page)
        first = await page.screenshot(box)

        async def changed_frame() -> bytes | None:
            shot = await page.screenshot(box)
            return shot if not np.array_equal(pixels(shot), pixels(first)) else None

        second = await until("a different frame in the preview", changed_frame)

        async def frames_now() -> int | None:
            n = int(await page.evaluate("document.getElementById('frames').textContent"))
            return n if n > frames_before else None

        frames_after = await until("the frame counter on the page to grow", frames_now)
        await until(
            "the models table",
            lambda: page.evaluate("document.querySelectorAll('#models tbody tr').length === 4"),
        )
        await until(
            "a few points in the gate chart", lambda: page.evaluate("gateHistory.length >= 3")
        )
        models_text = await page.evaluate("document.querySelector('#models tbody').innerText")
        ready = await page.evaluate("document.getElementById('ready').textContent")
        await page.evaluate("document.getElementById('mask').click()")
        stream_src = await page.evaluate("document.getElementById('stream').src")
        full = await page.screenshot()
    return {
        "size": size,
        "first": first,
        "second": second,
        "frames": (frames_before, frames_after),
        "models_text": models_text,
        "ready": ready,
        "mask_src": stream_src,
        "full": full,
    }


def test_dashboard_shows_a_live_stream_and_updating_metrics(daemon: Daemon, tmp_path: Path) -> None:
    wait_until("a completed frame", lambda: daemon.preview.latest("vtest") is not None)
    seen = asyncio.run(drive_dashboard(daemon.url, tmp_path / "chromium"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(seen["full"])
    (ARTIFACTS / "preview-1.png").write_bytes(seen["first"])
    (ARTIFACTS / "preview-2.png").write_bytes(seen["second"])
    assert seen["size"] == [768, 576]
    assert not np.array_equal(pixels(seen["first"]), pixels(seen["second"]))
    before, after = seen["frames"]
    assert after > before > 0
    for model in ("person", "pose", "face", "scene"):
        assert model in seen["models_text"]
    assert seen["ready"] == "ready"
    assert seen["mask_src"].endswith("/api/v1/preview.mjpg?camera=vtest&mask=1")
