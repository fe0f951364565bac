"""bench int8-rounding's graph surgery, on small real onnxruntime graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench.int8_rounding import activation_roles, with_fp32_weights, without_activation_rounding

SCALE, ZERO = 0.1, 10  # uint8 range [-1.0, 24.5]
WEIGHT = np.array([[[[0.123]], [[-0.456]]]], dtype=np.float32)  # Conv 2 -> 1 channel, 1x1
WEIGHT_SCALE = 0.01
ADD_SCALE = 0.25  # the block's Add pair: coarser, so that its rounding shows


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(None, {"x": x})[0])


def qdq_conv() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """x -> Q/DQ (activation) -> Conv with a Q/DQ'd weight -> y; and its fp32 original."""
    q_weight = np.round(WEIGHT / WEIGHT_SCALE).astype(np.int8)
    initializers = [
        numpy_helper.from_array(np.array(SCALE, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(ZERO, np.uint8), "x_zero"),
        numpy_helper.from_array(q_weight, "w_quantized"),
        numpy_helper.from_array(np.array(WEIGHT_SCALE, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xdq"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero"], ["wdq"]),
        helper.make_node("Conv", ["xdq", "wdq"], ["y"], name="conv"),
    ]
    io = (
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    quantized = helper.make_model(
        helper.make_graph(nodes, "qdq", *io, initializers),
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=8,
    )
    fp32 = helper.make_model(
        helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
            "fp32",
            *io,
            [numpy_helper.from_array(WEIGHT, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=8,
    )
    return quantized, fp32


X = np.array([[[[0.04, 3.333, 30.0]], [[-5.0, 1.07, 0.26]]]], dtype=np.float32)


def test_activations_unrounded_are_clipped_to_the_pairs_range_and_weights_stay_int8() -> None:
    quantized, _ = qdq_conv()
    got = run(without_activation_rounding(quantized), X)
    w = np.round(WEIGHT / WEIGHT_SCALE) * WEIGHT_SCALE
    clipped = np.clip(X, SCALE * -ZERO, SCALE * (255 - ZERO))
    np.testing.assert_allclose(
        got[0, 0, 0], (w[0, :, 0, 0, None] * clipped[0, :, 0]).sum(0), rtol=1e-6
    )
    # the variant itself rounds its input: a different answer
    assert not np.allclose(run(quantized, X), got, rtol=1e-6)


def test_fp32_weights_replace_the_int8_ones_and_activations_stay_rounded() -> None:
    quantized, fp32 = qdq_conv()
    got = run(with_fp32_weights(quantized, fp32), X)
    rounded = (np.clip(np.round(X / SCALE) + ZERO, 0, 255) - ZERO) * SCALE
    np.testing.assert_allclose(got, run(fp32, rounded), rtol=1e-6)
    assert not np.allclose(run(quantized, X), got, rtol=1e-6)


def block() -> onnx.ModelProto:
    """An inverted residual block in QDQ form: x -> expand (1x1, 2 -> 4) -> depthwise
    (1x1, groups 4) -> project (1x1, 4 -> 2) -> Add x -> y, each tensor through a Q/DQ
    pair (zero ZERO; scale SCALE, the Add's ADD_SCALE so that its rounding shows), the
    weights plain fp32 initializers."""
    rng = np.random.default_rng(3)
    weights = {
        "w_expand": rng.normal(0, 0.7, (4, 2, 1, 1)),
        "w_depthwise": rng.normal(0, 0.7, (4, 1, 1, 1)),
        "w_project": rng.normal(0, 0.7, (2, 4, 1, 1)),
    }
    initializers = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
    initializers += [
        numpy_helper.from_array(np.array(SCALE, np.float32), "scale"),
        numpy_helper.from_array(np.array(ADD_SCALE, np.float32), "scale_a"),
        numpy_helper.from_array(np.array(ZERO, np.uint8), "zero"),
    ]
    nodes = []
    for tensor in ("x", "e", "d", "p", "a"):
        scale = "scale_a" if tensor == "a" else "scale"
        nodes += [
            helper.make_node("QuantizeLinear", [tensor, scale, "zero"], [f"{tensor}q"]),
            helper.make_node("DequantizeLinear", [f"{tensor}q", scale, "zero"], [f"{tensor}dq"]),
        ]
    nodes += [
        helper.make_node("Conv", ["xdq", "w_expand"], ["e"]),
        helper.make_node("Conv", ["edq", "w_depthwise"], ["d"], group=4),
        helper.make_node("Conv", ["ddq", "w_project"], ["p"]),
        helper.make_node("Add", ["pdq", "xdq"], ["a"]),
        helper.make_node("Identity", ["adq"], ["y"]),
    ]
    return helper.make_model(
        helper.make_graph(
            nodes,
            "block",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            initializers,
        ),
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=8,
    )


def activation_quantizers(model: onnx.ModelProto) -> list[str]:
    return [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]


def test_roles_come_from_the_op_that_makes_each_tensor() -> None:
    assert activation_roles(block()) == {
        "x": "other",
        "e": "expand",
        "d": "depthwise",
        "p": "project",
        "a": "add",
    }


def test_only_the_named_tensors_lose_their_rounding() -> None:
    model = block()
    x = np.abs(X)
    rounded = run(model, x)
    last = without_activation_rounding(model, {"a"})
    assert activation_quantizers(last) == ["x", "e", "d", "p"]
    got = run(last, x)
    # the variant's output is this one rounded to its pair's step
    np.testing.assert_allclose(rounded, np.round(got / ADD_SCALE) * ADD_SCALE, atol=1e-6)
    assert not np.allclose(rounded, got, atol=1e-6)
    every = without_activation_rounding(model, {"x", "e", "d", "p", "a"})
    assert activation_quantizers(every) == []
    np.testing.assert_array_equal(run(every, x), run(without_activation_rounding(model), x))
