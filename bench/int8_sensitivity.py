"""``python -m bench int8-sensitivity``: which ops of the classifier lose most in INT8.

The classifier is quantised with every layer in INT8 (``quantize.Recipe()``); then each
weighted op (Conv, Gemm) in turn computes in fp32 (its fp32 weights, and its data input
before rounding, clamped to the INT8 range as the rounding would), and the model's output
is compared with fp32's on calibration-side inputs only: :func:`still_crops` of the
calibration stills and of every ``VALIDATION_FRAME_STEP``-th calibration frame, every
``--step``-th crop. This is the ranking the default fp32 island (docs/benchmarks.md) was
chosen from; the held-out photos never enter it.

Prints one JSON line: ``inputs``, ``all_int8`` (``top1_agreement`` and ``kl``, the mean
KL divergence of the INT8 softmax from fp32's) and ``ops``: the ``--top`` ops whose fp32
version lowers ``kl`` most, with the same two figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.drivers import REPO, make_variant
from bench.int8_recipes import IMAGE, VALIDATION_FRAME_STEP
from edged.profiler import still_crops
from edgefed.images import quantize
from edgefed.images.mixed_precision import measuring_session
from edgefed.images.verify import read_manifest
from edgefed.models.preprocess import Preprocessor


def _fp32_op(model: Any, name: str, fp32_weights: dict[str, Any]) -> Any:
    """A copy of the QDQ ``model`` with the op ``name`` computing in fp32."""
    import onnx
    from onnx import numpy_helper

    out = copy.deepcopy(model)
    graph = out.graph
    producer = {o: n for n in graph.node for o in n.output}
    init = {i.name: i for i in graph.initializer}
    node = next(n for n in graph.node if n.name == name)
    for index, tensor in enumerate(node.input):
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        if dq.input[0] in init:  # a quantised weight or bias: its fp32 original
            original = fp32_weights[dq.input[0].removesuffix("_quantized")]
            weight = copy.deepcopy(original)
            weight.name = f"{original.name}_fp32"
            graph.initializer.append(weight)
            node.input[index] = weight.name
            continue
        q = producer[dq.input[0]]
        scale = float(numpy_helper.to_array(init[q.input[1]]))
        zero = int(numpy_helper.to_array(init[q.input[2]]))
        bounds = []
        for suffix, level in (("lo", 0), ("hi", 255)):
            value = np.array(scale * (level - zero), np.float32)
            graph.initializer.append(numpy_helper.from_array(value, f"{name}_{index}_{suffix}"))
            bounds.append(f"{name}_{index}_{suffix}")
        clamped = f"{name}_{index}_clamped"
        clip = onnx.helper.make_node("Clip", [q.input[0], *bounds], [clamped], name=clamped)
        graph.node.insert(list(graph.node).index(node), clip)
        node.input[index] = clamped
    return out


def _logits(model: Any, tensors: list[np.ndarray], input_name: str) -> np.ndarray:
    session = measuring_session(model)
    return np.concatenate([session.run(None, {input_name: t})[0] for t in tensors])


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and mean KL divergence of ``got``'s softmax from ``ref``'s (logits,
    one row per input)."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    p, q = log_softmax(ref), log_softmax(got)
    kl = float(np.mean(np.sum(np.exp(p) * (p - q), axis=1)))
    same = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
    return {"top1_agreement": round(same, 4), "kl": round(kl, 5)}


def main(argv: list[str] | None = None) -> int:
    import onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calibration-frames", type=int, default=quantize.DEFAULT_CALIBRATION_FRAMES
    )
    parser.add_argument("--step", type=int, default=1, help="every step-th validation crop")
    parser.add_argument("--top", type=int, default=10, help="ops listed")
    args = parser.parse_args(argv)
    image = REPO / "firmware-images" / "build" / IMAGE
    manifest = read_manifest(image)
    preprocess = Preprocessor(manifest.input)
    pictures = quantize.calibration_stills()
    pictures += quantize.calibration_frames(args.calibration_frames)[::VALIDATION_FRAME_STEP]
    tensors = [
        preprocess(picture, region)[0]
        for image_ in pictures
        for picture, region in still_crops(image_)
    ][:: args.step]
    with tempfile.TemporaryDirectory() as tmp:
        src, variant, _ = make_variant(image, Path(tmp), args.calibration_frames, quantize.Recipe())
        fp32 = onnx.load(str(src / manifest.model_file))
        int8 = onnx.load(str(variant / manifest.model_file))
    weights = {i.name: i for i in fp32.graph.initializer}
    name = manifest.input.name
    ref = _logits(fp32, tensors, name)
    ops = {}
    for node in int8.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            ops[node.name] = compare(
                ref, _logits(_fp32_op(int8, node.name, weights), tensors, name)
            )
    ranked = sorted(ops, key=lambda op: ops[op]["kl"])[: args.top]
    print(
        json.dumps(
            {
                "inputs": len(tensors),
                "all_int8": compare(ref, _logits(int8, tensors, name)),
                "ops": {op: ops[op] for op in ranked},
            }
        )
    )
    return 0
