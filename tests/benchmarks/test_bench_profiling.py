"""Reduction of a small hand-written ONNX Runtime profiler trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stpm_edge.benchmarks.profiling import is_convolution, reduce_ort_profile
from stpm_edge.errors import ConfigError


def _node(name: str, op: str, ts: int, dur: int, suffix: str = "_kernel_time") -> dict:
    return {"cat": "Node", "name": name + suffix, "ts": ts, "dur": dur, "ph": "X",
            "args": {"op_name": op, "provider": "CPUExecutionProvider"}}  # fmt: skip


def _trace() -> list[dict]:
    events = [{"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 500}]
    # run 0 (cold, dropped by default), then runs 1 and 2
    for run, (ts, scale) in enumerate([(1000, 10), (2000, 1), (3000, 1)]):
        events.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": 900})
        events.append(_node("conv1", "Conv", ts + 10, 300 * scale))
        events.append(_node("conv1", "Conv", ts + 5, 0, "_fence_before"))
        events.append(_node("conv2", "Conv", ts + 400, 100 * scale))
        events.append(_node("relu", "Relu", ts + 600, 50 * scale))
        events.append(_node("mul", "Mul", ts + 700, 50 * scale + run))
    return events


def test_reduce_by_op_type_and_node(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(_trace()))
    table = reduce_ort_profile(path, top=3)
    assert table["runs"] == 2
    by_type = {r["name"]: r for r in table["by_op_type"]}
    assert list(by_type) == ["Conv", "Mul", "Relu"]  # 800 us, 103 us, 100 us over 2 runs
    assert by_type["Conv"]["ms_per_run"] == pytest.approx(0.4)
    assert by_type["Conv"]["calls"] == 4  # fences are not counted
    assert by_type["Mul"]["total_ms"] == pytest.approx(0.103)
    assert sum(r["percent"] for r in table["by_op_type"]) == pytest.approx(100.0)
    assert table["node_ms_per_run"] == pytest.approx((800 + 100 + 103) / 1000 / 2)
    assert table["conv_ms_per_run"] == pytest.approx(800 / 1000 / 2)  # Relu and Mul are not
    nodes = table["by_node"]
    assert [n["name"] for n in nodes] == ["conv1", "conv2", "mul"]
    assert nodes[0]["op_type"] == "Conv" and nodes[0]["ms_per_run"] == pytest.approx(0.3)


def test_keep_first_run() -> None:
    table = reduce_ort_profile(_trace(), top=10, skip_first_run=False)
    assert table["runs"] == 3
    conv = next(r for r in table["by_op_type"] if r["name"] == "Conv")
    assert conv["total_ms"] == pytest.approx((3000 + 1000 + 800) / 1000)


def test_bad_trace_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        reduce_ort_profile(path)


@pytest.mark.parametrize(
    ("op", "conv"),
    [("Conv", True), ("QLinearConv", True), ("ConvInteger", True), ("NhwcFusedConv", True),
     ("GroupConvolution", True), ("Convolution", True), ("MatMul", False), ("Reorder", False),
     ("Subgraph", False), ("QLinearMatMul", False), ("Convert", False), ("ConvInteger", True),
     ("QLinearConvTranspose", True)],
)  # fmt: skip
def test_convolution_kernels_of_both_engines(op: str, conv: bool) -> None:
    assert is_convolution(op) is conv
