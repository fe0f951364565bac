"""``python -m bench int8-kernels``: onnxruntime's exact and fast INT8 kernels on this CPU.

The classifier's INT8 variant (the default recipe, built in a temporary directory) is run
on 640x480 frames of vtest.avi by the onnxruntime driver twice, with ``exact_int8: true``
(session.x64quantprecision: exact U8U8 kernels) and ``false`` (the fast U8S8 kernels),
taking turns frame by frame, and fp32 beside them. Prints one JSON line: the CPU's
``vnni`` flag, what ``exact_int8: auto`` picks here (``auto_exact``), the p50 times, the
speed-up over fp32 of each, and ``max_abs_diff`` between the two INT8 outputs (0 where
the fast kernels are exact, on VNNI; not 0 where they saturate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from bench.drivers import REPO, alternate_times, frames_640x480, make_variant
from drivers import registry
from edgefed.images import quantize
from edgefed.images.mixed_precision import VNNI_FLAGS, host_cpu_flags, host_int8_saturates
from edgefed.images.verify import read_manifest
from edgefed.models.preprocess import Preprocessor

IMAGE = "efficientnet_lite0"


def outputs(image: Path, exact: bool, frames: list[np.ndarray]) -> np.ndarray:
    """The model's first output on every frame, run with ``exact_int8: exact``."""
    driver = registry.create(registry.parse_config({"type": "onnxruntime", "exact_int8": exact}))
    manifest = read_manifest(image)
    preprocess = Preprocessor(manifest.input)
    model = driver.load(image / manifest.model_file)
    try:
        runs = [model.run({manifest.input.name: preprocess(f)[0]}) for f in frames]
        return np.stack([next(iter(r.values())) for r in runs])
    finally:
        model.close()
        driver.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames timed")
    parser.add_argument("--calibration-frames", type=int, default=32)
    args = parser.parse_args(argv)
    frames = frames_640x480(args.frames)
    image = REPO / "firmware-images" / "build" / IMAGE
    with tempfile.TemporaryDirectory() as tmp:
        src, variant, _ = make_variant(
            image, Path(tmp), args.calibration_frames, quantize.DEFAULT_RECIPE
        )
        p50: dict[str, float] = {}
        for exact in (True, False):
            config = registry.parse_config({"type": "onnxruntime", "exact_int8": exact})
            driver = registry.create(config)
            try:
                fp32_ms, int8_ms = alternate_times([src, variant], driver, frames)
            finally:
                driver.close()
            kernels = "exact" if exact else "fast"
            p50[f"fp32_ms_{kernels}_run"] = statistics.median(fp32_ms)
            p50[f"int8_ms_{kernels}"] = statistics.median(int8_ms)
        diff = np.abs(outputs(variant, True, frames) - outputs(variant, False, frames))
    print(
        json.dumps(
            {
                "image": IMAGE,
                "vnni": bool(VNNI_FLAGS & (host_cpu_flags() or set())),
                "auto_exact": host_int8_saturates(),
                **{k: round(v, 2) for k, v in p50.items()},
                "int8_speedup_exact": round(p50["fp32_ms_exact_run"] / p50["int8_ms_exact"], 2),
                "int8_speedup_fast": round(p50["fp32_ms_fast_run"] / p50["int8_ms_fast"], 2),
                "max_abs_diff": float(diff.max()),
            }
        )
    )
    return 0
