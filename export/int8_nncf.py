"""INT8 for OpenVINO: NNCF's post-training quantisation on the fused graph (ONNX in, ONNX out).

OpenVINO's CPU plugin runs a QDQ ONNX graph as integer kernels, and NNCF is the tool made for that
engine: it places the QuantizeLinear/DequantizeLinear pairs where OpenVINO's low-precision
transformations expect them (e.g. on both inputs of a residual addition, none between a
convolution and its activation) and corrects the biases the rounding shifts (fast bias
correction). ONNX Runtime's quantiser places them for ONNX Runtime's fusions instead, which is why
the same backbone quantised by it runs slower on OpenVINO.

As in :mod:`stpm_edge.export.int8`, only the backbones are quantised: every node outside
``/pair/`` (pre-processing and the distance tail: normalisation, distances, upsampling, product,
blur, score) is in NNCF's ignored scope and stays float32, because the small feature distances are
exactly what 8 bits cannot hold. The tail reads the backbones' features through their
DequantizeLinear nodes, as in ONNX Runtime's QDQ graphs (``int8_graph.tail_reads_quantized``). The
backbone's float head (``int8_graph.float_nodes``: stems and registered ``int8_float`` modules) is in the
ignored scope too, as in the ONNX Runtime targets: all 8-bit, NNCF's graph of the default lost
0.033 image AUROC on the benchmark (label, seed 0), with the float head 0.0057. An integer stem
(resnet18) is quantised after NNCF, at scale 1 (``int8_weights.quantize_stems``). NNCF's overflow fix
is on for every layer (its default: the first only), so dense weights are 7-bit and OpenVINO's
kernels give the same output on CPUs with and without VNNI (measured: 12-17 % of the score apart
on an emulated AVX2 CPU with the default). It skips grouped convolutions — every convolution of
the stacked layout — so those are re-quantised to 7 bits afterwards (``int8_weights.cap_dense_weights``).

nncf is an optional dependency (the ``quantization`` extra); it is imported only when called.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx

from stpm_edge.errors import ExportError, note
from stpm_edge.export.int8_graph import (
    BACKBONE_SCOPES,
    float_nodes,
    stem_convs,
    tail_reads_quantized,
)
from stpm_edge.export.int8_weights import cap_dense_weights, quantize_stems

logger = logging.getLogger(__name__)


def import_nncf() -> Any:
    """Import nncf or raise an :class:`ExportError` saying what to install."""
    try:
        import nncf
    except ImportError as exc:
        raise ExportError(
            note(
                "INT8 for OpenVINO (--target openvino) needs NNCF",
                "pip install 'stpm-edge[quantization]' (or pip install nncf)",
            )
        ) from exc
    return nncf


def tail_node_names(graph: onnx.ModelProto) -> list[str]:
    """Names of the nodes outside the backbones (kept float32)."""
    return [n.name for n in graph.graph.node if not n.name.startswith(BACKBONE_SCOPES)]


def _input_name(graph: onnx.ModelProto) -> str:
    initializers = {i.name for i in graph.graph.initializer}
    inputs = [i.name for i in graph.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(
            note(f"INT8 (NNCF): expected one graph input, found {inputs}", "export the fused graph")
        )
    return inputs[0]


def quantize_nncf(
    graph: onnx.ModelProto,
    frames: np.ndarray,
    subset_size: int = 300,
    preset: str = "performance",
    fast_bias_correction: bool = True,
) -> onnx.ModelProto:
    """Quantise the backbones of a fused FP32 graph with NNCF's ONNX backend.

    Args:
        graph: the FP32 fused graph (``stpm-export`` output before quantisation).
        frames: calibration batch in the graph's input layout (uint8 ``(N, H, W, 3)`` or float32
            ``(N, 3, H, W)``), good images only; fed one image at a time.
        subset_size: at most this many frames are used for the statistics (NNCF's default 300).
        preset: ``"performance"`` (symmetric activations: OpenVINO's fastest integer kernels) or
            ``"mixed"`` (asymmetric activations: for activations that are far from centred).
        fast_bias_correction: let NNCF correct the bias shift caused by weight rounding.

    Returns:
        The QDQ graph (metadata_props kept: NNCF copies the model proto).

    Raises:
        ExportError: nncf missing, no calibration frames, no backbone node in the graph.
    """
    nncf = import_nncf()
    if logger.getEffectiveLevel() > logging.DEBUG:  # NNCF logs every ignored node at INFO
        logging.getLogger("nncf").setLevel(logging.WARNING)
    if len(frames) == 0:
        raise ExportError(
            note("INT8 calibration has no images", "pass --calib DIR with good images (50-300)")
        )
    ignored = tail_node_names(graph)
    if len(ignored) == len(graph.graph.node):
        raise ExportError(
            f"INT8 (NNCF): no node named {' or '.join(BACKBONE_SCOPES)}... to quantise "
            "(unexpected graph)"
        )
    tail = set(ignored)
    backbone = [n.name for n in graph.graph.node if n.name not in tail]
    presets = {
        "performance": nncf.QuantizationPreset.PERFORMANCE,
        "mixed": nncf.QuantizationPreset.MIXED,
    }
    if preset not in presets:
        raise ExportError(note(f"unknown NNCF preset {preset!r}", f"choose one of {list(presets)}"))
    # no stem is NNCF's to quantise: an integer stem is quantised after it (int8_weights.quantize_stems)
    float_head = set(float_nodes(graph, backbone)) | {n.name for n in stem_convs(graph)}
    name = _input_name(graph)
    items = [frames[i : i + 1] for i in range(len(frames))]
    dataset = nncf.Dataset(items, lambda batch: {name: batch})
    quantized = nncf.quantize(
        graph,
        dataset,
        preset=presets[preset],
        target_device=nncf.TargetDevice.CPU,
        subset_size=min(subset_size, len(items)),
        fast_bias_correction=fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=ignored + sorted(float_head)),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            overflow_fix=nncf.OverflowFix.ENABLE
        ),
    )
    rerouted = tail_reads_quantized(quantized)
    quantize_stems(quantized)
    capped = cap_dense_weights(quantized, graph)
    count = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    logger.info(
        "INT8 (NNCF, %s): %d QuantizeLinear nodes; %d tail nodes kept in float32, reading the "
        "dequantised features (%d inputs); %d grouped convolutions' weights re-quantised to 7 bits",
        preset,
        count,
        len(ignored),
        rerouted,
        capped,
    )
    return quantized
