"""The graph surgery behind an INT8 variant's mixed precision (``edgefed.images.quantize``):
an fp32 island at the input (:func:`leading_nodes`) whose nodes read fp32 tensors, not
their INT8 copies (:func:`reroute_islands`), the onnxruntime pitfall that makes single
fp32 layers worse (:func:`requantised_nodes`), and empirical bias correction of the INT8
convolutions (:func:`correct_biases`, Nagel et al.), and which CPUs need onnxruntime's
exact INT8 kernels to serve them (:func:`int8_saturates`). Pure graph code on onnx
ModelProtos, and onnxruntime only to measure the bias shifts."""

from __future__ import annotations

import platform
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# onnxruntime's session setting for exact INT8 products on x86 CPUs without VNNI (AVX2,
# AVX-512 without VNNI): its fast U8S8 kernels add pairs of products into a saturating
# 16-bit intermediate, which took the classifier's held-out agreement with fp32 from
# 0.978 to 0.906 there (all-INT8: 0.906 to 0.767); set to "1", INT8 weights run through
# the exact U8U8 kernels. With VNNI the fast kernels are exact already (the same outputs,
# bit for bit) and the setting only slows INT8 down (python -m bench int8-kernels)
ORT_EXACT_INT8 = "session.x64quantprecision"
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def int8_saturates(machine: str, cpu_flags: Collection[str]) -> bool:
    """Whether onnxruntime's fast INT8 kernels saturate on this CPU: x86 without VNNI."""
    x86 = machine.lower() in {"x86_64", "amd64", "i386", "i686"}
    return x86 and not VNNI_FLAGS & set(cpu_flags)


def host_cpu_flags() -> set[str] | None:
    """This host's CPU flags (``/proc/cpuinfo``), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            line = next((x for x in f if x.startswith("flags")), None)
    except OSError:
        return None
    return set(line.split(":", 1)[1].split()) if line and ":" in line else None


def host_int8_saturates() -> bool:
    """``int8_saturates`` for this host (an x86 host whose flags cannot be read: True)."""
    return int8_saturates(platform.machine(), host_cpu_flags() or ())


def leading_nodes(nodes: Sequence[tuple[str, str]], count: int) -> tuple[str, ...]:
    """The names of ``nodes`` (name, op type; in graph order, which ONNX keeps
    topological) up to and including the ``count``-th weighted op.

    Leaving a whole run of nodes from the input in fp32, activations (Clip) included,
    keeps every tensor between them unquantised; leaving out single convolutions does not
    help on onnxruntime, see :func:`requantised_nodes`."""
    if count <= 0:
        return ()
    out = []
    seen = 0
    for name, op_type in nodes:
        out.append(name)
        seen += op_type in WEIGHTED_OPS
        if seen == count:
            return tuple(out)
    return tuple(out)


Node = tuple[str, str, Sequence[str], Sequence[str]]  # name, op type, inputs, outputs


def requantised_nodes(nodes: Sequence[Node]) -> list[str]:
    """Weighted ops of a quantised graph whose weights were
    left in fp32 while their data input still comes from a DequantizeLinear.
    onnxruntime's ``WeightBiasQuantization`` optimisation quantises such weights again at
    load, per tensor: worse than the per-channel INT8 they replaced (measured on the
    classifier: its first depthwise conv left out alone took agreement from 0.84 to 0.60)."""
    dequantized = {
        o for _, op_type, _, outputs in nodes if op_type == "DequantizeLinear" for o in outputs
    }
    return [
        name
        for name, op_type, inputs, _ in nodes
        if op_type in WEIGHTED_OPS
        and len(inputs) > 1
        and inputs[0] in dequantized
        and inputs[1] not in dequantized
    ]


def island_inputs(nodes: Sequence[Node], fp32: Collection[str]) -> dict[tuple[str, int], str]:
    """Inputs of the ``fp32`` nodes of a quantised graph that go through a QuantizeLinear
    and DequantizeLinear pair although the tensor was made by another ``fp32`` node (or is
    a graph input), by (node name, input index): the fp32 tensor to read instead.

    onnxruntime quantises a tensor when any of its consumers is quantised, so an fp32
    island whose output also feeds a quantised node (a residual connection) reads its own
    output back rounded to INT8, and its weighted ops are re-quantised at load (see
    :func:`requantised_nodes`)."""
    producer = {
        o: (name, op_type, inputs) for name, op_type, inputs, outputs in nodes for o in outputs
    }
    out = {}
    for name, _, inputs, _ in nodes:
        if name not in fp32:
            continue
        for index, tensor in enumerate(inputs):
            dq = producer.get(tensor)
            if dq is None or dq[1] != "DequantizeLinear":
                continue
            q = producer.get(dq[2][0])
            if q is None or q[1] != "QuantizeLinear":
                continue  # a quantised weight
            source = q[2][0]
            made_by = producer.get(source)
            if made_by is None or made_by[0] in fp32:
                out[name, index] = source
    return out


def reroute_islands(model: Any, fp32: Collection[str]) -> None:
    """Apply :func:`island_inputs` to ``model`` (an onnx ModelProto) and drop the
    quantise/dequantise nodes nothing reads any more."""
    graph = model.graph
    nodes = [(n.name, n.op_type, list(n.input), list(n.output)) for n in graph.node]
    reroute = island_inputs(nodes, fp32)
    for node in graph.node:
        for index in range(len(node.input)):
            if (node.name, index) in reroute:
                node.input[index] = reroute[node.name, index]
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        unused = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and not any(o in read for o in n.output)
        ]
        if not unused:
            return
        for n in unused:
            graph.node.remove(n)


def corrected_bias(bias: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """An INT32 bias (per-channel ``scale``) moved against a mean output ``shift``; a
    channel whose scale is zero (seen with unsigned weights) keeps its bias."""
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(scale > 0, np.round(shift / scale), 0.0)
    return (bias - steps).astype(np.int32)


def measuring_session(model: Any) -> Any:
    """A one-thread CPU onnxruntime session of ``model`` (an onnx ModelProto) computing
    INT8 exactly, as edged serves it (warnings off: a cut graph leaves unused
    initializers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry(ORT_EXACT_INT8, "1")
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _channel_means(
    model: Any, outputs: Sequence[str], feeds: Sequence[dict[str, Any]]
) -> list[np.ndarray]:
    """Per-channel means of the tensors ``outputs`` of ``model`` (an onnx ModelProto) over
    ``feeds``, one input at a time, on a copy of the graph cut to the nodes the outputs
    need (the classifier's correction on 128 inputs: 45 s instead of 75 s when the rest
    of the graph was left in)."""
    import onnx

    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    del graph.graph.output[:]
    graph.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in outputs)
    needed, kept = set(outputs), []
    for node in reversed(graph.graph.node):
        if needed.intersection(node.output):
            kept.append(onnx.NodeProto())
            kept[-1].CopyFrom(node)
            needed.update(node.input)
    del graph.graph.node[:]
    graph.graph.node.extend(reversed(kept))
    session = measuring_session(graph)
    sums: list[Any] = [0.0 for _ in outputs]
    for feed in feeds:
        for index, value in enumerate(session.run(list(outputs), feed)):
            axes = (0, *range(2, value.ndim))
            sums[index] = sums[index] + value.mean(axis=axes)
    return [total / len(feeds) for total in sums]


def correct_biases(fp32: Any, quantized: Any, feeds: Sequence[dict[str, Any]]) -> None:
    """Empirical bias correction of the INT8 convs of ``quantized`` against ``fp32`` (onnx
    ModelProtos of the same graph), in graph order, each measured with the ones before it
    already corrected (correcting all at once over-corrects: the later convs' shifts are
    mostly the earlier ones', carried forward)."""
    from onnx import numpy_helper

    convs = {n.name: n.output[0] for n in fp32.graph.node if n.op_type == "Conv"}
    names = list(convs)
    means = _channel_means(fp32, [convs[n] for n in names], feeds)
    reference = dict(zip(names, means, strict=True))
    initializers = {i.name: i for i in quantized.graph.initializer}
    producer = {o: n for n in quantized.graph.node for o in n.output}
    for node in quantized.graph.node:
        if node.op_type != "Conv" or node.name not in reference or len(node.input) < 3:
            continue
        dq = producer.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in initializers:
            continue  # an fp32 conv
        shift = _channel_means(quantized, [node.output[0]], feeds)[0] - reference[node.name]
        bias = initializers[dq.input[0]]
        scale = numpy_helper.to_array(initializers[dq.input[1]])
        new = corrected_bias(numpy_helper.to_array(bias), scale, shift)
        bias.CopyFrom(numpy_helper.from_array(new, bias.name))
