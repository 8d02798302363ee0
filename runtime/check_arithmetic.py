"""How ONNX Runtime's CPU provider must run an exported graph to compute what its target computes.

Every check of an exported graph against a reference runs it on ONNX Runtime's CPU provider: the
export's parity line, score-baseline refit and thresholds (``export.parity.run_onnx``), the INT8
accuracy gate and ``quality parity`` (``export.int8_gate.score_split``), the demo's tables, and
the reference of ``stpm-doctor`` and ``stpm-bench --recommend``. For most graphs that is their own
arithmetic. Not for an INT8 graph made for TensorRT (``stpm.int8_target`` = ``tensorrt``):
TensorRT computes each Q/DQ pair as written — int8 × int8 products summed exactly in int32, then
rescaled — while ONNX Runtime fuses the pairs into its own integer kernels. Measured on the AVX2
CPU: a benchmark gear checkpoint's TensorRT graph scored up to 7 % apart fused vs as written, its
cpu graph 0.2 %. The likely cause: x86 kernels without VNNI add u8 × s8 products pairwise in
int16, which 8-bit weights can saturate; the cpu target's 7-bit weights are chosen not to, the
tensorrt target's are 8-bit. With graph optimisations off, ONNX Runtime runs every pair as written
(dequantise, float convolution, quantise): TensorRT's arithmetic up to float rounding, on any CPU,
in a few times the time.

Torch-free and onnx-optional, like the rest of the runtime.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

AS_WRITTEN = "disable"  # OrtRunner's graph_optimization: no fusion, every node as in the file
FUSED = "all"
CHECK_BACKEND = "ort-cpu"  # the one backend whose arithmetic a check chooses


def runs_as_written(props: Mapping[str, str]) -> bool:
    """Whether a graph with these metadata props is checked with its Q/DQ pairs as written: INT8
    for TensorRT."""
    return props.get("stpm.precision") == "int8" and props.get("stpm.int8_target") == "tensorrt"


def check_optimization(props: Mapping[str, str]) -> str:
    """ONNX Runtime CPU's graph optimisation level that computes such a graph as its target does."""
    return AS_WRITTEN if runs_as_written(props) else FUSED


def check_runner_kwargs(path: str | os.PathLike, backend: str) -> dict[str, Any]:
    """Extra ``create_runner`` options for checking ``path`` on ``backend``: on ort-cpu, the
    optimisation level of :func:`check_optimization`; other backends run as they deploy."""
    if backend != CHECK_BACKEND or not str(path).endswith(".onnx"):
        return {}
    from stpm_edge.runtime.runners.ort import read_model_facts

    _, props = read_model_facts(str(path))
    return {"graph_optimization": check_optimization(props)}


def check_runner(
    path: str | os.PathLike, backend: str = CHECK_BACKEND, threads: int | None = None
) -> Any:
    """The runtime's runner for checking ``path`` on ``backend`` (:func:`check_runner_kwargs`)."""
    from stpm_edge.runtime.runners import create_runner

    return create_runner(
        path, backend=backend, threads=threads, **check_runner_kwargs(path, backend)
    )
