"""Where an INT8 graph's quantised region ends, read off the fused ONNX graph: the nodes inside
the two networks, each network's stem and the float head a recipe keeps, the nodes that write the
features, and how the float tail reads them.

Node names carry the scope (``/pair/<network>/...``, ``runtime.metadata.BACKBONE_SCOPE``) and the
metadata the backbone (``stpm.backbone``, whose registry entry names the stem and the
``int8_float`` modules). Nothing is quantised here (``export.int8``, ``export.int8_weights``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx

from stpm_edge.runtime.metadata import BACKBONE_SCOPE, props

if TYPE_CHECKING:
    from stpm_edge.backbones._registry import BackboneSpec

BACKBONE_SCOPES = (BACKBONE_SCOPE,)  # node-name prefixes of everything inside the two networks


def backbone_nodes(
    model: onnx.ModelProto, op_types: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """(nodes to quantise, float nodes of those op types outside the backbones)."""
    inside, outside = [], []
    for node in model.graph.node:
        if node.op_type in op_types:
            (inside if node.name.startswith(BACKBONE_SCOPES) else outside).append(node.name)
    return inside, outside


def _is_tail_node(node: onnx.NodeProto) -> bool:
    """Outside the networks: not under /pair/, or the stacked pair's own split of its outputs
    (``/pair/Slice``: a direct child of /pair/, no network scope)."""
    if not node.name.startswith(BACKBONE_SCOPES):
        return True
    return node.op_type in ("Slice", "Split") and node.name.count("/") == 2


def tail_reads_quantized(model: onnx.ModelProto) -> int:
    """Route the float tail's reads of a quantised backbone tensor through its DequantizeLinear.

    ONNX Runtime's quantiser gives every consumer of a quantised tensor the dequantised value;
    NNCF leaves the nodes of its ignored scope (the tail) reading the float tensor beside the
    QuantizeLinear. Routed like ORT's, the tail sees the same 8-bit features on every runtime, and
    OpenVINO moves the dequantisation past the stacked pair's split: the split runs on uint8 and
    the tail's float32 reorder disappears (resnet18 stacked, 2 threads: about -0.35 ms of 10.5).
    Edits ``model`` in place; returns the number of inputs rerouted.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def dequantized(tensor: str) -> str | None:
        for q in sorted(consumers.get(tensor, []), key=lambda n: n.name):
            if q.op_type == "QuantizeLinear":
                for dq in consumers.get(q.output[0], []):
                    if dq.op_type == "DequantizeLinear":
                        return dq.output[0]
        return None

    return _reroute_tail(model, dequantized)


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """``{tensor: the node writing it}``."""
    return {out: node for node in model.graph.node for out in node.output}


def _reroute_tail(model: onnx.ModelProto, source: Callable[[str], str | None]) -> int:
    """Replace each input ``t`` of the tail's nodes by ``source(t)`` where that is not None;
    returns how many were replaced."""
    rerouted = 0
    for node in model.graph.node:
        if not _is_tail_node(node) or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, tensor in enumerate(node.input):
            new = source(tensor)
            if new is not None:
                node.input[k] = new
                rerouted += 1
    return rerouted


def _children(modules: tuple[str, ...]) -> re.Pattern | None:
    """Node names inside any of ``modules`` as direct children of a network (/pair/teacher/conv1/
    ..., not a block's own conv1); None for no module."""
    if not modules:
        return None
    names = "|".join(re.escape(m) for m in modules)
    return re.compile(rf"^{re.escape(BACKBONE_SCOPE)}[^/]+/({names})/")


def _spec(model: onnx.ModelProto) -> BackboneSpec:
    """The registry entry of the graph's backbone (``stpm.backbone``)."""
    from stpm_edge.backbones import get_backbone_spec

    return get_backbone_spec(props(model)["stpm.backbone"])


def integer_stem(model: onnx.ModelProto) -> bool:
    """Whether the graph's stems read whole numbers in [-128, 127] (``GraphOptions.integer_stem``),
    which one byte at scale 1 holds exactly: such a stem is quantised, not kept float32."""
    return props(model).get("stpm.integer_stem") == "true"


def stem_convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Each network's stem convolution (by the backbone's registered stem name)."""
    stem = _children((_spec(model).stem,))
    return [n for n in model.graph.node if n.op_type == "Conv" and stem.match(n.name)]


def stem_inputs(model: onnx.ModelProto) -> list[str]:
    """The tensors the stem convolutions read (one: both networks read the same frame)."""
    return sorted({n.input[0] for n in stem_convs(model)})


def float_nodes(model: onnx.ModelProto, candidates: list[str]) -> list[str]:
    """The nodes among ``candidates`` a ``float_head`` recipe keeps float32: each network's stem
    convolution, unless its input is whole numbers (:func:`integer_stem`), and every node of the
    backbone's ``int8_float`` modules."""
    stems = set() if integer_stem(model) else {n.name for n in stem_convs(model)}
    head = _children(_spec(model).int8_float)
    return [n for n in candidates if n in stems or (head is not None and head.match(n))]


def feature_writers(model: onnx.ModelProto, candidates: list[str]) -> list[str]:
    """The nodes among ``candidates`` that write a tensor the float tail reads (the features:
    efficientnet_lite0's residual additions; resnet's are ReLUs, which no recipe quantises)."""
    producer = producers(model)
    written = {
        producer[name].name
        for node in model.graph.node
        if _is_tail_node(node)
        for name in node.input
        if name in producer and not _is_tail_node(producer[name])
    }
    return [name for name in candidates if name in written]


def tail_reads_float(model: onnx.ModelProto) -> int:
    """Route the float tail's reads of a re-quantised float tensor (QuantizeLinear ->
    DequantizeLinear, in front of the next quantised layer) to the tensor itself.

    The features a ``tail_reads_float`` recipe leaves float (:func:`feature_writers`) are
    quantised only for the layer after them; the tail needs no 8-bit copy. ONNX Runtime gives
    each reader of a DequantizeLinear its own copy (three per feature: the tail multiplies t·t,
    s·s and t·s), so reading the float tensor also saves 18 dequantisations of feature maps
    (efficientnet_lite0 on ONNX Runtime, 2 threads: the tail 10.8 % -> 8.5 % of the kernel time,
    the graph 0.5-2.5 % faster in paired rounds; benchmarks/reports/cpu-epyc-2core-avx2/
    tail_reads_float).
    Edits ``model`` in place; returns the number of inputs rerouted."""
    producer = producers(model)

    def float_source(tensor: str) -> str | None:
        dq = producer.get(tensor)
        q = (
            producer.get(dq.input[0])
            if dq is not None and dq.op_type == "DequantizeLinear"
            else None
        )
        if q is None or q.op_type != "QuantizeLinear":
            return None
        writer = producer.get(q.input[0])
        return q.input[0] if writer is not None and writer.op_type != "DequantizeLinear" else None

    return _reroute_tail(model, float_source)
