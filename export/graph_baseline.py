"""An exported graph's score baseline fitted on the graph's own map (``stpm_edge.score_baseline``).

The baseline is in the scored map's units, and FP16 and INT8 move the map's fixed pattern too:
its largest values, where the pattern is, carry the largest absolute quantisation error. So
``stpm-export`` refits the baseline of an FP16 or INT8 graph on that graph's scored map over the
checkpoint's training images, as it re-fits the thresholds on the graph's own scores (measured,
INT8 ``--target cpu``, benchmark seed 0: washer's image AUROC change against PyTorch -0.0073 with
PyTorch's baseline, -0.0036 with its own; pcb +0.0117 -> +0.0097). The graph is run on ONNX
Runtime's CPU provider with one more output, the input of the baseline's Sub.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from stpm_edge.errors import ExportError
from stpm_edge.score_baseline import values_from_peak

BASELINE = "baseline.values"  # the initializer the graph subtracts (export.graph, FusedSTPM)


def has_baseline(graph: onnx.ModelProto) -> bool:
    return any(init.name == BASELINE for init in graph.graph.initializer)


def scored_maps(graph: onnx.ModelProto, frames: np.ndarray) -> np.ndarray:
    """The map the graph's score is taken on, before the baseline: (N, h, w) float32 for
    ``frames`` in the graph's input layout."""
    from stpm_edge.export.parity import run_onnx

    readers = [n for n in graph.graph.node if BASELINE in n.input]
    if [n.op_type for n in readers] != ["Sub"]:
        raise ExportError(f"the graph's {BASELINE} is not read by one Sub (unexpected graph)")
    scored = readers[0].input[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(graph)
    probe.graph.output.append(helper.make_tensor_value_info(scored, onnx.TensorProto.FLOAT, None))
    return run_onnx(probe, frames)[scored][:, 0]


def refit(graph: onnx.ModelProto, frames: np.ndarray) -> np.ndarray:
    """Overwrite the graph's baseline with the per-position max of its own scored map over
    ``frames`` (the training images), less its peak; returns the new values (h, w)."""
    peak = scored_maps(graph, frames).max(axis=0)
    values = values_from_peak(peak).astype(np.float32)
    for init in graph.graph.initializer:
        if init.name == BASELINE:
            if tuple(init.dims[-2:]) != values.shape:
                raise ExportError(
                    f"{BASELINE} {tuple(init.dims)} does not fit the map {values.shape}"
                )
            init.CopyFrom(numpy_helper.from_array(values.reshape(tuple(init.dims)), BASELINE))
    return values
