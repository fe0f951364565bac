"""``edged profile``: latency, throughput, peak memory and size of each model image on each
driver, and how closely INT8 variants follow their fp32 image.

Each model x driver pair runs in its own child process (``python -m edged.profiler``)
so that its peak RSS is its own; the child prints one JSON object. An image's INT8
variant (``<name>_int8`` next to it, see edgefed.images.quantize) is profiled right after
it, with its agreement with fp32 on held-out frames of the sample video: ``top1_agreement``
for a classifier, ``box_iou`` (mean best IoU of each fp32 box) for detectors and
``landmark_error_px`` (mean keypoint distance) for landmark models.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
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
from edgefed.images import quantize
from edgefed.images.verify import read_manifest
from edgefed.models.decoders.nms import iou
from edgefed.models.types import Classification, Landmarks, Result

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


def model_size_mb(image_dir: Path) -> float:
    return round((image_dir / read_manifest(image_dir).model_file).stat().st_size / 2**20, 2)


def _compare(ref: Sequence[Result], got: Sequence[Result], sums: dict[str, list[float]]) -> None:
    """Add one frame's agreement figures of ``got`` (int8) with ``ref`` (fp32) to ``sums``."""
    got_boxes = np.array([r.box for r in got if r.box is not None], dtype=np.float64)
    for r in ref:
        if isinstance(r, Classification):
            same = [g for g in got if isinstance(g, Classification) and g.box == r.box]
            sums["top1_agreement"].append(float(bool(same) and _top1(same[0], r)))
        elif isinstance(r, Landmarks):
            marks = [g for g in got if isinstance(g, Landmarks) and g.box == r.box]
            if marks:
                a = np.array([p[:2] for p in r.points])
                b = np.array([p[:2] for p in marks[0].points])
                sums["landmark_error_px"].append(float(np.linalg.norm(a - b, axis=1).mean()))
        else:
            best = iou(np.array(r.box), got_boxes).max() if len(got_boxes) else 0.0
            sums["box_iou"].append(float(best))


def _top1(a: Classification, b: Classification) -> bool:
    return bool(a.top and b.top and a.top[0][0] == b.top[0][0])


def agreement(
    fp32_dir: Path,
    int8_dir: Path,
    driver_type: str,
    frames: int,
    trust: Sequence[Path],
    allow_unsigned: bool = False,
) -> dict[str, float]:
    """Agreement of an INT8 variant with its fp32 image on ``frames`` held-out frames (each
    whole and its centre half), both run on ``driver_type``."""
    from edgefed.models.runner import open_runner

    driver = registry.create(registry.parse_config({"type": driver_type}))
    runners = [
        open_runner(d.name, d, driver, None, list(trust), allow_unsigned)
        for d in (fp32_dir, int8_dir)
    ]
    sums: dict[str, list[float]] = {
        "top1_agreement": [],
        "box_iou": [],
        "landmark_error_px": [],
    }
    try:
        for frame in quantize.heldout_frames(frames):
            h, w = frame.shape[:2]
            regions = [None, (w / 4, h / 4, w * 3 / 4, h * 3 / 4)]
            for region in regions:
                ref, got = (r.infer(frame, [region]) for r in runners)
                _compare(ref, got, sums)
    finally:
        for runner in runners:
            runner.close()
        driver.close()
    return {k: round(statistics.fmean(v), 4) for k, v in sums.items() if v}


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


def with_variants(images: Sequence[Path]) -> list[Path]:
    """``images`` with each one's INT8 variant (when built) right after it."""
    out: list[Path] = []
    for image in images:
        variant = image.with_name(quantize.variant_name(image.name))
        for path in (image, variant) if variant.is_dir() else (image,):
            if path not in out:
                out.append(path)
    return out


def profile_images(
    images: Sequence[Path],
    trust: Sequence[Path],
    iterations: int,
    allow_unsigned: bool,
    agreement_frames: int = 50,
) -> list[dict[str, Any]]:
    rows = []
    for image in with_variants(images):
        fp32 = quantize.fp32_sibling(image)
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
                continue
            rows[-1]["size_mb"] = model_size_mb(image)
            if fp32 is not None and rows[-1]["ok"]:
                try:
                    rows[-1]["agreement"] = agreement(
                        fp32, image, driver, agreement_frames, trust, allow_unsigned
                    )
                except EdgeFedError as exc:
                    rows[-1]["agreement"] = {"error": str(exc)}
    return rows


AGREEMENT_KEYS = {"top1_agreement": "top1", "box_iou": "box IoU", "landmark_error_px": "px err"}


def _agreement_cell(row: dict[str, Any]) -> str:
    figures = row.get("agreement")
    if not figures:
        return ""
    if "error" in figures:
        return f"failed: {figures['error']}"
    return " ".join(f"{AGREEMENT_KEYS[k]} {v}" for k, v in figures.items())


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        f"{'image':<24} {'driver':<12} {'p50 ms':>8} {'p99 ms':>8} {'inf/s':>8} "
        f"{'peak MB':>8} {'size MB':>8}  vs fp32"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("ok"):
            lines.append(
                f"{r['image']:<24} {r['driver']:<12} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                f"{r['throughput_per_s']:>8} {r['peak_rss_mb']:>8} {r['size_mb']:>8}  "
                f"{_agreement_cell(r)}".rstrip()
            )
        else:
            lines.append(f"{r['image']:<24} {r['driver']:<12} failed: {r.get('error')}")
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
