"""``python -m bench scan``: what serverd's ``regions: scan`` finds that one run does not.

A hard example reaches serverd as a whole frame. On every ``--every``-th frame of
vtest.avi (768x576) the person detector (the demo's ``pose_detector`` image) looks three
ways: the whole frame in one run (``regions: full``), the whole frame plus tiles at its
input size (native resolution only), and the full scan (``edgefed/models/scan.py``: plus
tiles at 1.5x). Prints one JSON object: people found each way (summed over the frames),
runs a frame and milliseconds a frame.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2

from drivers import registry
from edgefed.models.runner import open_runner
from edgefed.models.scan import look, scan_regions, tiles

REPO = Path(__file__).resolve().parents[1]
VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
IMAGES = REPO / "firmware-images/build"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scan", description=__doc__)
    parser.add_argument("--every", type=int, default=50, help="every Nth frame of vtest.avi")
    parser.add_argument("--frames", type=int, default=700, help="of the first N frames")
    args = parser.parse_args(argv)
    driver = registry.create(registry.parse_config({"type": "litert", "num_threads": 1}))
    runner = open_runner(
        "person", IMAGES / "pose_detector", driver, None, [IMAGES / "keys/dev-signing.pub"]
    )
    size = runner.manifest.input.width
    ways: dict[str, Any] = {"full": None, "native_tiles": None, "scan": None}
    found = dict.fromkeys(ways, 0)
    ms = dict.fromkeys(ways, 0.0)
    runs: dict[str, int] = {}
    capture = cv2.VideoCapture(VTEST)
    frames = 0
    try:
        for index in range(args.frames):
            ok, frame = capture.read()
            if not ok:
                break
            if index % args.every:
                continue
            frames += 1
            h, w = frame.shape[:2]
            ways = {
                "full": [None],
                "native_tiles": [None, *tiles(w, h, size)],
                "scan": scan_regions(size, w, h),
            }
            for way, regions in ways.items():
                start = time.perf_counter()
                found[way] += len(look(runner, frame, regions))
                ms[way] += (time.perf_counter() - start) * 1000
                runs[way] = len(regions)
    finally:
        capture.release()
        runner.close()
        driver.close()
    result = {
        "frames": frames,
        "people": found,
        "runs_per_frame": runs,
        "ms_per_frame": {k: round(v / max(frames, 1), 1) for k, v in ms.items()},
    }
    print(json.dumps(result))
    return 0
