"""``edged profile``: latency, throughput and peak memory of each model image on each driver.

Each model x driver pair runs in its own child process (``python -m edged.profiler``)
so that its peak RSS is its own; the child prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivers import registry
from edgefed.errors import EdgeFedError
from edgefed.images.verify import read_manifest

SAMPLE_STILL = Path("/usr/share/doc/opencv-doc/examples/data/basketball1.png")


def _sample_frame() -> np.ndarray:
    image = cv2.imread(str(SAMPLE_STILL)) if SAMPLE_STILL.exists() else None
    if image is None:  # any real-looking input works for timing; fall back to noise
        image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return image


def profile_one(
    image_dir: Path, driver_type: str, trust: Sequence[Path], iterations: int, allow_unsigned: bool
) -> dict[str, Any]:
    """Load one image on one driver and time ``iterations`` whole-frame inferences."""
    from edgefed.models.runner import open_runner

    row: dict[str, Any] = {"image": image_dir.name, "driver": driver_type}
    try:
        driver = registry.create(registry.parse_config({"type": driver_type}))
        t0 = time.perf_counter()
        runner = open_runner(image_dir.name, image_dir, driver, None, list(trust), allow_unsigned)
        row["load_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        frame = _sample_frame()
        for _ in range(3):
            runner.infer(frame, [None])
        times = []
        start = time.perf_counter()
        for _ in range(iterations):
            t = time.perf_counter()
            runner.infer(frame, [None])
            times.append((time.perf_counter() - t) * 1000)
        total = time.perf_counter() - start
        p50, p99 = np.percentile(times, [50, 99])
        row |= {
            "ok": True,
            "p50_ms": round(float(p50), 2),
            "p99_ms": round(float(p99), 2),
            "throughput_per_s": round(iterations / total, 1),
        }
        runner.close()
    except EdgeFedError as exc:
        row |= {"ok": False, "error": str(exc)}
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def candidate_drivers(image_dir: Path) -> list[str]:
    """Drivers that can load the image's model file (by file suffix), importable here."""
    suffix = Path(read_manifest(image_dir).model_file).suffix
    out = []
    for name in registry.available():
        try:
            cls = registry.driver_class(name)
            registry.parse_config({"type": name})  # one that needs settings (a URL) is left out
        except EdgeFedError:
            continue
        if suffix in cls.file_suffixes and name != "fake-npu":
            out.append(name)
    return out


def profile_images(
    images: Sequence[Path], trust: Sequence[Path], iterations: int, allow_unsigned: bool
) -> list[dict[str, Any]]:
    rows = []
    for image in images:
        for driver in candidate_drivers(image):
            cmd = [sys.executable, "-m", "edged.profiler", str(image), driver, str(iterations)]
            cmd += [f"--trust={t}" for t in trust]
            if allow_unsigned:
                cmd.append("--allow-unsigned")
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            try:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            except (json.JSONDecodeError, IndexError):
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"image": image.name, "driver": driver, "ok": False, "error": err})
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'image':<20} {'driver':<12} {'p50 ms':>8} {'p99 ms':>8} {'inf/s':>8} {'peak MB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("ok"):
            lines.append(
                f"{r['image']:<20} {r['driver']:<12} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                f"{r['throughput_per_s']:>8} {r['peak_rss_mb']:>8}"
            )
        else:
            lines.append(f"{r['image']:<20} {r['driver']:<12} failed: {r.get('error')}")
    return "\n".join(lines)


def _child_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image", type=Path)
    parser.add_argument("driver")
    parser.add_argument("iterations", type=int)
    parser.add_argument("--trust", type=Path, action="append", default=[])
    parser.add_argument("--allow-unsigned", action="store_true")
    a = parser.parse_args()
    row = profile_one(a.image, a.driver, a.trust, a.iterations, a.allow_unsigned)
    print(json.dumps(row))


if __name__ == "__main__":
    _child_main()
