"""``python -m bench int8-recipes``: what each quantisation setting does to the classifier.

The classifier (``efficientnet_lite0``) is quantised once per recipe (see
edgefed.images.quantize.Recipe; ``default`` is what ``edged image build --quantize int8``
does), in a temporary directory, and each variant is timed against fp32 on onnxruntime
and compared with fp32 as ``python -m bench drivers`` does (bench.drivers.int8_figures), the
INT8 model alone (no fp32 recheck of ties: the recipes are compared, not the serving).
The recipes: the stock EfficientNet-Lite one (ReLU6 ranges folded, per-channel symmetric
int8 weights, asymmetric uint8 activations) with and without the sample stills in the
calibration, onnxruntime's options that change it, the layers whose outputs drift
most from fp32 (the stem conv, the head conv and the classifier) kept in fp32, and the
sweep of fp32 islands at the input (``fp32-leading-N``: the first N weighted ops and every
node before them in fp32; the default keeps N = 6 and adds empirical bias correction).

Recipes are chosen on ``top1_agreement_validation``: top-1 agreement on crops of the
calibration stills and of calibration frames (never the held-out photos); the held-out
figures are then read, not tuned on.

Prints one JSON line: ``image``, ``calibration_frames``, ``agreement_frames``,
``recipes``: per recipe ``int8_speedup``, ``int8_size_mb``, ``top1_agreement_validation``
and the agreement figures of edged.profiler, and
``layer_sqnr_db``: the tensors of the default recipe's variant that drift most from fp32
on ``--drift-inputs`` held-out photo crops (signal-to-quantisation-noise ratio in dB of
each intermediate tensor against fp32's, lowest first; onnxruntime's ``qdq_loss_debug``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.drivers import REFERENCE, REPO, alternate_times, frames_640x480, make_variant
from drivers import registry
from edged.profiler import agreement, still_crops
from edgefed.driver import Driver
from edgefed.images import quantize
from edgefed.images.verify import read_manifest
from edgefed.models.preprocess import Preprocessor

IMAGE = "efficientnet_lite0"
STEM = "/_conv_stem/Conv"
HEAD = ("/_conv_head/Conv", "/_avg_pooling/GlobalAveragePool", "/_fc/Gemm")
LEADING = (1, 3, 9, 12, 15, 18)  # fp32_leading_ops of the sweep rows (6 is the default)
BIAS_CORRECTED_LEADING = (3, 9, 12, 15, 18)
RECIPES = {
    "default": quantize.DEFAULT_RECIPE,
    # every layer INT8 (the default before the fp32 island at the input), and variations
    "all-int8": quantize.Recipe(),
    "video-only-calibration": quantize.Recipe(calibrate_on_stills=False),
    "QOperator": quantize.Recipe(quant_format="QOperator"),
    "ActivationSymmetric": quantize.Recipe(activation_symmetric=True),
    "QDQKeepRemovableActivations": quantize.Recipe(keep_removable_activations=True),
    "CalibMovingAverage": quantize.Recipe(moving_average=True),
    "stem-fp32": quantize.Recipe(fp32_nodes=(STEM,)),
    "stem-head-fp32": quantize.Recipe(fp32_nodes=(STEM, *HEAD)),
    # block 0's depthwise conv, the op bench int8-sensitivity ranks first, alone in fp32:
    # fed by INT8, so onnxruntime re-quantises its weights per tensor at load
    "dw0-fp32": quantize.Recipe(fp32_nodes=("/_blocks.0/_depthwise_conv/Conv",)),
    # the first N weighted ops from the input and everything before them in fp32: 1 the
    # stem, 3 stem and block 0, 6 (the default's) stem and blocks 0-1, 9 up to block 2...
    **{f"fp32-leading-{n}": quantize.Recipe(fp32_leading_ops=n) for n in LEADING},
    # the default without its bias correction: the fp32 island alone
    "fp32-leading-6": quantize.Recipe(fp32_leading_ops=quantize.DEFAULT_FP32_LEADING_OPS),
    # remedies for the saturating U8S8 kernels of x86 CPUs without VNNI, beside the exact
    # kernels the onnxruntime driver uses (its exact_int8): unsigned weights, 7-bit weights
    "U8U8": quantize.Recipe(
        fp32_leading_ops=quantize.DEFAULT_FP32_LEADING_OPS,
        bias_correction_inputs=quantize.DEFAULT_BIAS_CORRECTION_INPUTS,
        weight_type="QUInt8",
    ),
    "logits-fp32": quantize.Recipe(
        fp32_leading_ops=quantize.DEFAULT_FP32_LEADING_OPS,
        bias_correction_inputs=quantize.DEFAULT_BIAS_CORRECTION_INPUTS,
        fp32_output_ops=("Gemm",),
    ),
    "reduce-range": quantize.Recipe(
        fp32_leading_ops=quantize.DEFAULT_FP32_LEADING_OPS,
        bias_correction_inputs=quantize.DEFAULT_BIAS_CORRECTION_INPUTS,
        reduce_range=True,
    ),
    "bias-correction-2-passes": quantize.Recipe(
        fp32_leading_ops=quantize.DEFAULT_FP32_LEADING_OPS,
        bias_correction_inputs=quantize.DEFAULT_BIAS_CORRECTION_INPUTS,
        bias_correction_passes=2,
    ),
    # islands of other lengths with the default's bias correction (the island sweep above
    # was measured without it)
    **{
        f"bias-corrected-leading-{n}": quantize.Recipe(
            fp32_leading_ops=n, bias_correction_inputs=quantize.DEFAULT_BIAS_CORRECTION_INPUTS
        )
        for n in BIAS_CORRECTED_LEADING
    },
    # the default with every calibration input (344) in the bias correction, not 128
    "bias-correction-all": quantize.Recipe(
        fp32_leading_ops=quantize.DEFAULT_FP32_LEADING_OPS, bias_correction_inputs=10_000
    ),
}
VALIDATION_FRAME_STEP = 10  # every 10th calibration frame joins the calibration stills

WORST = 8  # tensors listed in layer_sqnr_db


def layer_drift(
    image_dir: Path,
    calibration: int,
    inputs: int,
    recipe: quantize.Recipe = quantize.DEFAULT_RECIPE,
) -> dict[str, float]:
    """The ``WORST`` intermediate tensors of the ``recipe``'s variant with the lowest SQNR (dB)
    against fp32 over ``inputs`` crops spread over the held-out photos. Every intermediate
    tensor of both models is kept for each input (~60 MB an input for this classifier:
    all 180 crops took over 20 GB), hence the bound."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    manifest = read_manifest(image_dir)
    preprocess = Preprocessor(manifest.input)
    tensors = [
        preprocess(picture, region)[0]
        for image in quantize.heldout_stills(list(quantize.HELDOUT_PHOTOS)).values()
        for picture, region in still_crops(image)
    ]
    tensors = tensors[:: max(1, len(tensors) // inputs)][:inputs]

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[np.ndarray] = iter(tensors)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tensor = next(self._feeds, None)
            return None if tensor is None else {manifest.input.name: tensor}

    with tempfile.TemporaryDirectory() as tmp:
        src, variant, _ = make_variant(image_dir, Path(tmp), calibration, recipe)
        activations = []
        for model in (src / manifest.model_file, variant / manifest.model_file):
            augmented = Path(tmp) / f"{model.parent.name}.all-outputs.onnx"
            modify_model_output_intermediate_tensors(str(model), str(augmented))
            activations.append(collect_activations(str(augmented), Feeds()))
    errors = compute_activation_error(create_activation_matching(activations[1], activations[0]))
    sqnr = {name: float(e["xmodel_err"]) for name, e in errors.items() if "xmodel_err" in e}
    return {name: round(sqnr[name], 1) for name in sorted(sqnr, key=sqnr.__getitem__)[:WORST]}


def validation_agreement(image_dirs: list[Path], driver: Driver[Any], calibration: int) -> float:
    """Top-1 agreement of the second image's model with the first's on calibration-side
    inputs only: :func:`still_crops` of the calibration stills and of every
    ``VALIDATION_FRAME_STEP``-th calibration frame. The held-out photos never enter it, so
    recipes can be chosen on it."""
    manifest = read_manifest(image_dirs[0])
    preprocess = Preprocessor(manifest.input)
    pictures = quantize.calibration_stills()
    pictures += quantize.calibration_frames(calibration)[::VALIDATION_FRAME_STEP]
    models = [driver.load(d / manifest.model_file) for d in image_dirs]
    same = []
    try:
        for image in pictures:
            for picture, region in still_crops(image):
                feed = {manifest.input.name: preprocess(picture, region)[0]}
                ref, got = (next(iter(m.run(feed).values())) for m in models)
                same.append(bool(ref.argmax() == got.argmax()))
    finally:
        for model in models:
            model.close()
    return round(float(np.mean(same)), 4)


def recipe_figures(
    image_dir: Path,
    frames: list[np.ndarray],
    calibration: int,
    heldout: int,
    recipe: quantize.Recipe,
) -> dict[str, float]:
    """``int8_speedup``, ``int8_size_mb`` (the model file), ``top1_agreement_validation``
    (calibration side) and the held-out agreement figures of edged.profiler for one
    recipe."""
    with tempfile.TemporaryDirectory() as tmp:
        src, variant, trust = make_variant(image_dir, Path(tmp), calibration, recipe)
        driver = registry.create(registry.parse_config({"type": REFERENCE}))
        try:
            fp32_ms, int8_ms = alternate_times([src, variant], driver, frames)
            validation = validation_agreement([src, variant], driver, calibration)
        finally:
            driver.close()
        figures = agreement(src, variant, REFERENCE, heldout, trust, recheck_ties=False)
        size = (variant / read_manifest(variant).model_file).stat().st_size / 2**20
    speedup = round(statistics.median(fp32_ms) / statistics.median(int8_ms), 2)
    return {
        "int8_speedup": speedup,
        "int8_size_mb": round(size, 2),
        "top1_agreement_validation": validation,
        **figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames timed per recipe")
    parser.add_argument(
        "--calibration-frames", type=int, default=quantize.DEFAULT_CALIBRATION_FRAMES
    )
    parser.add_argument("--agreement-frames", type=int, default=50)
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), action="append", help="only these (repeatable)"
    )
    parser.add_argument("--no-drift", action="store_true", help="leave out layer_sqnr_db")
    parser.add_argument(
        "--drift-inputs", type=int, default=12, help="held-out crops layer_sqnr_db is read on"
    )
    args = parser.parse_args(argv)
    frames = frames_640x480(args.frames)
    image = REPO / "firmware-images" / "build" / IMAGE
    drift = {} if args.no_drift else layer_drift(image, args.calibration_frames, args.drift_inputs)
    results = {}
    for name in args.recipe or RECIPES:
        results[name] = recipe_figures(
            image, frames, args.calibration_frames, args.agreement_frames, RECIPES[name]
        )
    print(
        json.dumps(
            {
                "image": IMAGE,
                "calibration_frames": args.calibration_frames,
                "agreement_frames": args.agreement_frames,
                "recipes": results,
                "layer_sqnr_db": drift,
            }
        )
    )
    return 0
