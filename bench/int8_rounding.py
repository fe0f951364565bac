"""``python -m bench int8-rounding``: which rounding costs the classifier's INT8 variant its
agreement with fp32, the weights' or the activations'?

The classifier (``efficientnet_lite0``) is quantised with the default recipe (as ``python
-m bench int8-recipes`` does), and copies of its variant are made with one kind of
rounding taken out:

- ``weights_rounded``: the activations are not rounded: every activation's
  QuantizeLinear/DequantizeLinear pair becomes a Clip to the pair's range (what the pair
  does, less the rounding); INT8 weights and biases as in the variant;
- ``activations_rounded``: fp32 weights and biases (the original model's) in place of the
  INT8 ones; activations rounded as in the variant;
- ``unrounded_<role>``: the variant with the rounding taken out (as in ``weights_rounded``)
  of one role's activations only (:func:`activation_roles`): the outputs of the
  ``expand``, ``depthwise`` or ``project`` convs, of the residual ``add``s; and
  ``unrounded_project_and_add``: both of the last two, the tensors cross-layer
  equalisation could rescale exactly (no ReLU6 between a project conv and the convs
  that read it), so the most it could recover.

All of them and fp32 run on onnxruntime with graph optimisations off (the Q/DQ nodes
computed as written; optimised, onnxruntime would quantise fp32 weights fed by a
DequantizeLinear again, per tensor) and are compared with fp32 on the validation set of
``bench int8-recipes`` (calibration side: crops of the calibration stills and frames).

Prints one JSON line: ``image``, ``calibration_frames``, and ``top1_agreement_validation``
per model: ``variant``, ``weights_rounded``, ``activations_rounded`` and the
``unrounded_*`` copies.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bench.drivers import REPO, make_variant
from bench.int8_recipes import IMAGE, validation_agreement
from drivers import registry
from edgefed.images import quantize
from edgefed.images.verify import read_manifest

UINT8_MAX = 255


def _activation_quantizers(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The QuantizeLinear nodes of tensors (activations), not of initializers."""
    initializers = {i.name for i in graph.initializer}
    return [
        n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in initializers
    ]


def without_activation_rounding(
    quantized: onnx.ModelProto, only: Collection[str] | None = None
) -> onnx.ModelProto:
    """A copy of ``quantized`` whose activation QuantizeLinear/DequantizeLinear pairs (those
    of tensors, not of initializers; with ``only``, of those tensors alone) are each a Clip
    to the pair's uint8 range."""
    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    graph = out.graph
    initializers = {i.name: i for i in graph.initializer}
    unrounded = {  # the outputs of the QuantizeLinear nodes to replace
        n.output[0] for n in _activation_quantizers(graph) if only is None or n.input[0] in only
    }
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in unrounded:
            continue  # replaced with its QuantizeLinear below
        if node.op_type != "QuantizeLinear" or node.output[0] not in unrounded:
            kept.append(node)
            continue
        zero_point = numpy_helper.to_array(initializers[node.input[2]])
        if zero_point.dtype != np.uint8:
            raise ValueError(f"{node.name}: only uint8 activations are handled")
        scale = float(numpy_helper.to_array(initializers[node.input[1]]))
        zero = float(zero_point)
        low, high = f"{node.output[0]}_low", f"{node.output[0]}_high"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale * -zero, np.float32), low),
                numpy_helper.from_array(np.array(scale * (UINT8_MAX - zero), np.float32), high),
            ]
        )
        for dq in consumers.get(node.output[0], []):
            kept.append(
                helper.make_node(
                    "Clip", [node.input[0], low, high], [dq.output[0]], name=f"{dq.output[0]}_clip"
                )
            )
    del graph.node[:]
    graph.node.extend(kept)
    return out


def with_fp32_weights(quantized: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``quantized`` whose quantised initializers (weights, biases) are replaced by
    ``fp32``'s originals (onnxruntime names them ``<original>_quantized``)."""
    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    graph = out.graph
    originals = {i.name: i for i in fp32.graph.initializer}
    initializers = {i.name for i in graph.initializer}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        source = node.input[0] if node.op_type == "DequantizeLinear" else None
        if source is None or source not in initializers:
            kept.append(node)
            continue
        original = originals.get(source.removesuffix("_quantized"))
        if original is None:
            raise ValueError(f"{node.name}: no fp32 initializer for {source}")
        weight = onnx.TensorProto()
        weight.CopyFrom(original)
        weight.name = node.output[0]
        graph.initializer.append(weight)
    del graph.node[:]
    graph.node.extend(kept)
    return out


def activation_roles(quantized: onnx.ModelProto) -> dict[str, str]:
    """Each quantised activation tensor's role, from the op that makes it: a conv with
    groups is ``depthwise``, another conv that widens ``expand`` (in EfficientNet-Lite0
    also the head conv), one that narrows ``project`` (an inverted residual block's linear
    bottleneck), ``add`` a residual Add, anything else ``other``."""
    graph = quantized.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def weight_shape(conv: onnx.NodeProto) -> tuple[int, ...]:
        weight = producers.get(conv.input[1])
        name = weight.input[0] if weight is not None else conv.input[1]
        return tuple(initializers[name].dims)

    def role(node: onnx.NodeProto | None) -> str:
        if node is None:
            return "other"
        if node.op_type == "Add":
            return "add"
        if node.op_type != "Conv":
            return "other"
        if any(a.name == "group" and a.i > 1 for a in node.attribute):
            return "depthwise"
        out_channels, in_channels = weight_shape(node)[:2]
        return "expand" if out_channels > in_channels else "project"

    return {n.input[0]: role(producers.get(n.input[0])) for n in _activation_quantizers(graph)}


UNROUNDED_ROLES = {
    "unrounded_expand": ("expand",),
    "unrounded_depthwise": ("depthwise",),
    "unrounded_project": ("project",),
    "unrounded_add": ("add",),
    "unrounded_project_and_add": ("project", "add"),
}


def rounding_figures(image_dir: Path, calibration: int) -> dict[str, float]:
    """``top1_agreement_validation`` of the default variant and of its copies."""
    manifest = read_manifest(image_dir)
    driver = registry.create(
        registry.parse_config({"type": "onnxruntime", "graph_optimization": "disable"})
    )
    with tempfile.TemporaryDirectory() as tmp:
        src, variant, _ = make_variant(image_dir, Path(tmp), calibration, quantize.DEFAULT_RECIPE)
        fp32 = onnx.load(str(src / manifest.model_file))
        int8 = onnx.load(str(variant / manifest.model_file))
        copies = {
            "weights_rounded": without_activation_rounding(int8),
            "activations_rounded": with_fp32_weights(int8, fp32),
        }
        roles = activation_roles(int8)
        for name, picked in UNROUNDED_ROLES.items():
            tensors = {t for t, role in roles.items() if role in picked}
            copies[name] = without_activation_rounding(int8, tensors)
        dirs = {"variant": variant}
        for name, model in copies.items():
            dirs[name] = Path(tmp) / name
            dirs[name].mkdir()
            onnx.save(model, str(dirs[name] / manifest.model_file))
        try:
            return {
                name: validation_agreement([src, folder], driver, calibration)
                for name, folder in dirs.items()
            }
        finally:
            driver.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calibration-frames", type=int, default=quantize.DEFAULT_CALIBRATION_FRAMES
    )
    args = parser.parse_args(argv)
    image = REPO / "firmware-images" / "build" / IMAGE
    figures = rounding_figures(image, args.calibration_frames)
    print(
        json.dumps(
            {
                "image": IMAGE,
                "calibration_frames": args.calibration_frames,
                "top1_agreement_validation": figures,
            }
        )
    )
    return 0
