"""``python -m bench multimodel``: the concurrent pipeline against a sequential loop.

Both phases use the SAME loaded sessions (the demo models: person detector, pose landmarks
on each person, face detector, scene classifier every 5th frame) on the SAME first N
frames of vtest.avi with the same gate, regions and cascades. The pipeline phase is the
real ``Pipeline`` (capture thread, dispatcher, one worker per model, lossless queues so no
frame is dropped); the sequential phase is a bare loop calling the models one after
another, reading the clip one frame at a time (decoding is not timed). ``peak_rss_mb`` is
this process's peak resident memory over both phases: the loaded demo models, the
pipeline with its queues, gate, pre-roll, planner and tracker, and the bench's own
interpreter and libraries; neither phase holds more than a few frames at once, as edged
does (an earlier version held the sequential phase's 150 frames, ~200 MB, in memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edged.app import load_models
from edged.config import EdgedConfig, ModelConfig, parse_config
from edged.framejob import FrameJob
from edged.motion import ThreeFrameGate
from edged.perception import CameraPerception, lower_threshold
from edged.pipeline import Pipeline, regions_for
from edged.regions import motion_regions
from edgefed.models.runner import ModelRunner, cascade_regions
from edgefed.models.types import Box, Detection

REPO = Path(__file__).resolve().parents[1]
VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def bench_config(frames: int) -> EdgedConfig:
    raw: dict[str, Any] = yaml.safe_load((REPO / "packaging/dev/demo-edged.yaml").read_text())
    raw["cameras"][0] |= {"source": VTEST, "pace": "fast", "loop": False}
    raw["pipeline"] = {"lossless": True}
    raw["output"] = {"results": None, "max_results": frames, "summary_interval_s": 3600}
    raw["images"] = {
        "dir": str(REPO / "firmware-images/build"),
        "trusted_keys": [str(REPO / "firmware-images/build/keys/dev-signing.pub")],
    }
    return parse_config(raw, env={})


def run_pipeline(config: EdgedConfig, runners: dict[str, ModelRunner], frames: int) -> float:
    done = threading.Event()
    count = 0

    def sink(job: FrameJob) -> None:
        nonlocal count
        count += 1
        if count >= frames:
            done.set()

    pipeline = Pipeline(config, runners, sinks=[sink])
    start = time.perf_counter()
    pipeline.start()
    while not done.wait(0.05) and not pipeline.finished():
        pass
    elapsed = time.perf_counter() - start
    pipeline.stop()
    return count / elapsed


def run_sequential(config: EdgedConfig, runners: dict[str, ModelRunner], frames: int) -> float:
    gate = ThreeFrameGate(config.motion)
    roots = [m for m in config.models if m.cascade_on is None]

    perception: CameraPerception | None = None
    planned = next((m for m in roots if m.regions == "planned"), None)

    def run(model: ModelConfig, image: np.ndarray, regions: list[Box | None]) -> None:
        out = runners[model.name].infer(image, regions)
        if model is planned and perception is not None:
            dets = [r for r in out if isinstance(r, Detection)]
            out = list(perception.observe(dets, time.monotonic(), plan, image)[0])
        for child in config.models:
            if child.cascade_on == model.name:
                crops = cascade_regions(out, image.shape)
                if crops:
                    run(child, image, crops)

    cap = cv2.VideoCapture(VTEST)
    processed = gated = 0
    elapsed = 0.0
    # one frame at a time, decoding outside the timed part (the gate needs two frames
    # before its first decision): the loop holds what edged would, not the whole clip
    for _ in range(frames + 2):
        ok, image = cap.read()
        if not ok:
            break
        start = time.perf_counter()
        result = gate.update(image)
        if not result.motion:
            elapsed += time.perf_counter() - start
            continue
        gated += 1
        motion = motion_regions(result.boxes, image.shape)
        plan = None
        if planned is not None:
            if perception is None:
                side = runners[planned.name].manifest.input.width
                decoder = runners[planned.name].decoder
                report = lower_threshold(decoder, config.perception.track_score)
                perception = CameraPerception(config.perception, side, image.shape, report)
            plan = perception.plan(result.boxes, time.monotonic(), image.shape)
        for m in roots:
            if gated % m.every_n == 0:
                run(m, image, regions_for(m, motion, plan))
        processed += 1
        elapsed += time.perf_counter() - start
    cap.release()
    return processed / elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench multimodel")
    parser.add_argument("--frames", type=int, default=150, help="frames per phase")
    args = parser.parse_args(argv)
    config = bench_config(args.frames)
    loaded = load_models(config)
    if loaded.failures:
        raise SystemExit(f"models failed to load: {loaded.failures}")
    loaded_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        run_sequential(config, loaded.runners, 5)  # warm-up: first-run allocations
        pipeline_fps = run_pipeline(config, loaded.runners, args.frames)
        pipeline_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        sequential_fps = run_sequential(config, loaded.runners, args.frames)
    finally:
        loaded.close()
    result = {
        "models": sorted(loaded.runners),
        "frames": args.frames,
        "pipeline_fps": round(pipeline_fps, 2),
        "sequential_fps": round(sequential_fps, 2),
        "ratio": round(pipeline_fps / sequential_fps, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # the peak once the models are loaded, and up to the end of the pipeline phase
        "loaded_peak_rss_mb": round(loaded_peak, 1),
        "pipeline_peak_rss_mb": round(pipeline_peak, 1),
        "targets": {"ratio": ">= 1.3", "peak_rss_mb": "< 500"},
    }
    print(json.dumps(result))
    return 0
