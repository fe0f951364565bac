"""The graph arithmetic of INT8 recipes: which nodes stay fp32, which onnxruntime re-quantises."""

from __future__ import annotations

import numpy as np

from edgefed.images.mixed_precision import (
    corrected_bias,
    island_inputs,
    leading_nodes,
    requantised_nodes,
    reroute_islands,
)
from edgefed.images.quantize import DEFAULT_RECIPE

GRAPH = [
    ("stem", "Conv"),
    ("stem_relu6", "Clip"),
    ("dw", "Conv"),
    ("dw_relu6", "Clip"),
    ("project", "Conv"),
    ("add", "Add"),
    ("fc", "Gemm"),
]


def test_leading_nodes_run_from_the_input_to_the_nth_weighted_op() -> None:
    assert leading_nodes(GRAPH, 0) == ()
    assert leading_nodes(GRAPH, 1) == ("stem",)
    # the activations between the weighted ops stay fp32 with them
    assert leading_nodes(GRAPH, 2) == ("stem", "stem_relu6", "dw")
    assert leading_nodes(GRAPH, 3) == ("stem", "stem_relu6", "dw", "dw_relu6", "project")
    assert leading_nodes(GRAPH, 4) == tuple(name for name, _ in GRAPH)
    assert leading_nodes(GRAPH, 99) == tuple(name for name, _ in GRAPH)  # all of a small model


def test_default_recipe_keeps_an_fp32_island_at_the_input() -> None:
    assert DEFAULT_RECIPE.fp32_leading_ops > 0
    assert DEFAULT_RECIPE.fp32_nodes == ()


def test_fp32_weights_fed_by_int8_are_found() -> None:
    nodes = [
        ("x_q", "QuantizeLinear", ["x", "s", "z"], ["x_q_out"]),
        ("x_dq", "DequantizeLinear", ["x_q_out", "s", "z"], ["x_dq_out"]),
        ("w_dq", "DequantizeLinear", ["w_int8", "ws", "wz"], ["w_dq_out"]),
        ("int8_conv", "Conv", ["x_dq_out", "w_dq_out", "b"], ["y1"]),  # both quantised
        ("fp32_conv", "Conv", ["x_dq_out", "w_fp32", "b"], ["y2"]),  # fp32 weights, INT8 input
        ("island_conv", "Conv", ["y2", "w2_fp32"], ["y3"]),  # fp32 all through
        ("relu", "Relu", ["x_dq_out"], ["y4"]),  # no weights
    ]
    assert requantised_nodes(nodes) == ["fp32_conv"]


def test_an_fp32_island_reads_its_own_tensors_not_their_int8_copies() -> None:
    # input -> stem -> relu6 -> block_conv -> add(block_conv, relu6) -> int8_conv; the add
    # is quantised, so onnxruntime put a Q/DQ pair on relu6's output for it, which
    # block_conv (in the island) must not read
    nodes = [
        ("stem", "Conv", ["input", "w0"], ["a"]),
        ("relu6", "Clip", ["a", "lo", "hi"], ["b"]),
        ("b_q", "QuantizeLinear", ["b", "s", "z"], ["b_q_out"]),
        ("b_dq", "DequantizeLinear", ["b_q_out", "s", "z"], ["b_dq_out"]),
        ("block_conv", "Conv", ["b_dq_out", "w1"], ["c"]),
        ("c_q", "QuantizeLinear", ["c", "s", "z"], ["c_q_out"]),
        ("c_dq", "DequantizeLinear", ["c_q_out", "s", "z"], ["c_dq_out"]),
        ("add", "Add", ["c_dq_out", "b_dq_out"], ["d"]),
        ("w_dq", "DequantizeLinear", ["w2_int8", "ws", "wz"], ["w2"]),
        ("int8_conv", "Conv", ["d", "w2"], ["e"]),
    ]
    fp32 = {"stem", "relu6", "block_conv"}
    assert island_inputs(nodes, fp32) == {("block_conv", 0): "b"}
    # the quantised add keeps reading the INT8 copies; a quantised weight is not an island
    assert island_inputs(nodes, fp32 | {"int8_conv"}) == {("block_conv", 0): "b"}


def test_rerouting_an_island_drops_the_pairs_nothing_reads() -> None:
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["a"], name="stem"),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["a_q"], name="a_q"),
        helper.make_node("DequantizeLinear", ["a_q", "s", "z"], ["a_dq"], name="a_dq"),
        helper.make_node("Conv", ["a_dq", "w1"], ["b"], name="island_conv"),
        helper.make_node("QuantizeLinear", ["b", "s", "z"], ["b_q"], name="b_q"),
        helper.make_node("DequantizeLinear", ["b_q", "s", "z"], ["b_dq"], name="b_dq"),
        helper.make_node("Relu", ["b_dq"], ["out"], name="int8_relu"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    reroute_islands(model, {"stem", "island_conv"})
    by_name = {n.name: n for n in model.graph.node}
    assert list(by_name["island_conv"].input) == ["a", "w1"]
    assert set(by_name) == {"stem", "island_conv", "b_q", "b_dq", "int8_relu"}


def test_a_bias_moves_against_the_mean_shift_in_its_own_steps() -> None:
    bias = np.array([100, -7, 0], dtype=np.int32)
    scale = np.array([0.5, 0.01, 2.0], dtype=np.float32)
    shift = np.array([1.0, -0.034, 0.9], dtype=np.float32)  # INT8 output mean minus fp32's
    new = corrected_bias(bias, scale, shift)
    assert new.dtype == np.int32
    assert new.tolist() == [98, -4, 0]  # 1.0 / 0.5 = 2 steps; -3.4 -> -3; 0.45 -> 0


def test_a_channel_without_scale_keeps_its_bias() -> None:
    """A zero scale: no step to move by, the bias stays (no division by zero)."""
    bias = np.array([5, 3], dtype=np.int32)
    new = corrected_bias(bias, np.array([0.0, 0.5]), np.array([1.0, 1.0]))
    assert new.tolist() == [5, 1]
