"""The graph arithmetic of INT8 recipes: which nodes stay fp32, which onnxruntime re-quantises."""

from __future__ import annotations

from edgefed.images.quantize import DEFAULT_RECIPE, leading_nodes, requantised_nodes

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
