"""INT8: static post-training quantisation of the FP32 fused graph (ONNX in, ONNX out), per target.

ONNX Runtime's quantisation tooling in QDQ format. Only the backbones are quantised —
convolutions (per-channel weights), residual additions, and the ReLU6 clips and paddings between
them. Pre-processing and the distance tail — normalisation, distances, upsampling, product,
score — stay float32, because their small values are exactly what 8 bits cannot hold. Of the
backbones, every target keeps each network's stem and the backbone's registered ``int8_float``
modules in float32 (efficientnet_lite0: the blocks up to its finest feature, whose 8-bit
activations cost up to 0.038 image AUROC on the benchmark; ``float_nodes``) — except an integer
stem: for resnet18 the cpu and openvino targets build the graph with the stems reading x - 128
(``GraphOptions.integer_stem``, ``wants_integer_stem``), whole numbers that one byte at scale 1
holds exactly, and quantise them; only their weights are rounded.

Weights of the cpu and openvino targets are 7-bit (``PAIR_SAFE_WEIGHT``): x86 CPUs without VNNI
add pairs of u8 x s8 products in int16, which 8-bit weights saturate, so an 8-bit graph scores
differently on an AVX2 CPU than on a VNNI one.

One graph cannot mean the same and run fast on both runtimes, so the file is written for a target
(recorded as ``stpm.int8_target``):

- ``cpu`` (ONNX Runtime on a CPU): unsigned 8-bit activations with zero points (U8S8), int32
  biases, and the ReLU6 Clips folded into the uint8 range — ONNX Runtime fuses each
  DequantizeLinear -> Conv -> QuantizeLinear into one integer kernel with no requantise pair in
  between (leaving Clip and Pad in float cost 44 such pairs and all of the speed-up, and 5 points
  of image AUROC on the demo set). The residual additions that write the features stay float
  and the tail reads them there (``tail_reads_float``). TensorRT must NOT read this file: its
  parser re-types a uint8 zero point as INT8, so a Clip [0, 6] folded into uint8 saturation
  silently becomes about [-3, 3], and int32 DequantizeLinear is rejected.
- ``tensorrt`` (TensorRT explicit quantisation): signed INT8 activations and weights, symmetric
  (every zero point 0), per-channel weights, float biases (no int32 DequantizeLinear), and every
  ReLU6 Clip kept as a node between its Q/DQ pairs, so its [0, 6] means the same to any reader.
  On ONNX Runtime CPU this graph is correct but slow (measured 2.8x the cpu graph's latency, the
  float Clips force dequantise/requantise pairs) — hence two targets.
- ``openvino``: NNCF's ONNX backend (``stpm_edge.export.int8_nncf``), the one dispatch point below.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from stpm_edge.errors import ConfigError, ExportError, note
from stpm_edge.runtime.metadata import BACKBONE_SCOPE, props

if TYPE_CHECKING:
    from stpm_edge.backbones._registry import BackboneSpec

logger = logging.getLogger(__name__)

BACKBONE_SCOPES = (BACKBONE_SCOPE,)  # node-name prefixes of everything inside the two networks


class FrameReader:
    """ONNX Runtime ``CalibrationDataReader`` over uint8 frames (N, H, W, 3), one batch at a time."""

    def __init__(
        self, frames: np.ndarray, input_name: str = "image", batch: int = 1, progress: bool = True
    ) -> None:
        self.frames, self.input_name, self.batch = frames, input_name, batch
        self._iter: Iterator[dict[str, np.ndarray]] | None = None
        self._progress = progress

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        from tqdm import tqdm

        starts = range(0, len(self.frames), self.batch)
        for start in tqdm(
            starts, desc="INT8 calibration", unit="batch", disable=not self._progress, leave=False
        ):
            yield {self.input_name: self.frames[start : start + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


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


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
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


def wants_integer_stem(backbone: str, target: str) -> bool:
    """Whether an INT8 export for ``target`` builds its graph with ``integer_stem`` and quantises
    the stems: the CPU targets, for backbones whose stem feeds quantised layers (a stem before
    float ``int8_float`` modules would gain nothing). TensorRT keeps its float stems (a GPU's
    stem costs little)."""
    from stpm_edge.backbones import get_backbone_spec

    return target in ("cpu", "openvino") and not get_backbone_spec(backbone).int8_float


def exact_stem_overrides(model: onnx.ModelProto, activation_type: str) -> dict:
    """ONNX Runtime ``TensorQuantOverrides`` that quantise an integer stem's input at scale 1
    (zero point 128 for uint8, 0 for int8): every value of [-128, 127] maps to itself, where a
    calibrated range (about 1.08 per step on images spanning it) rounds each pixel by up to half a
    step. The int32 biases are quantised with the same scale. Empty for other graphs."""
    if not integer_stem(model):
        return {}
    zero = np.array(128, np.uint8) if activation_type == "QUInt8" else np.array(0, np.int8)
    exact = [{"scale": np.array(1.0, np.float32), "zero_point": zero}]
    return {name: exact for name in stem_inputs(model)}


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
    producer = _producers(quantized)
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


def feature_writers(model: onnx.ModelProto, candidates: list[str]) -> list[str]:
    """The nodes among ``candidates`` that write a tensor the float tail reads (the features:
    efficientnet_lite0's residual additions; resnet's are ReLUs, which no recipe quantises)."""
    producer = _producers(model)
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
    producer = _producers(model)

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


INT8_TARGETS = ("cpu", "tensorrt", "openvino")


@dataclass(frozen=True)
class QuantRecipe:
    """ONNX Runtime ``quantize_static`` settings of one INT8 target."""

    activation_type: str  # QuantType member name
    extra_options: dict
    # keep each network's first convolution in float32: it reads the frame itself (x - 255 mean,
    # scale folded into its weights), where an 8-bit activation grid costs the most. On the demo,
    # U8S8 with quantised stems lost 0.006 image AUROC on gravel. An integer stem's input is exact
    # in 8 bits, so it is quantised instead (``integer_stem``). The backbone's ``int8_float``
    # modules stay float32 too (its registry entry says what they are and why).
    float_head: bool = False
    # 7-bit weights ([-64, 64]) so the graph means the same on every x86 CPU. Without VNNI (AVX2,
    # AVX-512 before Cascade Lake) the integer kernels multiply u8 x s8 pairs and add each pair
    # into int16 (VPMADDUBSW), which saturates above 32767: 255 * 127 * 2 does not fit, 255 * 64 * 2
    # does. Measured with the default's grass checkpoint (seed 1) on QEMU's Haswell CPU: 8-bit
    # weights moved the score 7-9 % away from float32 there against 2 % on this VNNI CPU; 7-bit
    # weights give the same output, to the bit, on both, at the same speed. (Unsigned weights,
    # U8U8, do not saturate either but ran 3.3x slower here.)
    reduce_range: bool = False
    # the features stay float32 where they are written (efficientnet_lite0's residual additions
    # are not quantised) and the tail reads them there, not through an 8-bit copy
    # (``feature_writers``, ``tail_reads_float``). Not for TensorRT: a float reader beside the
    # next layer's quantiser would keep it from fusing the addition into the convolution before,
    # which no GPU here could measure.
    tail_reads_float: bool = False


RECIPES = {
    "cpu": QuantRecipe(
        "QUInt8",
        {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True},
        float_head=True,
        reduce_range=True,
        tail_reads_float=True,
    ),
    # TensorRT: "`y_zero_point` must be 0" (QuantizeLinear), DequantizeLinear takes INT8/FP8/INT4
    # only (onnx-tensorrt docs/operators.md); QDQKeepRemovableActivations keeps the ReLU6 Clips.
    "tensorrt": QuantRecipe(
        "QInt8",
        {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "QDQKeepRemovableActivations": True,
        },
        # the same float head as cpu: on the benchmark (seed 0, checked on ONNX Runtime) it took
        # this graph's loss from -0.038 image AUROC (label) to -0.0007
        float_head=True,
    ),
}


def check_target(target: str) -> None:
    if target not in INT8_TARGETS:
        raise ConfigError(
            note(f"INT8 target {target!r} is unknown", f"use one of {', '.join(INT8_TARGETS)}")
        )


def quantize_int8(
    fp32_model: onnx.ModelProto,
    calibration_frames: np.ndarray,
    method: str = "minmax",
    quantize_adds: bool = True,
    progress: bool = True,
    target: str = "cpu",
) -> onnx.ModelProto:
    """Quantise a fused FP32 graph for ``target`` with calibration frames (the graph's input
    layout). The caller records ``target`` in the metadata (``stpm.int8_target``)."""
    check_target(target)
    if len(calibration_frames) == 0:
        raise ExportError(
            note(
                "INT8 calibration has no images",
                "pass --calib DIR with good images (50-300 is plenty)",
            )
        )
    if target == "openvino":  # NNCF places the Q/DQ pairs for OpenVINO's CPU plugin
        from stpm_edge.export.int8_nncf import quantize_nncf

        return quantize_nncf(fp32_model, calibration_frames)
    return _quantize_ort(
        fp32_model, calibration_frames, RECIPES[target], method, quantize_adds, progress
    )


def _quantize_ort(
    fp32_model: onnx.ModelProto,
    calibration_frames: np.ndarray,
    recipe: QuantRecipe,
    method: str,
    quantize_adds: bool,
    progress: bool,
) -> onnx.ModelProto:
    """ONNX Runtime static QDQ quantisation of the backbone nodes with ``recipe``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    op_types = ("Conv", "Add", "Clip", "Pad") if quantize_adds else ("Conv", "Clip", "Pad")
    inside, outside = backbone_nodes(fp32_model, op_types)
    if recipe.float_head:
        head = float_nodes(fp32_model, inside)
        inside, outside = [n for n in inside if n not in head], outside + head
    if recipe.tail_reads_float:
        writers = feature_writers(fp32_model, inside)
        inside, outside = [n for n in inside if n not in writers], outside + writers
    if not inside:
        raise ExportError("INT8: no backbone convolution found to quantise (unexpected graph)")
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32_model, src)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            FrameReader(calibration_frames, progress=progress),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=outside,
            per_channel=True,
            reduce_range=recipe.reduce_range,
            activation_type=getattr(QuantType, recipe.activation_type),
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options=dict(recipe.extra_options)
            | {"TensorQuantOverrides": exact_stem_overrides(fp32_model, recipe.activation_type)},
        )
        quantized = onnx.load(dst)
    if recipe.tail_reads_float:
        tail_reads_float(quantized)
    logger.info(
        "INT8: quantised %d nodes, kept %d %s nodes of the tail in float32",
        len(inside),
        len(outside),
        "/".join(op_types),
    )
    return quantized
