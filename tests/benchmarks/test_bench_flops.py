"""FLOP counting on a tiny hand-built ONNX graph with known FLOPs, and the roofline helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stpm_edge.benchmarks.flops import (
    count_flops,
    flop_per_cycle,
    matmul_gflops,
    theoretical_peak,
)


def _tiny_conv_graph() -> onnx.ModelProto:
    """x (N,3,8,8) -> Conv 3->4 k3 p1 -> Relu -> grouped Conv (g=2, s=2) -> Flatten -> MatMul."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=2, name="conv2"
        ),  # fmt: skip
        helper.make_node("Flatten", ["c2"], ["f"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["f", "w3"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_tiny_conv_graph_flops(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(_tiny_conv_graph(), str(path))
    count = count_flops(path)
    conv1 = 2 * 4 * 8 * 8 * 3 * 3 * 3  # 2 * Cout * Ho * Wo * Cin/g * kh * kw
    conv2 = 2 * 4 * 4 * 4 * (4 // 2) * 3 * 3  # stride 2 -> 4x4, groups 2
    relu = 4 * 8 * 8
    matmul = 2 * 10 * 64
    assert count.uncounted_nodes == []
    assert count.by_op_type["Conv"] == conv1 + conv2
    assert count.by_op_type["MatMul"] == matmul
    assert count.by_op_type["Relu"] == relu
    assert count.total == conv1 + conv2 + relu + matmul
    assert count.gflop == pytest.approx(count.total / 1e9)
    assert 0.9 < count.conv_fraction() < 1.0


def test_batch_axis_is_per_image() -> None:
    """A fixed batch of 1 in the model proto gives the same count as the dynamic one."""
    model = _tiny_conv_graph()
    assert count_flops(model).total == 2 * 4 * 8 * 8 * 27 + 2 * 4 * 16 * 18 + 256 + 1280
    # the caller's model is not modified (the batch is fixed on a copy)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_rooflines() -> None:
    assert matmul_gflops(n=128, reps=2) > 0
    assert matmul_gflops(n=64, reps=1, threads=1) > 0
    assert flop_per_cycle(["avx", "avx2", "fma"])[0] == 32
    assert flop_per_cycle(["avx512f", "fma"])[0] == 64
    assert flop_per_cycle([]) is None
    peak = theoretical_peak({"flags": ["avx2", "fma"], "max_mhz": None, "current_mhz": 2000.0})
    assert peak is not None and peak["estimate"] is True
    assert peak["per_core_gflops"] == pytest.approx(64.0)  # 32 FLOP/cycle x 2 GHz
    assert theoretical_peak({"flags": ["sse2"], "max_mhz": 3000.0}) is None
