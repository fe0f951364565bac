"""``edged profile``: latency, throughput, peak memory and size of each model image on each
driver, and how closely INT8 variants follow their fp32 image.

Each model x driver pair runs in its own child process (``python -m edged.profiler``)
so that its peak RSS is its own; the child prints one JSON object. An image's INT8
variant (``<name>_int8`` next to it, see edgefed.images.quantize) is profiled right after
it, with its agreement with fp32 on inputs the calibration never saw: ``top1_agreement``
for a classifier, ``box_iou`` (mean best IoU of each fp32 box) for detectors and
``landmark_error_px`` (mean keypoint distance) for landmark models, each on held-out
frames of the sample video and, with the suffix ``_stills``, on crops of the held-out
sample stills (real photos of objects ImageNet knows and pages of text). For a classifier
``top1_stable_share`` is the share of frames whose fp32 top-1 stays the same with one grey
level of noise added, and ``top1_agreement_stable`` the agreement on those frames only: a
street scene holds no object that fills the frame, so its top-1 is often a near-tie.
An INT8 classifier is timed and compared as edged serves it (``recheck_ties``): inputs where
its top two classes tie go to the fp32 image too (``edgefed.models.recheck``; peak RSS
includes that model), and ``fp32_recheck_share`` says how often.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
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
from edgefed.models.types import Box, Classification, Landmarks, Result

SAMPLE_STILL = quantize.SAMPLE_DIR / "basketball1.png"
STILL_CROP = 0.8  # side of a corner crop of a held-out still, as a share of the still's
NOISE_SEED = 0


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
        runner = open_runner(
            image_dir.name, image_dir, driver, None, list(trust), allow_unsigned, True
        )
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


def _compare(
    ref: Sequence[Result], got: Sequence[Result], sums: dict[str, list[float]], suffix: str
) -> None:
    """Add one input's agreement figures of ``got`` (int8) with ``ref`` (fp32) to ``sums``,
    under each figure's name plus ``suffix``."""
    got_boxes = np.array([r.box for r in got if r.box is not None], dtype=np.float64)
    for r in ref:
        if isinstance(r, Classification):
            same = [g for g in got if isinstance(g, Classification) and g.box == r.box]
            sums[f"top1_agreement{suffix}"].append(float(bool(same) and _top1(same[0], r)))
        elif isinstance(r, Landmarks):
            marks = [g for g in got if isinstance(g, Landmarks) and g.box == r.box]
            if marks:
                a = np.array([p[:2] for p in r.points])
                b = np.array([p[:2] for p in marks[0].points])
                sums[f"landmark_error_px{suffix}"].append(
                    float(np.linalg.norm(a - b, axis=1).mean())
                )
        else:
            best = iou(np.array(r.box), got_boxes).max() if len(got_boxes) else 0.0
            sums[f"box_iou{suffix}"].append(float(best))


def _top1(a: Classification, b: Classification) -> bool:
    return bool(a.top and b.top and a.top[0][0] == b.top[0][0])


def _top1_label(results: Sequence[Result]) -> str | None:
    tops = [r.top[0][0] for r in results if isinstance(r, Classification) and r.top]
    return tops[0] if tops else None


def one_grey_level(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``frame`` with every pixel value moved up or down by one, at random."""
    step = rng.choice(np.array([-1, 1], dtype=np.int16), frame.shape)
    return np.clip(frame.astype(np.int16) + step, 0, 255).astype(np.uint8)


def still_crops(image: np.ndarray) -> list[tuple[np.ndarray, Box | None]]:
    """The still and its mirror image, each whole, its centre 80% and its four 80% corners."""
    h, w = image.shape[:2]
    c = STILL_CROP
    regions: list[Box | None] = [None, (w * 0.1, h * 0.1, w * 0.9, h * 0.9)]
    regions += [
        (x, y, x + w * c, y + h * c) for x in (0.0, w * (1 - c)) for y in (0.0, h * (1 - c))
    ]
    mirror = np.ascontiguousarray(image[:, ::-1])
    return [(picture, region) for picture in (image, mirror) for region in regions]


def agreement(
    fp32_dir: Path,
    int8_dir: Path,
    driver_type: str,
    frames: int,
    trust: Sequence[Path],
    allow_unsigned: bool = False,
    stills: Sequence[str] | None = None,
    recheck_ties: bool = True,
) -> dict[str, float]:
    """Agreement of an INT8 variant with its fp32 image, both run on ``driver_type``: on
    ``frames`` held-out frames (each whole and its centre half) and on :func:`still_crops`
    of ``stills`` (by default the held-out photos, or pages of text for a text model).
    The variant runs as edged serves it: with ``recheck_ties`` an INT8 classifier's tied
    inputs go to fp32 (``edgefed.models.recheck``), and ``fp32_recheck_share`` (with
    ``_stills``) says on how many."""
    from edgefed.models.recheck import TieRecheck
    from edgefed.models.runner import open_runner

    manifest = read_manifest(fp32_dir)
    if stills is None:
        text = manifest.task.startswith("text_")
        stills = list(quantize.HELDOUT_TEXT if text else quantize.HELDOUT_PHOTOS)
    pictures = quantize.heldout_stills(stills)
    driver = registry.create(registry.parse_config({"type": driver_type}))
    runners = [
        open_runner(d.name, d, driver, None, list(trust), allow_unsigned, recheck_ties)
        for d in (fp32_dir, int8_dir)
    ]
    recheck = runners[1].model if isinstance(runners[1].model, TieRecheck) else None
    inputs: list[tuple[str, np.ndarray, Box | None]] = []
    for frame in quantize.heldout_frames(frames):
        h, w = frame.shape[:2]
        inputs += [("", frame, None), ("", frame, (w / 4, h / 4, w * 3 / 4, h * 3 / 4))]
    for image in pictures.values():
        inputs += [("_stills", picture, region) for picture, region in still_crops(image)]
    rng = np.random.default_rng(NOISE_SEED)
    sums: dict[str, list[float]] = defaultdict(list)
    try:
        for suffix, picture, region in inputs:
            before = recheck.rechecks if recheck is not None else 0
            ref, got = (r.infer(picture, [region]) for r in runners)
            _compare(ref, got, sums, suffix)
            if recheck is not None:
                sums[f"fp32_recheck_share{suffix}"].append(float(recheck.rechecks - before))
            if manifest.task == "classification":
                noisy = runners[0].infer(one_grey_level(picture, rng), [region])
                stable = _top1_label(ref) == _top1_label(noisy)
                sums[f"top1_stable_share{suffix}"].append(float(stable))
                if stable:
                    same = _top1_label(ref) == _top1_label(got)
                    sums[f"top1_agreement_stable{suffix}"].append(float(same))
    finally:
        for runner in runners:
            runner.close()
        driver.close()
    return {k: round(statistics.fmean(v), 4) for k, v in sorted(sums.items()) if v}


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


AGREEMENT_KEYS = {
    "top1_agreement_stills": "top1 stills",
    "top1_stable_share_stills": "stable",
    "top1_agreement_stable_stills": "top1 stable",
    "top1_agreement": "top1",
    "top1_stable_share": "stable",
    "top1_agreement_stable": "top1 stable",
    "fp32_recheck_share_stills": "fp32 rechecks stills",
    "fp32_recheck_share": "fp32 rechecks",
    "box_iou_stills": "box IoU stills",
    "box_iou": "box IoU",
    "landmark_error_px_stills": "px err stills",
    "landmark_error_px": "px err",
}


def _agreement_cell(row: dict[str, Any]) -> str:
    figures = row.get("agreement")
    if not figures:
        return ""
    if "error" in figures:
        return f"failed: {figures['error']}"
    return " ".join(f"{label} {figures[k]}" for k, label in AGREEMENT_KEYS.items() if k in figures)


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
