"""``python -m bench int8-recipes``: what each quantisation setting does to the classifier.

The classifier (``efficientnet_lite0``) is quantised once per recipe (see
edgefed.images.quantize.Recipe; ``default`` is what ``edged image build --quantize int8``
does), in a temporary directory, and each variant is timed against fp32 on onnxruntime
and compared with fp32 as ``python -m bench drivers`` does (bench.drivers.int8_figures).
The recipes: the stock EfficientNet-Lite one (ReLU6 ranges folded, per-channel symmetric
int8 weights, asymmetric uint8 activations) with and without the sample stills in the
calibration, onnxruntime's options that change it, and the layers whose outputs drift
most from fp32 (the stem conv, the head conv and the classifier) kept in fp32.

Prints one JSON line: ``image``, ``calibration_frames``, ``agreement_frames`` and
``recipes``: per recipe ``int8_speedup`` and the agreement figures of edged.profiler.
"""

from __future__ import annotations

import argparse
import json

from bench.drivers import REPO, frames_640x480, int8_figures
from edgefed.images import quantize

IMAGE = "efficientnet_lite0"
STEM = "/_conv_stem/Conv"
HEAD = ("/_conv_head/Conv", "/_avg_pooling/GlobalAveragePool", "/_fc/Gemm")
RECIPES = {
    "default": quantize.DEFAULT_RECIPE,
    "video-only-calibration": quantize.Recipe(calibrate_on_stills=False),
    "QOperator": quantize.Recipe(quant_format="QOperator"),
    "ActivationSymmetric": quantize.Recipe(activation_symmetric=True),
    "QDQKeepRemovableActivations": quantize.Recipe(keep_removable_activations=True),
    "CalibMovingAverage": quantize.Recipe(moving_average=True),
    "stem-fp32": quantize.Recipe(fp32_nodes=(STEM,)),
    "stem-head-fp32": quantize.Recipe(fp32_nodes=(STEM, *HEAD)),
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
    args = parser.parse_args(argv)
    frames = frames_640x480(args.frames)
    results = {}
    for name in args.recipe or RECIPES:
        speedup, agreement = int8_figures(
            REPO / "firmware-images" / "build" / IMAGE,
            frames,
            args.calibration_frames,
            args.agreement_frames,
            RECIPES[name],
        )
        results[name] = {"int8_speedup": speedup, **agreement}
    print(
        json.dumps(
            {
                "image": IMAGE,
                "calibration_frames": args.calibration_frames,
                "agreement_frames": args.agreement_frames,
                "recipes": results,
            }
        )
    )
    return 0
