"""stpm-bench's CPU-limit tools: the int8 roofline, the profile stage split, --recommend, and
OpenVINO as a benchmarked backend (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_bench_cli import stpm_test_double

from stpm_edge.benchmarks import flops, recommend
from stpm_edge.benchmarks.cli import main
from stpm_edge.benchmarks.profiling import stage_shares
from stpm_edge.benchmarks.report import validate_report
from stpm_edge.benchmarks.runner import add_compute_metrics


def test_int8_matmul_roofline_is_measured() -> None:
    gops = flops.int8_matmul_gops(128, reps=2, threads=1)
    assert np.isfinite(gops) and gops > 0


def test_bf16_matmul_roofline_is_measured() -> None:
    pytest.importorskip("openvino", reason="openvino not installed (pip install '.[openvino]')")
    assert flops.bf16_matmul_gflops(128, reps=2, threads=1) > 0


def test_int8_records_use_the_int8_roofline() -> None:
    roof = {"usable_cpus": 2, "theoretical": None,
            "matmul": {"gflops_by_threads": {"2": 40.0}, "gflops": 40.0},
            "int8_matmul": {"gops_by_threads": {"2": 160.0}, "gops": 160.0}}  # fmt: skip
    base = {"device": "cpu", "threads": 2, "throughput_ips": 100.0}
    int8 = add_compute_metrics({**base, "precision": "int8"}, 0.8, roof)
    fp32 = add_compute_metrics({**base, "precision": "fp32"}, 0.8, roof)
    assert int8["roofline_fraction"] == pytest.approx(80.0 / 160.0)
    assert fp32["roofline_fraction"] == pytest.approx(80.0 / 40.0)
    assert int8["roofline_ref"].startswith("int8") and fp32["roofline_ref"].startswith("fp32")
    roof["bf16_matmul"] = {"gops_by_threads": {"2": 80.0}, "gops": 80.0}
    bf16 = add_compute_metrics({**base, "precision": "bf16"}, 0.8, roof)
    assert bf16["roofline_fraction"] == pytest.approx(80.0 / 80.0)
    # an INT8 file on openvino-bf16: int8 convolutions, bf16 only where the graph is float
    mixed = add_compute_metrics({**base, "precision": "bf16", "graph_precision": "int8"}, 0.8, roof)
    assert mixed["roofline_fraction"] == pytest.approx(80.0 / 160.0)
    assert mixed["roofline_ref"].startswith("int8")


def _event(name: str, dur: float, ts: float) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "ts": ts, "args": {}}


def _staged_graph(path: Path) -> Path:
    """image -> /Cast (pre) -> /pair/teacher/Relu (backbones) -> /Conv, /Abs (tail)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], name="/Cast", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["x"], ["f"], name="/pair/teacher/Relu"),
        helper.make_node("Neg", ["f"], ["c"], name="/Conv"),
        helper.make_node("Abs", ["c"], ["y"], name="/Abs"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_stage_shares_attribute_renamed_kernels(tmp_path: Path) -> None:
    """ORT renames kernels after their output tensor (``c_nchwc``) or gives each consumer its own
    copy of a node (``/Abs/duplicated_token_7``, as it does with a DequantizeLinear the tail
    reads twice); they keep their stage. Its own reorders cannot be placed: "other"."""
    path = _staged_graph(tmp_path / "g.onnx")
    runs = [{"cat": "Session", "name": "model_run", "ts": t, "dur": 5} for t in (0, 10)]
    events = runs + [
        _event("/Cast", 1, 11),
        _event("QuantizeLinear_/pair/teacher/x_1", 6, 12),
        _event("c_nchwc", 2, 13),
        _event("/Abs", 1, 14),
        _event("/Abs/duplicated_token_7", 4, 14),
        _event("ReorderOutput_token_3", 6, 15),
        _event("/Abs", 99, 1),  # first run: dropped
    ]
    shares = stage_shares(events, path)
    assert shares == pytest.approx({"pre": 0.05, "backbones": 0.3, "tail": 0.35, "other": 0.3})


def test_openvino_stage_split_follows_fused_layers(tmp_path: Path) -> None:
    """OpenVINO runs a dequantisation fused with the tail's product as a node of its own name
    (``Multiply_123``): its ``original`` layers place it in the tail, not in "other"."""
    from stpm_edge.benchmarks.profiling import reduce_openvino_counts

    path = _staged_graph(tmp_path / "g.onnx")
    run = [
        {"name": "/Cast", "type": "Convert", "exec_type": "jit", "us": 10.0, "original": []},
        {"name": "/pair/teacher/Relu", "type": "Eltwise", "exec_type": "jit", "us": 50.0,
         "original": ["/pair/teacher/Relu", "/Abs"]},  # a tail op fused into a backbone node
        {"name": "Multiply_123", "type": "PowerStatic", "exec_type": "jit", "us": 30.0,
         "original": ["Multiply_123", "/Conv"]},
        {"name": "Reorder_7", "type": "Reorder", "exec_type": "jit", "us": 10.0, "original": []},
    ]  # fmt: skip
    stages = reduce_openvino_counts([run], path)["stages"]
    assert stages == pytest.approx({"pre": 0.1, "backbones": 0.5, "tail": 0.3, "other": 0.1})


def test_reduce_openvino_counts(tmp_path: Path) -> None:
    from stpm_edge.benchmarks.profiling import reduce_openvino_counts

    model = stpm_test_double(tmp_path / "m.onnx")
    run = [{"name": "c", "type": "Convolution", "exec_type": "jit", "us": 300.0},
           {"name": "sq", "type": "Multiply", "exec_type": "jit", "us": 100.0}]  # fmt: skip
    table = reduce_openvino_counts([run, run], None, top=5)
    assert table["runs"] == 2 and table["node_ms_per_run"] == pytest.approx(0.4)
    assert [r["name"] for r in table["by_op_type"]] == ["Convolution", "Multiply"]
    assert table["by_node"][0]["percent"] == pytest.approx(75.0)
    assert table["stages"] is None
    # the double has no /pair/ node: everything is pre-processing
    assert reduce_openvino_counts([run], model)["stages"]["pre"] == pytest.approx(1.0)


def _rec(model: str, backend: str, mean: float, batch: int = 1) -> dict:
    return {"model": model, "backend": backend, "mode": "model", "batch": batch, "threads": 2,
            "precision": "fp32", "runner": backend, "throughput_ips": batch * 1000 / mean,
            "latency_ms": {"mean": mean, "p50": mean}}  # fmt: skip


def test_recommend_picks_fastest_that_passes_parity() -> None:
    records = [_rec("a.onnx", "ort-cpu", 10.0), _rec("a.onnx", "openvino", 8.0),
               _rec("a.onnx", "openvino-bf16", 6.0), _rec("a.onnx", "openvino", 2.0, batch=4)]  # fmt: skip
    verdicts = {"ort-cpu": True, "openvino": True, "openvino-bf16": False}
    checked = []

    def check(model, backend, threads):
        checked.append(backend)
        return {"passed": verdicts[backend], "verdicts_match": verdicts[backend]}

    pick = recommend.recommend(records, check=check)
    assert pick["backend"] == "openvino" and pick["batch"] == 1  # smallest batch only
    assert checked == ["openvino-bf16", "openvino"]  # fastest first, stops at the first pass
    assert [r["backend"] for r in pick["rejected"]] == ["openvino-bf16"]
    verdicts["openvino"] = True
    verdicts["openvino-bf16"] = True
    assert recommend.recommend(records, check=check)["backend"] == "openvino-bf16"
    assert recommend.recommend(records, check=lambda *a: {"passed": False}) is None
    assert "No measured configuration" in recommend.render(None)[2]


def test_gate_note_reads_the_files_own_gate_record(tmp_path: Path) -> None:
    from onnx import helper, save

    def model(name: str, **props: str) -> str:
        m = helper.make_model(helper.make_graph([], "g", [], []))
        for key, value in props.items():
            m.metadata_props.add(key=key, value=value)
        save(m, tmp_path / name)
        return str(tmp_path / name)

    gate = {"images": 36, "category": "gravel", "image_loss": 0.0031, "pixel_loss": -0.0001}
    gated = model("gated.onnx", **{"stpm.precision": "int8", "stpm.int8_gate": json.dumps(gate)})
    note = recommend.gate_note(gated)
    assert "passed" in note and "36 test images of gravel" in note and "+0.0031" in note
    assert "without an accuracy gate" in recommend.gate_note(
        model("ungated.onnx", **{"stpm.precision": "int8"})
    )
    assert recommend.gate_note(model("fp32.onnx", **{"stpm.precision": "fp32"})) is None


def test_cli_openvino_int8_roofline_and_recommend(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="openvino not installed (pip install '.[openvino]')")
    model = stpm_test_double(tmp_path / "double_int8.onnx", "int8")
    out = tmp_path / "report"
    argv = [str(model), "--backend", "ort-cpu,openvino", "--threads", "1", "--warmup", "1",
            "--iters", "5", "--matmul-roofline", "--matmul-size", "128", "--recommend",
            "--profile", "--profile-iters", "3",
            "--no-plots", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    assert report["roofline"]["int8_matmul"]["gops_by_threads"]["1"] > 0
    runners = {r["backend"]: r for r in report["records"]}
    assert runners["openvino"]["runner"] == "openvino[CPU,f32]"
    assert runners["openvino"]["device"] == "cpu"
    for rec in runners.values():  # both engines profiled, each with its stage split
        assert rec["profile_top"] and sum(rec["profile_stages"].values()) == pytest.approx(1.0)
    assert all(r["roofline_ref"].startswith("int8") for r in report["records"])
    pick = report["recommendation"]
    fastest = min(report["records"], key=lambda r: r["latency_ms"]["mean"])
    assert pick["backend"] == fastest["backend"] and pick["parity"]["passed"]
    md = (out / "report.md").read_text()
    assert "measured int8 matmul" in md and "## Recommendation" in md
    # an INT8 file exported without --gate: the pick says its accuracy was not measured
    assert "INT8 file without an accuracy gate" in md
