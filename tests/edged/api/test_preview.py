"""The live preview: shared, rate-capped rendering; MJPEG and single JPEG; annotations."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from urllib.parse import urlsplit

import aiohttp
import cv2
import numpy as np

from edged.api.draw import POSE_CONNECTIONS, VISIBLE, annotate
from edged.api.mjpeg import CONTENT_TYPE, read_parts
from edged.api.preview import PreviewRenderer, PreviewSink, Rendered
from edged.framejob import FrameJob
from edged.perception import CameraPerception, PerceptionConfig
from edgefed.models.types import Detection, Landmarks
from edgefed.testing.wait import wait_until

from .conftest import Daemon
from .httpclient import call


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def digests(parts: list[bytes]) -> set[bytes]:
    return {hashlib.sha256(p).digest() for p in parts}


async def watch(url: str, parts: int) -> list[bytes]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == CONTENT_TYPE
        out: list[bytes] = []
        async for body in read_parts(resp):
            out.append(body)
            if len(out) == parts:
                return out
    raise AssertionError("stream ended early")


async def two_viewers(url: str, parts: int) -> tuple[list[bytes], list[bytes]]:
    a, b = await asyncio.gather(watch(url, parts), watch(url, parts))
    return a, b


def test_two_viewers_share_one_render_per_frame(daemon: Daemon) -> None:
    wait_until("a completed frame", lambda: daemon.preview.latest("vtest") is not None)
    renderer = daemon.api.renderer
    renders_before = renderer.renders
    started = time.monotonic()
    a, b = asyncio.run(two_viewers(daemon.url + "/api/v1/preview.mjpg", 8))
    elapsed = time.monotonic() - started
    renders = renderer.renders - renders_before
    seen_a, seen_b = digests(a), digests(b)
    assert len(seen_a) == len(seen_b) == 8, "a viewer never gets the same frame twice"
    assert seen_a & seen_b, "both viewers were sent the same rendered frames"
    # every render was for a frame some viewer received, but for the one that may be under
    # way as the viewers leave (the stream learns they left at its next write)
    assert renders <= len(seen_a | seen_b) + 1
    # the cap: per camera and mask setting, renders are at least 1/fps apart
    assert renders <= elapsed * daemon.api.config.preview_fps + 1
    frame = decode(a[-1])
    assert frame.shape == (576, 768, 3)
    wait_until("closed streams to be uncounted", lambda: renderer.viewers == 0)


def test_single_jpeg_and_mask_toggle(daemon: Daemon) -> None:
    wait_until("a completed frame", lambda: daemon.preview.latest("vtest") is not None)
    plain = call(daemon.url + "/api/v1/preview.jpg")
    masked = call(daemon.url + "/api/v1/preview.jpg?mask=1&camera=vtest")
    assert plain.headers["Content-Type"] == "image/jpeg"
    assert decode(plain.body).shape == decode(masked.body).shape == (576, 768, 3)
    assert call(daemon.url + "/api/v1/preview.jpg?camera=nope").status == 404
    assert call(daemon.url + "/api/v1/preview.jpg?mask=maybe").status == 400


def latest_job_with_pose(daemon: Daemon) -> FrameJob:
    def pose_job() -> FrameJob | None:
        latest = daemon.preview.latest("vtest")
        if latest is None:
            return None
        job = latest[1]
        return job if job.results.get("pose") and job.gate.boxes else None

    wait_until("a frame with a pose skeleton", lambda: pose_job() is not None, 60)
    job = pose_job()
    assert job is not None
    return job


def test_annotation_draws_skeletons_boxes_and_the_mask(daemon: Daemon) -> None:
    job = latest_job_with_pose(daemon)
    raw = job.frame.image
    drawn = annotate(job, mask=False, max_width=2000)
    assert drawn.shape == raw.shape and not np.array_equal(drawn, raw)
    assert np.array_equal(job.frame.image, raw), "the frame itself is never drawn on"
    # landmark dots are white discs at the visible landmarks
    pose = next(r for r in job.results["pose"] if isinstance(r, Landmarks))
    visible = [p for p in pose.points if p[3] >= VISIBLE]
    white = [
        drawn[min(round(y), raw.shape[0] - 1), min(round(x), raw.shape[1] - 1)].min() >= 200
        for x, y, _, _ in visible
    ]
    assert visible and sum(white) >= 0.8 * len(white)
    assert len(POSE_CONNECTIONS) == 35 and max(max(c) for c in POSE_CONNECTIONS) == 32
    # the motion mask tints changed pixels red and leaves the rest alone
    masked = annotate(job, mask=True, max_width=2000)
    big = cv2.resize(job.gate.mask, (raw.shape[1], raw.shape[0]), interpolation=cv2.INTER_NEAREST)
    changed = np.any(masked != drawn, axis=2)
    assert changed.any() and not changed[big == 0].any()
    assert (masked[changed][:, 2].astype(int) >= drawn[changed][:, 2]).all()
    # scaled down for narrow previews
    small = annotate(job, mask=True, max_width=384)
    assert small.shape == (288, 384, 3)


def test_annotation_greys_the_cameras_object_masks(daemon: Daemon) -> None:
    job = latest_job_with_pose(daemon)
    # a quadrilateral over the lower left (shares of the frame), as in docs/perception.md
    shape = [(0.05, 0.6), (0.4, 0.65), (0.35, 0.95), (0.1, 0.9)]
    masked = CameraPerception(PerceptionConfig(), 320, job.frame.image.shape, masks=[shape])
    for max_width in (2000, 384):  # full size and a scaled-down preview
        plain = annotate(replace(job, perception=None), mask=False, max_width=max_width)
        drawn = annotate(replace(job, perception=masked), mask=False, max_width=max_width)
        h, w = drawn.shape[:2]
        poly = np.array([(x * w, y * h) for x, y in shape], np.float32)
        changed = np.any(drawn != plain, axis=2)
        area = np.zeros((h, w), np.uint8)
        cv2.fillPoly(area, [np.round(poly).astype(np.int32)], 1)
        near = cv2.dilate(area, np.ones((5, 5), np.uint8))  # the outline's 2 px
        assert not changed[near == 0].any(), "nothing outside the polygon is drawn on"
        assert changed[area > 0].mean() > 0.8, "the masked area is greyed"
        grey = np.abs(drawn[area > 0].astype(int) - 128).mean()
        assert grey < np.abs(plain[area > 0].astype(int) - 128).mean()


def test_a_tracked_person_between_detections_keeps_a_box(daemon: Daemon) -> None:
    job = latest_job_with_pose(daemon)
    box = [300.0, 150.0, 380.0, 330.0]
    carried = {
        "track_id": 7,
        "box": box,
        "score": 0.9,
        "duration_s": 1.0,
        "since_detected_s": 0.2,
        "confirmed": True,
        "trail": [[330.0, 300.0], [340.0, 330.0]],
    }
    bare = replace(job, results={}, objects=[], perception=None)
    plain = annotate(bare, mask=False, max_width=2000)
    drawn = annotate(replace(bare, objects=[carried]), mask=False, max_width=2000)
    detected = annotate(
        replace(bare, objects=[carried | {"since_detected_s": 0.0}]), mask=False, max_width=2000
    )
    x1, y1, x2, y2 = (round(v) for v in box)
    edge = np.zeros(plain.shape[:2], bool)
    edge[y1, x1 : x2 + 1] = edge[y1 : y2 + 1, x1] = True  # top and left, clear of the trail
    assert np.any(drawn != plain, axis=2)[edge].mean() > 0.9, "a carried track is boxed"
    # detected on the frame: its detection's box is drawn by the model; the track adds none
    assert not np.any(detected != plain, axis=2)[edge].any()


async def render_twice(
    renderer: PreviewRenderer, sink: PreviewSink, good: FrameJob
) -> tuple[Rendered | None, Rendered | None]:
    sink(good)
    first = await renderer.frame("vtest", False)
    nan = float("nan")
    sink(replace(good, results={"person": [Detection("person", 0.9, (nan, 0.0, 9.0, 9.0))]}))
    await asyncio.sleep(2 * renderer.interval)
    second = await renderer.frame("vtest", False)
    return first, second


def test_a_frame_that_cannot_be_drawn_is_skipped(daemon: Daemon) -> None:
    wait_until("a completed frame", lambda: daemon.preview.latest("vtest") is not None)
    latest = daemon.preview.latest("vtest")
    assert latest is not None
    sink = PreviewSink()
    with ThreadPoolExecutor(1, thread_name_prefix="test-render") as executor:
        renderer = PreviewRenderer(sink, executor, fps=50, quality=70, max_width=960, max_viewers=8)
        first, second = asyncio.run(render_twice(renderer, sink, latest[1]))
    assert first is not None and second is first, "the last good frame stays on screen"
    assert renderer.renders == 1


def stalled_viewer(url: str) -> socket.socket:
    """A client that asks for the MJPEG stream and never reads a byte of it."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname or "", parts.port or 80))
    sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return sock


def test_streams_past_the_bound_are_refused_and_a_viewer_that_stops_reading_goes(
    daemon: Daemon,
) -> None:
    """300 clients that asked for the stream and never read held 300 connections and
    ~240 KB each, for good (a web page can open them with <img> tags, no token needed)."""
    renderer = daemon.api.renderer
    url = daemon.url + "/api/v1/preview.mjpg"
    wait_until("no viewers", lambda: renderer.viewers == 0)
    stalled = [stalled_viewer(url) for _ in range(renderer.max_viewers)]
    try:
        wait_until("the stalled viewers counted", lambda: renderer.viewers == len(stalled))
        refused = call(url)
        assert refused.status == 503 and refused.json()["error"] == "busy"
        assert "api.preview_max_viewers" in refused.json()["reason"]
        wait_until("the stalled viewers let go of", lambda: renderer.viewers == 0, 120)
        assert asyncio.run(watch(url, 1)), "a viewer that reads is served again"
    finally:
        for sock in stalled:
            sock.close()
