"""INT8 weights that mean the same on every x86 CPU, and integer stems quantised exactly.

x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) add pairs of u8 x s8 products in int16,
which saturates: 7-bit weights (``PAIR_SAFE_WEIGHT``) keep every pair in range, so a graph scores
the same on an AVX2 CPU as on a VNNI one. NNCF's overflow fix misses grouped convolutions
(``cap_dense_weights``); an integer stem's input is whole numbers that one byte at scale 1 holds
exactly (``quantize_stems``). ``stpm-doctor`` reads ``largest_dense_weight``.
"""

from __future__ import annotations

import numpy as np
import onnx

from stpm_edge.errors import ExportError
from stpm_edge.export.int8_graph import integer_stem, producers, stem_convs


def quantize_stems(model: onnx.ModelProto) -> int:
    """Quantise the float stem convolutions of an integer-stem graph in place: their input at
    scale 1 (int8, zero point 0: [-128, 127] exactly) and their weights per output channel,
    symmetric, at most ``PAIR_SAFE_WEIGHT - 1`` (pair-safe without VNNI); biases stay float.

    For NNCF, which takes no per-tensor scale: it calibrates the stems' input range from the
    frames (it clipped ours to +-84) and its bias correction then compensates that clipping in
    the layers after, so the stems are left in its ignored scope and quantised here instead.
    Returns the number of convolutions quantised."""
    from onnx import helper, numpy_helper

    if not integer_stem(model):
        return 0
    inits = {i.name: i for i in model.graph.initializer}
    convs = stem_convs(model)
    exact = {}  # input tensor -> its dequantised copy, shared by the stems reading it
    new_inits, new_nodes = [], []

    def add_init(name: str, value: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(value, name))
        return name

    for conv in convs:
        source = conv.input[0]
        if source not in exact:
            one = add_init(f"{source}_stem_scale", np.array(1.0, np.float32))
            zero = add_init(f"{source}_stem_zero", np.array(0, np.int8))
            q, dq = f"{source}_stem_q", f"{source}_stem_dq"
            new_nodes.append(helper.make_node("QuantizeLinear", [source, one, zero], [q]))
            new_nodes.append(helper.make_node("DequantizeLinear", [q, one, zero], [dq]))
            exact[source] = dq
        weight = numpy_helper.to_array(inits[conv.input[1]])
        values, scale = pair_safe_int8(weight)
        name = conv.input[1]
        dq_weight = f"{name}_stem_dq"
        inputs = [
            add_init(f"{name}_stem_int8", values),
            add_init(f"{name}_stem_scale", scale),
            add_init(f"{name}_stem_zero", np.zeros(len(weight), np.int8)),
        ]
        new_nodes.append(helper.make_node("DequantizeLinear", inputs, [dq_weight], axis=0))
        conv.input[0], conv.input[1] = exact[source], dq_weight
    model.graph.initializer.extend(new_inits)
    # before the first stem, after whatever produces the tensor they read (topological order)
    names = {c.name for c in convs}
    first = next(i for i, n in enumerate(model.graph.node) if n.name in names)
    for offset, node in enumerate(new_nodes):
        model.graph.node.insert(first + offset, node)
    return len(convs)


# The largest |int8 weight| whose u8 x s8 products a CPU without VNNI can add in pairs without
# saturating int16 (VPMADDUBSW): 2 * 255 * 64 = 32640 <= 32767 (QuantRecipe.reduce_range). It
# matters for dense convolutions only: ONNX Runtime's and OpenVINO's depthwise kernels gave the same
# output with 8-bit weights on an AVX2 and a VNNI CPU (NNCF's overflow fix leaves them 8-bit).
PAIR_SAFE_WEIGHT = 64


def pair_safe_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 of a float convolution weight, at most
    ``PAIR_SAFE_WEIGHT - 1`` in magnitude: ``(values, scales)``."""
    weight = weight.astype(np.float32)
    largest = np.abs(weight).reshape(len(weight), -1).max(axis=1)
    scale = (np.maximum(largest, 1e-12) / (PAIR_SAFE_WEIGHT - 1)).astype(np.float32)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return np.round(weight / scale.reshape(shape)).astype(np.int8), scale


def cap_dense_weights(quantized: onnx.ModelProto, fp32: onnx.ModelProto) -> int:
    """Re-quantise, from ``fp32``'s weights, every dense convolution of ``quantized`` whose int8
    weights exceed ``PAIR_SAFE_WEIGHT`` (:func:`pair_safe_int8`); returns how many.

    NNCF's overflow fix covers plain convolutions only, not grouped ones: the stacked layout's
    convolutions (two groups, teacher and student) kept 8-bit weights, which saturate on CPUs
    without VNNI. Edits ``quantized`` in place; a weight shared by several nodes is an error."""
    from onnx import numpy_helper

    inits = {i.name: i for i in quantized.graph.initializer}
    producer = producers(quantized)
    readers: dict[str, int] = {}
    for node in quantized.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    float_inits = {i.name: i for i in fp32.graph.initializer}
    float_convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    capped = 0
    for conv in quantized.graph.node:
        dq = producer.get(conv.input[1]) if conv.op_type == "Conv" else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        values = inits[dq.input[0]]
        if values.data_type != onnx.TensorProto.INT8 or _depthwise(conv, values):
            continue
        if int(np.abs(numpy_helper.to_array(values).astype(np.int32)).max()) <= PAIR_SAFE_WEIGHT:
            continue
        source = float_convs.get(conv.name)
        if source is None or source.input[1] not in float_inits:
            raise ExportError(f"INT8: no float weight for {conv.name} to re-quantise")
        if readers[dq.input[0]] > 1 or readers[dq.input[1]] > 1:
            raise ExportError(f"INT8: the weight of {conv.name} is shared; cannot re-quantise it")
        new, scale = pair_safe_int8(numpy_helper.to_array(float_inits[source.input[1]]))
        values.CopyFrom(numpy_helper.from_array(new, values.name))
        old = inits[dq.input[1]]
        old.CopyFrom(numpy_helper.from_array(scale.reshape(tuple(old.dims)), old.name))
        capped += 1
    return capped


def _depthwise(node: onnx.NodeProto, weight: onnx.TensorProto) -> bool:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return group > 1 and len(weight.dims) > 1 and weight.dims[1] == 1


def largest_dense_weight(model: onnx.ModelProto) -> int | None:
    """Largest |value| among the int8 weights the graph's dense (not depthwise) convolutions
    dequantise; None when none reads quantised weights (a float graph)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    weight_of = {
        n.output[0]: inits[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    }
    largest = None
    for node in model.graph.node:
        weight = weight_of.get(node.input[1]) if node.op_type == "Conv" else None
        if weight is None or weight.data_type != onnx.TensorProto.INT8 or _depthwise(node, weight):
            continue
        value = int(np.abs(numpy_helper.to_array(weight).astype(np.int32)).max())
        largest = value if largest is None else max(largest, value)
    return largest
