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
import yaml

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


async def click(page: Page, x: float, y: float) -> None:
    """A left click at (x, y), CSS pixels of the viewport, as a mouse makes it."""
    for kind in ("mousePressed", "mouseReleased"):
        event = {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
        await page.send("Input.dispatchMouseEvent", event)


CORNERS = [(0.25, 0.5), (0.75, 0.5), (0.5, 0.9)]  # shares of the preview


async def draw_a_mask(page: Page) -> dict[str, Any]:
    """Four clicks on the preview with drawing on, the last one undone."""
    await page.evaluate("document.getElementById('draw').click()")
    box = await stream_box(page)
    for fx, fy in [*CORNERS, (0.1, 0.1)]:
        await click(page, box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    await page.evaluate("document.getElementById('draw-undo').click()")
    drawn: dict[str, Any] = await page.evaluate(
        "(() => { const r = document.getElementById('draw-shape').getBoundingClientRect();"
        " return {line: document.getElementById('draw-yaml').textContent,"
        " shape: [r.x, r.y, r.width, r.height]}; })()"
    )
    drawn["box"] = box
    return drawn


# the twin and federation panels: hidden on this edged (neither configured), then shown
# for its real status with both sections as a device on KubeEdge with federation has them
PANELS = """(async () => {
  const hidden = [$("twin-box").hidden, $("federation-box").hidden];
  const st = await getJson("/api/v1/status");
  st.twin = {dmi: {registered: true, last_error: null, counters: {}, rejections: {
    motion_threshold: {value: "300", reason: "motion_threshold: 300 is out of range"}}}};
  st.federation = {enabled: true, training_allowed: false, offers_sent: 3, models: {digits: {
    version: 5, samples: 40, rounds_trained: 2, updates_accepted: 2, updates_rejected: 0,
    versions_adopted: 4, versions_refused: 1, last_reason: ""}}};
  render(st);
  return {hidden, shown: [$("twin-box").hidden, $("federation-box").hidden],
          twin: $("twin").innerText, twinState: $("twin-state").textContent,
          federation: $("federation").innerText,
          federationState: $("federation-state").textContent};
})()"""


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
        panels = await page.evaluate(PANELS)
        ready = await page.evaluate("document.getElementById('ready').textContent")
        drawing = await draw_a_mask(page)  # before the page is resized below
        # every table fits its column: the page itself never scrolls sideways, on a desktop
        # (1280 px) or a phone (one column, 420 px)
        width_js = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        widths = [await page.evaluate(width_js)]
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 420, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        widths.append(await page.evaluate(width_js))
        await page.send("Emulation.clearDeviceMetricsOverride")
        await page.evaluate("document.getElementById('mask').click()")
        stream_src = await page.evaluate("document.getElementById('stream').src")
        full = await page.screenshot()
    return {
        "size": size,
        "first": first,
        "second": second,
        "frames": (frames_before, frames_after),
        "models_text": models_text,
        "panels": panels,
        "ready": ready,
        "widths": widths,
        "mask_src": stream_src,
        "drawing": drawing,
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
    for page_width, window_width in seen["widths"]:
        assert page_width <= window_width, seen["widths"]
    panels = seen["panels"]
    assert panels["hidden"] == [True, True] and panels["shown"] == [False, False]
    assert "motion_threshold\t300\tmotion_threshold: 300 is out of range" in panels["twin"]
    assert panels["twinState"] == "dmi (registered) · 1 refused"
    assert "digits\t5\t40\t2\t2 / 0\t4 / 1\t\u2013" in panels["federation"]
    assert panels["federationState"].startswith("training forbidden (federated_training off)")
    assert seen["mask_src"].endswith("/api/v1/preview.mjpg?camera=vtest&mask=1")
    # the mask drawn with the mouse: its config line in shares, its polygon on the preview
    drawing = seen["drawing"]
    (polygon,) = yaml.safe_load(drawing["line"])
    assert np.allclose(polygon, CORNERS, atol=0.005), drawing["line"]
    box, (x, y, w, h) = drawing["box"], drawing["shape"]
    expected = (0.25 * box["width"], 0.5 * box["height"], 0.5 * box["width"], 0.4 * box["height"])
    assert np.allclose((x - box["x"], y - box["y"], w, h), expected, atol=2), drawing
