"""``python -m bench preview``: pipeline throughput with and without live-preview viewers.

edged runs the demo models on vtest.avi at capacity (``pace: fast``, lossless queues,
looping), with the HTTP API on a free loopback port. Phases alternate without viewers
and with ``--viewers`` MJPEG clients reading ``/api/v1/preview.mjpg`` (A B B A ...), so
slow drifts of the machine hit both sides alike; each side reports its median phase
(``fps_without``, ``fps_with_viewers``, ``drop_pct``). Target: under 10% drop.

Frames/s on a machine shared with other work move by tens of percent from phase to
phase, so the run also measures what the preview itself costs, which other processes
do not change: the CPU time of the API's threads (event loop and renderer) and of the
viewers' thread (they run in this process, a conservative stand-in for remote
browsers), per completed frame, against the CPU time the rest of edged spends per
frame. ``capacity_drop_pct`` is the share of a CPU-bound pipeline's time the preview
takes: the drop to expect on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

from edged.api.config import ApiConfig
from edged.api.mjpeg import read_parts
from edged.api.preview import PreviewSink
from edged.api.server import ApiServer
from edged.api.sources import ApiSources
from edged.app import EdgedApp
from edged.config import EdgedConfig, parse_config

REPO = Path(__file__).resolve().parents[1]
VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def bench_config() -> EdgedConfig:
    raw: dict[str, Any] = yaml.safe_load((REPO / "packaging/dev/demo-edged.yaml").read_text())
    raw["cameras"][0] |= {"source": VTEST, "pace": "fast", "loop": True}
    raw["pipeline"] = {"lossless": True}
    raw["output"] = {"results": None, "summary_interval_s": 3600}
    raw["images"] = {
        "dir": str(REPO / "firmware-images/build"),
        "trusted_keys": [str(REPO / "firmware-images/build/keys/dev-signing.pub")],
    }
    raw["log_level"] = "WARNING"
    return parse_config(raw, env={})


class Viewers:
    """``n`` MJPEG clients on their own event loop in a named thread, counting frames."""

    def __init__(self, url: str, n: int) -> None:
        self._url, self._n = url, n
        self.frames = 0
        self.cpu_s = 0.0  # CPU time of the viewers' thread
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="bench-viewers")

    def __enter__(self) -> Viewers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._loop.close()

    def _run(self) -> None:
        start = time.thread_time()
        self._loop.run_until_complete(self._main())
        self.cpu_s = time.thread_time() - start

    async def _main(self) -> None:
        async with aiohttp.ClientSession() as session:
            watchers = [
                asyncio.create_task(self._watch(session), name=f"viewer-{i}")
                for i in range(self._n)
            ]
            await self._stop.wait()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        async with session.get(self._url) as resp:
            async for _ in read_parts(resp):
                self.frames += 1


def thread_cpu(prefix: str) -> float:
    """CPU seconds so far of this process's threads whose names start with ``prefix``."""
    ids = {t.native_id for t in threading.enumerate() if t.name.startswith(prefix)}
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids)


@dataclass
class Phase:
    fps: float  # completed frames per wall-clock second
    frames: int
    cpu_s: float  # this process's CPU time during the phase


def measure(app: EdgedApp, seconds: float) -> Phase:
    proc = psutil.Process()
    n0, t0, c0 = app.pipeline.completed.total, time.perf_counter(), sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    frames = app.pipeline.completed.total - n0
    cpu = sum(proc.cpu_times()[:2]) - c0
    return Phase(frames / (time.perf_counter() - t0), frames, cpu)


def main(argv: list[str]) -> int | None:
    parser = argparse.ArgumentParser(prog="python -m bench preview", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=6, help="A/B rounds (without, with)")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring")
    parser.add_argument("--viewers", type=int, default=2, help="MJPEG clients in 'with' phases")
    parser.add_argument("--preview-fps", type=float, default=ApiConfig().preview_fps)
    args = parser.parse_args(argv)

    config = bench_config()
    preview = PreviewSink()
    app = EdgedApp(config, extra_sinks=(preview,))
    api_config = ApiConfig(port=0, preview_fps=args.preview_fps)
    sources = ApiSources(app.pipeline, app.events, preview, config.device_id)
    api = ApiServer(api_config, sources, env={})
    app.add_service(api)
    without: list[Phase] = []
    with_viewers: list[Phase] = []
    received = 0
    preview_cpu = 0.0
    try:
        app.start()
        time.sleep(args.warmup)
        renders_before = api.renderer.renders
        for i in range(2 * args.rounds):
            if i % 4 in (0, 3):  # A B B A: neither side always comes first
                without.append(measure(app, args.seconds))
                continue
            with Viewers(api.url + "/api/v1/preview.mjpg", args.viewers) as viewers:
                api_before = thread_cpu("api")
                with_viewers.append(measure(app, args.seconds))
                preview_cpu += thread_cpu("api") - api_before
            preview_cpu += viewers.cpu_s
            received += viewers.frames
        renders = api.renderer.renders - renders_before
    finally:
        app.stop()
    fps_without = statistics.median(p.fps for p in without)
    fps_with = statistics.median(p.fps for p in with_viewers)
    with_frames = sum(p.frames for p in with_viewers)
    preview_ms = 1000.0 * preview_cpu / with_frames
    pipeline_ms = 1000.0 * sum(p.cpu_s for p in without) / sum(p.frames for p in without)
    result = {
        "fps_without": round(fps_without, 2),
        "fps_with_viewers": round(fps_with, 2),
        "drop_pct": round(100.0 * (fps_without - fps_with) / fps_without, 2),
        "target_drop_pct": 10.0,
        "capacity_drop_pct": round(100.0 * preview_ms / (pipeline_ms + preview_ms), 2),
        "preview_cpu_ms_per_frame": round(preview_ms, 2),
        "pipeline_cpu_ms_per_frame": round(pipeline_ms, 1),
        "viewers": args.viewers,
        "preview_fps_cap": args.preview_fps,
        "frames_per_viewer_s": round(received / (args.seconds * args.rounds * args.viewers), 2),
        "renders": renders,
        "frames_sent": received,
        "phases_without": [round(p.fps, 2) for p in without],
        "phases_with": [round(p.fps, 2) for p in with_viewers],
    }
    print(json.dumps(result))
    return 0
