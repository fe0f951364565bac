"""``python -m bench drivers``: the drivers on the same model images and frames.

Every ONNX demo image (the ImageNet classifier, the text detector) is loaded on
onnxruntime and OpenVINO in this process and on both inside a side-car; each frame of
vtest.avi, resized to 640x480, is pre-processed once by the image's own pre-processing
and run on every driver.

Prints one JSON line:

- ``drivers``: the drivers measured (``sidecar:<hosted>`` for a side-car);
- ``sidecar_added_ms_per_frame``: median of what the side-car adds to one run of
  onnxruntime on the classifier: the round trip seen here minus the run time the host
  measured around the runtime call (input and output copies, channel, wake-ups); per
  model in ``sidecar_added_ms_by_model``. ``sidecar_p50_delta_ms`` is the plain difference
  of the median run times, which on a loaded host also carries scheduling noise;
- ``max_abs_diff``: the largest output difference of each driver pair over every model,
  output and frame (``a~b``);
- ``p50_ms``: median run time per model and driver;
- ``int8_speedup``: per model, the fp32 median run time on onnxruntime over that of its
  INT8 variant (made here in a temporary directory, calibrated on ``--calibration-frames``
  even frames of vtest.avi and the sample stills beside it, see edgefed.images.quantize),
  as edged serves it: a classifier's tied outputs answered by fp32
  (edgefed.models.recheck); ``int8_speedup_int8_only`` the INT8 model alone;
- ``int8_agreement``: per model, the served INT8 variant's agreement with fp32 (see
  edged.profiler; for a classifier each ``top1_agreement...`` figure also as
  ``..._int8_only``, and ``fp32_recheck_share`` the share of inputs that went to fp32).
  For the classifier: ``top1_agreement_stills`` on crops of the held-out photos, the
  contract figure (target >= 0.98); ``top1_agreement`` on ``--agreement-frames``
  odd (held-out) frames of vtest.avi, whole and centre half; ``top1_stable_share`` the
  share of those whose fp32 top-1 survives one grey level of noise and
  ``top1_agreement_stable`` the agreement on them (the same two with ``_stills`` for the
  photos). For the text detector: ``box_iou_stills`` on held-out pages of text and
  ``box_iou`` on the frames.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivers import registry
from drivers.sidecar.driver import SidecarDriver
from edged.profiler import agreement
from edgefed.driver import Driver, LoadedModel
from edgefed.images import quantize, signing
from edgefed.images.verify import read_manifest
from edgefed.models.preprocess import Preprocessor
from edgefed.models.recheck import TieRecheck

REPO = Path(__file__).resolve().parents[1]
VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
IMAGES = ("efficientnet_lite0", "text_detector")
REFERENCE = "onnxruntime"  # the in-process driver the side-car is compared with


def frames_640x480(count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(VTEST)
    out: list[np.ndarray] = []
    while len(out) < count:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(cv2.resize(frame, (640, 480), interpolation=cv2.INTER_AREA))
    cap.release()
    return out


def make_drivers() -> dict[str, Driver[Any]]:
    made: dict[str, Driver[Any]] = {}
    for hosted in ("onnxruntime", "openvino"):
        made[hosted] = registry.create(registry.parse_config({"type": hosted}))
        # a benchmark measures, it does not test the watchdog: a loaded host may be slow
        sidecar = {"type": "sidecar", "driver": {"type": hosted}, "call_timeout_ms": 60_000}
        made[f"sidecar:{hosted}"] = registry.create(registry.parse_config(sidecar))
    return made


def measure(
    image_dir: Path, drivers: dict[str, Driver[Any]], frames: list[np.ndarray], block: int
) -> tuple[dict[str, list[float]], dict[str, float], list[float]]:
    """Run times per driver (ms, one per frame), the max output difference per pair and
    what the side-car added to each of its runs (ms).

    Outputs are compared frame by frame; times are taken in blocks of ``block`` frames per
    driver in turn (each model's weights are then warm in the cache, as in a daemon that
    runs one model many times, and drift of a shared host hits every driver alike).
    """
    manifest = read_manifest(image_dir)
    preprocess = Preprocessor(manifest.input)
    models: dict[str, LoadedModel] = {
        name: d.load(image_dir / manifest.model_file) for name, d in drivers.items()
    }
    feeds = [{manifest.input.name: preprocess(frame)[0]} for frame in frames]
    diffs = {f"{a}~{b}": 0.0 for a, b in combinations(models, 2)}
    for feed in feeds:
        outputs = {name: model.run(feed) for name, model in models.items()}
        for a, b in combinations(models, 2):
            worst = max(float(np.abs(outputs[a][k] - outputs[b][k]).max()) for k in outputs[a])
            diffs[f"{a}~{b}"] = max(diffs[f"{a}~{b}"], worst)
    times: dict[str, list[float]] = {name: [] for name in models}
    added: list[float] = []
    reference = drivers[f"sidecar:{REFERENCE}"]
    assert isinstance(reference, SidecarDriver)
    for first in range(0, len(feeds), block):
        for name, model in models.items():
            model.run(feeds[first])  # warm this model up again after the others ran
            for feed in feeds[first : first + block]:
                start = time.perf_counter()
                model.run(feed)
                times[name].append((time.perf_counter() - start) * 1000)
                if name == f"sidecar:{REFERENCE}":
                    added.append(reference.last_overhead_ms)
    for model in models.values():
        model.close()
    return times, diffs, added


def make_variant(
    image_dir: Path, tmp: Path, calibration: int, recipe: quantize.Recipe
) -> tuple[Path, Path, list[Path]]:
    """A copy of ``image_dir`` in ``tmp``, its INT8 variant, and the keys both verify with."""
    trust = image_dir.parent / "keys" / "dev-signing.pub"
    src = tmp / image_dir.name
    shutil.copytree(image_dir, src)
    key = signing.generate_key_pair(tmp / "int8.key", tmp / "int8.pub")
    variant, _ = quantize.quantize_image(
        src, key, [signing.load_public_key(trust)], frames=calibration, recipe=recipe
    )
    return src, variant, [trust, tmp / "int8.pub"]


def int8_figures(
    image_dir: Path,
    frames: list[np.ndarray],
    calibration: int,
    heldout: int,
    recipe: quantize.Recipe = quantize.DEFAULT_RECIPE,
) -> tuple[float, float, dict[str, float]]:
    """The INT8 speed-up on onnxruntime as edged serves the variant (a classifier's ties
    rechecked in fp32) and of the INT8 model alone, and the agreement with fp32 of one
    image (a classifier's also without the recheck, as ``..._int8_only``)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, variant, trust = make_variant(image_dir, Path(tmp), calibration, recipe)
        recheck = read_manifest(src).task == "classification"
        driver = registry.create(registry.parse_config({"type": REFERENCE}))
        try:
            fp32_ms, *int8_ms = alternate_times([src, variant], driver, frames, recheck)
        finally:
            driver.close()
        figures = agreement(src, variant, REFERENCE, heldout, trust)
        if recheck:
            alone = agreement(src, variant, REFERENCE, heldout, trust, recheck_ties=False)
            figures |= {
                f"{k}_int8_only": v for k, v in alone.items() if k.startswith("top1_agreement")
            }
    alone_speedup, served_speedup = (
        round(statistics.median(fp32_ms) / statistics.median(t), 2)
        for t in (int8_ms[0], int8_ms[-1])
    )
    return served_speedup, alone_speedup, figures


def alternate_times(
    image_dirs: list[Path], driver: Driver[Any], frames: list[np.ndarray], recheck: bool = False
) -> list[list[float]]:
    """Run times (ms) of each image's model on ``driver``, taking turns frame by frame so
    that a shared host's drift hits all alike. ``recheck``: the second image is an INT8
    classifier, timed also as edged serves it (its ties rechecked on the first's model)."""
    manifest = read_manifest(image_dirs[0])
    preprocess = Preprocessor(manifest.input)
    feeds = [{manifest.input.name: preprocess(frame)[0]} for frame in frames]
    loaded = [driver.load(d / manifest.model_file) for d in image_dirs]
    models = [*loaded, TieRecheck(loaded[1], loaded[0])] if recheck else loaded
    times: list[list[float]] = [[] for _ in models]
    try:
        for model in models:
            model.run(feeds[0])
        for feed in feeds:
            for model, out in zip(models, times, strict=True):
                start = time.perf_counter()
                model.run(feed)
                out.append((time.perf_counter() - start) * 1000)
    finally:
        for model in loaded:
            model.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per model")
    parser.add_argument("--block", type=int, default=20, help="frames per driver in turn")
    parser.add_argument(
        "--calibration-frames",
        type=int,
        default=quantize.DEFAULT_CALIBRATION_FRAMES,
        help="frames the INT8 variants are calibrated on",
    )
    parser.add_argument(
        "--agreement-frames", type=int, default=100, help="held-out frames for int8_agreement"
    )
    args = parser.parse_args(argv)
    frames = frames_640x480(args.frames)
    drivers = make_drivers()
    images = REPO / "firmware-images" / "build"
    added: dict[str, float] = {}
    delta: dict[str, float] = {}
    p50: dict[str, dict[str, float]] = {}
    max_diff: dict[str, float] = {}
    try:
        for image in IMAGES:
            times, diffs, overheads = measure(images / image, drivers, frames, args.block)
            p50[image] = {name: round(statistics.median(t), 3) for name, t in times.items()}
            added[image] = round(statistics.median(overheads), 3)
            delta[image] = round(p50[image][f"sidecar:{REFERENCE}"] - p50[image][REFERENCE], 3)
            for pair, diff in diffs.items():
                max_diff[pair] = max(max_diff.get(pair, 0.0), diff)
    finally:
        for driver in drivers.values():
            driver.close()
    speedup: dict[str, float] = {}
    alone: dict[str, float] = {}
    agree: dict[str, dict[str, float]] = {}
    for image in IMAGES:
        speedup[image], alone[image], agree[image] = int8_figures(
            images / image, frames, args.calibration_frames, args.agreement_frames
        )
    print(
        json.dumps(
            {
                "drivers": list(drivers),
                "frames": len(frames),
                "sidecar_added_ms_per_frame": added[IMAGES[0]],
                "sidecar_added_ms_by_model": added,
                "sidecar_p50_delta_ms": delta,
                "max_abs_diff": {k: float(f"{v:.3g}") for k, v in max_diff.items()},
                "p50_ms": p50,
                "int8_speedup": speedup,
                "int8_speedup_int8_only": alone,
                "int8_agreement": agree,
            }
        )
    )
    return 0
