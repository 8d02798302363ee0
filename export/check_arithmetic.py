"""How ONNX Runtime's CPU provider must run an exported graph to compute what its target computes.

Every check of an exported graph on this machine runs it on ONNX Runtime's CPU provider: the
export's parity line, score-baseline refit and thresholds (``parity.run_onnx``), the INT8
accuracy gate and ``quality parity`` (``int8_gate.score_split``), the demo's tables. For most
graphs that is their own arithmetic. Not for an INT8 graph made for TensorRT
(``stpm.int8_target`` = ``tensorrt``): TensorRT computes each Q/DQ pair as written — int8 × int8
products summed exactly in int32, then rescaled — while ONNX Runtime fuses the pairs into its own
integer kernels. Measured on the AVX2 CPU: a benchmark gear checkpoint's TensorRT graph scored up
to 7 % apart fused vs as written, its cpu graph 0.2 %. The likely cause: x86 kernels without VNNI
add u8 × s8 products pairwise in int16, which 8-bit weights can saturate; the cpu target's 7-bit
weights are chosen not to, the tensorrt target's are 8-bit. With graph optimisations off, ONNX Runtime runs every pair as
written (dequantise, float convolution, quantise): TensorRT's arithmetic up to float rounding, on
any CPU, in a few times the time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

AS_WRITTEN = "disable"  # OrtRunner's graph_optimization: no fusion, every node as in the file
FUSED = "all"


def graph_props(model: onnx.ModelProto | str | Path) -> dict[str, str]:
    """The graph's ``metadata_props`` (from the file without its external data for a path)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def runs_as_written(props: dict[str, str]) -> bool:
    """Whether a graph with these metadata is checked with its Q/DQ pairs as written: INT8 for
    TensorRT."""
    return props.get("stpm.precision") == "int8" and props.get("stpm.int8_target") == "tensorrt"


def check_optimization(model: onnx.ModelProto | str | Path) -> str:
    """ONNX Runtime CPU's graph optimisation level that computes ``model`` as its target does."""
    return AS_WRITTEN if runs_as_written(graph_props(model)) else FUSED


def check_runner(path: str | Path, backend: str = "ort-cpu", threads: int | None = None) -> Any:
    """The runtime's runner for checking ``path`` on ``backend``: on ``ort-cpu``, with the
    optimisation level of :func:`check_optimization`; other backends run as they deploy."""
    from stpm_edge.runtime.runners import create_runner

    if backend != "ort-cpu":
        return create_runner(path, backend=backend, threads=threads)
    return create_runner(
        path, backend=backend, threads=threads, graph_optimization=check_optimization(path)
    )


def check_session(model: onnx.ModelProto | str | Path) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU provider that computes ``model`` as its
    target does (for in-memory graphs, which the runtime's runners do not take)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if check_optimization(model) == AS_WRITTEN:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
