"""FLOPs of an ONNX graph per image, and the two rooflines a latency is compared against.

Counting rules (one multiply-add = 2 FLOPs), with the batch axis fixed to 1 before ONNX shape
inference so every count is *per image*:

- Conv / ConvInteger / QLinearConv: ``2 * prod(Y.shape[1:]) * prod(W.shape[1:])``, i.e.
  ``2 * Cout * H_out * W_out * (Cin / groups) * kh * kw`` (bias ignored).
- ConvTranspose: ``2 * prod(X.shape[2:]) * prod(W.shape)``.
- MatMul / MatMulInteger / QLinearMatMul: ``2 * prod(Y.shape) * K``; Gemm: ``2 * M * N * K``.
- Rough counts for the rest: elementwise and activation ops 1 FLOP per output element
  (BatchNormalization 2, Softmax 3, Resize 4 for its interpolation), reductions 1 per input
  element, pooling ``kernel area`` per output element. Shape ops, Cast and quantise/dequantise
  count 0. These are small next to the convolutions; the report states the convolution share.

Rooflines: :func:`matmul_gflops` measures a large float32 numpy matmul (the practical peak the
BLAS reaches on this machine); :func:`theoretical_peak` estimates ``FLOP/cycle x clock`` per core
from the CPU's SIMD flags. The latter is an **estimate** (it assumes two FMA units per core, and
uses the current clock when the maximum is not exposed) and is ``None`` when flags are unknown.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import ConfigError, note

logger = logging.getLogger(__name__)

_ELEMENTWISE_1 = {
    "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "Max",
    "Min", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Abs", "Neg", "HardSigmoid",
    "HardSwish", "Elu", "Selu", "Gelu", "Where", "Mean", "Sum", "Floor", "Ceil", "Round",
}  # fmt: skip
_PER_OUTPUT = {"BatchNormalization": 2, "Softmax": 3, "LogSoftmax": 3, "Resize": 4, "Upsample": 4}
_REDUCE = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare",
           "ReduceProd", "ReduceL1", "ReduceLogSumExp", "ArgMax", "ArgMin", "TopK",
           "GlobalAveragePool", "GlobalMaxPool", "LpNormalization"}  # fmt: skip
_POOL = {"MaxPool", "AveragePool", "LpPool"}
_CONV_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL_A = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}


@dataclass
class FlopCount:
    """FLOPs of one image through a graph."""

    total: float = 0.0
    by_op_type: dict[str, float] = field(default_factory=dict)
    uncounted_nodes: list[str] = field(default_factory=list)  # shape unknown after inference

    @property
    def gflop(self) -> float:
        """Total in GFLOP (1e9)."""
        return self.total / 1e9

    def conv_fraction(self) -> float:
        """Share of the total in Conv/MatMul-type ops (the part the count is exact for)."""
        dense = sum(
            v for k, v in self.by_op_type.items() if "Conv" in k or "MatMul" in k or k == "Gemm"
        )
        return dense / self.total if self.total else 0.0


def _fix_batch(model: Any) -> Any:
    """A copy of ``model`` whose inputs/outputs have batch 1 and no stale value_info."""
    fixed = copy.deepcopy(model)
    for vi in list(fixed.graph.input) + list(fixed.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    del fixed.graph.value_info[:]
    return fixed


def _shapes(model: Any) -> dict[str, list[int | None]]:
    """Static shapes of every known value (inputs, outputs, inferred, initializers)."""
    shapes: dict[str, list[int | None]] = {}
    graph = model.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim
            ]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _prod(shape: list[int | None] | None) -> int | None:
    if shape is None or any(d is None for d in shape):
        return None
    return math.prod(shape)  # type: ignore[arg-type]


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else a.i
    return default


def _node_flops(node: Any, shapes: dict[str, list[int | None]]) -> float | None:
    """FLOPs of one node, 0 for free ops, None when a needed shape is unknown."""
    op = node.op_type
    get = shapes.get
    out = get(node.output[0]) if node.output else None
    if op in _CONV_WEIGHT_INPUT:
        w, y = _prod(get(node.input[_CONV_WEIGHT_INPUT[op]], [None])[1:]), _prod(out and out[1:])
        return None if w is None or y is None else 2.0 * w * y
    if op == "ConvTranspose":
        x, w = get(node.input[0]), _prod(get(node.input[1]))
        xs = _prod(x[2:]) if x else None
        return None if xs is None or w is None else 2.0 * xs * w
    if op in _MATMUL_A or op == "Gemm":
        a, y = get(node.input[0]), _prod(out)
        if not a or a[-1] is None or y is None:
            return None
        k = a[0] if op == "Gemm" and _attr(node, "transA", 0) else a[-1]
        return None if k is None else 2.0 * y * k
    if op in _ELEMENTWISE_1 or op in _PER_OUTPUT:
        y = _prod(out)
        return None if y is None else float(y) * _PER_OUTPUT.get(op, 1)
    if op in _REDUCE:
        x = _prod(get(node.input[0]))
        return None if x is None else float(x)
    if op in _POOL:
        y, kernel = _prod(out), _attr(node, "kernel_shape", [1])
        return None if y is None else float(y) * math.prod(kernel)
    return 0.0


def count_flops(model_or_path: Any) -> FlopCount:
    """FLOPs per image of an ONNX model (path or ``ModelProto``); see the module docstring."""
    import onnx  # only the FLOP count needs onnx (the runtime itself does not)

    if isinstance(model_or_path, str | Path):
        try:
            model = onnx.load(str(model_or_path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, OSError, ...: one message for all
            raise ConfigError(
                note(f"cannot read ONNX model {model_or_path}: {exc}", "pass an .onnx file")
            ) from exc
    else:
        model = model_or_path
    inferred = onnx.shape_inference.infer_shapes(_fix_batch(model), data_prop=True)
    shapes = _shapes(inferred)
    count = FlopCount()
    by_type: dict[str, float] = defaultdict(float)
    for node in inferred.graph.node:
        flops = _node_flops(node, shapes)
        if flops is None:
            count.uncounted_nodes.append(node.name or node.op_type)
            continue
        if flops:
            by_type[node.op_type] += flops
    count.by_op_type = dict(sorted(by_type.items(), key=lambda kv: kv[1], reverse=True))
    count.total = sum(by_type.values())
    if count.uncounted_nodes:
        logger.warning(
            "FLOP count skipped %d node(s) with unknown shapes (e.g. %s)",
            len(count.uncounted_nodes),
            count.uncounted_nodes[0],
        )
    return count


def _best_seconds(step: Callable[[], Any], reps: int) -> float:
    """Seconds of the fastest of ``reps`` (at least 1) timed calls of ``step`` after one untimed
    warm-up call, timed by the benchmark's own loop (``runner.time_loop``)."""
    from stpm_edge.benchmarks.runner import LoopPolicy, time_loop

    return min(time_loop(step, LoopPolicy(warmup=1, iters=max(1, reps)))) / 1e3


def matmul_gflops(n: int = 2048, reps: int = 3, threads: int | None = None) -> float:
    """Best-of-``reps`` GFLOP/s of a float32 ``(n, n) @ (n, n)`` numpy matmul.

    ``threads`` limits the BLAS pool through threadpoolctl when it is installed (otherwise the
    BLAS default is used and a warning says so).
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    limiter: Any = None
    if threads is not None:
        try:
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(limits=threads, user_api="blas")
        except ImportError:
            logger.warning("threadpoolctl not installed: matmul uses the BLAS default threads")
    try:
        best = _best_seconds(lambda: np.matmul(a, b), reps)  # warm-up: thread pool, page faults
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    return 2.0 * n**3 / best / 1e9


def flop_per_cycle(flags: list[str]) -> tuple[int, str] | None:
    """Peak fp32 FLOP/cycle/core assumed from SIMD flags, with the reasoning, or None."""
    fl = set(flags)
    if "avx512f" in fl and "fma" in fl:
        return 64, "AVX-512 FMA: 16 lanes x 2 FLOP x 2 FMA units (1-unit parts reach half)"
    if "avx2" in fl and "fma" in fl:
        return 32, "AVX2 FMA: 8 lanes x 2 FLOP x 2 FMA units"
    if "avx" in fl:
        return 16, "AVX: 8-lane add + 8-lane mul per cycle"
    if "asimd" in fl or "neon" in fl:
        return 16, "NEON/ASIMD FMA: 4 lanes x 2 FLOP x 2 units"
    return None


def theoretical_peak(cpu: dict[str, Any]) -> dict[str, Any] | None:
    """Per-core fp32 peak estimate from ``environment.cpu_info()``, or None if unknown.

    Returns ``{"per_core_gflops", "flop_per_cycle", "clock_mhz", "clock_source", "basis",
    "estimate": True}``; the peak for ``t`` threads is ``per_core_gflops * min(t, cores)``.
    """
    fpc = flop_per_cycle(cpu.get("flags") or [])
    clock, source = cpu.get("max_mhz"), "cpufreq max"
    if clock is None:
        clock, source = cpu.get("current_mhz"), "/proc/cpuinfo current (max not exposed)"
    if fpc is None or not clock:
        return None
    return {
        "per_core_gflops": fpc[0] * clock / 1000.0,
        "flop_per_cycle": fpc[0],
        "clock_mhz": clock,
        "clock_source": source,
        "basis": fpc[1],
        "estimate": True,
    }


def _int8_matmul_model(n: int) -> bytes:
    """ONNX ``MatMulInteger`` of uint8 ``(n, n)`` by int8 ``(n, n)`` -> int32 (weights constant)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "int8_roofline",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def int8_matmul_gops(n: int = 2048, reps: int = 3, threads: int | None = None) -> float:
    """Best-of-``reps`` GOP/s (one multiply-add = 2 ops) of an ``(n, n) x (n, n)`` uint8 x int8
    -> int32 matmul on ONNX Runtime's CPU provider (``MatMulInteger``).

    ONNX Runtime's integer GEMM uses the CPU's int8 dot-product instructions (AVX-512 VNNI /
    AVX-VNNI / ARM dot product) where present: the same kernels its quantised convolutions use,
    so this is the practical INT8 roofline of an INT8 graph on this machine.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    session = ort.InferenceSession(
        _int8_matmul_model(n), options, providers=["CPUExecutionProvider"]
    )
    a = np.random.default_rng(1).integers(0, 256, (n, n), dtype=np.uint8)
    # the warm-up run starts the thread pool and packs the constant weights
    return 2.0 * n**3 / _best_seconds(lambda: session.run(None, {"a": a}), reps) / 1e9


def bf16_matmul_gflops(n: int = 2048, reps: int = 3, threads: int | None = None) -> float:
    """Best-of-``reps`` GFLOP/s of an ``(n, n) @ (n, n)`` matmul that OpenVINO runs in bf16
    (``INFERENCE_PRECISION_HINT=bf16``: AVX-512 BF16 / AMX where the CPU has them): the roofline
    of records run with ``openvino-bf16``. Needs openvino (ImportError otherwise)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    b = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a], "bf16_roofline")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    x = rng.standard_normal((n, n), dtype=np.float32)
    return 2.0 * n**3 / _best_seconds(lambda: request.infer({0: x}), reps) / 1e9
