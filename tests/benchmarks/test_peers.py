"""``stpm-bench --peer LABEL=FILE``: a foreign graph timed beside ours, reported as a peer.

The foreign graphs are tiny float32 NCHW conv nets with no ``stpm.*`` metadata (the shape of
anomalib's exports: one ``input`` (N, 3, H, W) float32 in [0, 1], several outputs). No speed
asserts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_bench_cli import stpm_test_double

from stpm_edge.benchmarks.cli import main
from stpm_edge.benchmarks.report import label, validate_report
from stpm_edge.benchmarks.runner import peer_feeds
from stpm_edge.errors import ConfigError

SIZE = 16


def foreign_graph(path: Path, inputs: int = 1, dims: tuple = ("batch", 3, SIZE, SIZE)) -> Path:
    """A conv net with ``inputs`` float inputs (summed), outputs ``anomaly_map`` and
    ``pred_score``, and no metadata: what another library's export looks like to us."""
    names = ["input"] + [f"input_{i}" for i in range(1, inputs)]
    nodes = [helper.make_node("Sum", names, ["x"])] if inputs > 1 else []
    x = "x" if inputs > 1 else "input"
    nodes += [
        helper.make_node("Conv", [x, "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c"], ["anomaly_map"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["anomaly_map"], ["pred_score"], axes=[1, 2, 3], keepdims=0),
    ]
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(dims)) for n in names],
        [
            helper.make_tensor_value_info(
                "anomaly_map", TensorProto.FLOAT, [dims[0], 1, *dims[2:]]
            ),
            helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, [dims[0]]),
        ],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def openvino_ir(onnx_path: Path) -> Path:
    """The ONNX as an OpenVINO IR (.xml + .bin) beside it, as anomalib's to_openvino writes."""
    ov = pytest.importorskip("openvino")
    xml = onnx_path.with_suffix(".xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def _run(tmp_path: Path, *extra: str) -> dict:
    ours = stpm_test_double(tmp_path / "ours.onnx")
    out = tmp_path / "report"
    argv = [str(ours), "--threads", "1", "--warmup", "1", "--iters", "3", "--no-plots",
            "--out", str(out), *extra]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    report["md"] = (out / "report.md").read_text()
    return report


def test_peer_is_timed_on_ort_cpu_and_reported_apart(tmp_path: Path) -> None:
    peer = foreign_graph(tmp_path / "foreign.onnx")
    rep = _run(tmp_path, "--backend", "ort-cpu", "--batch", "1,2", "--peer", f"anom={peer}",
               "--recommend")  # fmt: skip
    peers = [r for r in rep["records"] if r["peer"]]
    assert sorted(r["batch"] for r in peers) == [1, 2]  # a dynamic batch axis = --batch
    for rec in peers:
        assert rec["peer"] == "anom" and rec["model"] == str(peer)
        assert rec["model_name"] == "peer:anom" and rec["mode"] == "model"
        assert rec["runner"].startswith("onnxruntime") and rec["threads"] == 1
        assert rec["iters"] == 3 and rec["precision"] is None
        assert rec["speedup_vs_fp32"] is None and rec["speedup_vs_torch"] is None
        best = rec["own_best"]  # our fastest model record at the same batch and threads
        assert best["label"] == f"ours ort-cpu fp32 b{rec['batch']} t1 model"
        assert best["speedup"] == pytest.approx(rec["latency_ms"]["mean"] / best["latency_ms_mean"])
        assert label(rec) == f"peer:anom ort-cpu b{rec['batch']} t1 model"
    assert all(r["peer"] is None for r in rep["records"] if r["model"] != str(peer))
    assert rep["flops"][str(peer)]["gflop_per_image"] > 0  # a foreign ONNX is counted too
    # never recommended (the tiny peer is faster than ours): ranking and pick are our file only
    ours = str(tmp_path / "ours.onnx")
    assert rep["recommendation"]["model"] == ours
    assert [r["model"] for r in rep["recommendation"]["ranking"]] == [ours]
    md = rep["md"]
    peer_section = md.split("## Peers")[1]
    assert "peer:anom ort-cpu b1 t1 model" in peer_section
    assert "peer:anom" not in md.split("## Peers")[0]  # not in our own tables
    assert "ours ort-cpu fp32 b1 t1 model" in peer_section


def test_peer_ir_runs_on_openvino_only(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    onnx_peer = foreign_graph(tmp_path / "foreign.onnx")
    xml = openvino_ir(foreign_graph(tmp_path / "ir" / "foreign.onnx"))
    rep = _run(tmp_path, "--backend", "ort-cpu,openvino", "--peer", f"p_onnx={onnx_peer}",
               "--peer", f"p_ir={xml}")  # fmt: skip
    runs = sorted((r["peer"], r["backend"]) for r in rep["records"] if r["peer"])
    assert runs == [("p_ir", "openvino"), ("p_onnx", "openvino"), ("p_onnx", "ort-cpu")]
    ir = next(r for r in rep["records"] if r["peer"] == "p_ir")
    assert ir["runner"].startswith("openvino[CPU,f32]") and ir["threads"] == 1
    assert ir["own_best"]["label"].startswith("ours ")
    assert ir["own_best"]["conv_floor"] is None  # no --profile: no floor
    assert rep["skipped"] == []


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_profiled_peer_gets_kernel_times_and_a_conv_floor(tmp_path: Path, backend: str) -> None:
    """With --profile a peer is profiled like ours (op tables, kernel and convolution time) but
    has no stage split (no stpm graph), and the peer table gives our convolution floor."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    peer = foreign_graph(tmp_path / "foreign.onnx")
    rep = _run(tmp_path, "--backend", backend, "--peer", f"anom={peer}", "--profile",
               "--profile-iters", "3")  # fmt: skip
    rec = next(r for r in rep["records"] if r["peer"])
    ours = next(r for r in rep["records"] if not r["peer"])
    # The peer's op table has its convolution; which op ranks first is left to timing noise
    # (a 16-pixel conv and a reduction both take microseconds; CI once ranked ReduceMax first).
    assert any("Conv" in row["name"] and row["total_ms"] > 0 for row in rec["profile_top"])
    assert 0 < rec["profile_conv_ms"] <= rec["profile_node_ms"]
    assert rec.get("profile_stages") is None and ours["profile_stages"] is not None
    floor = rec["own_best"]["conv_floor"]
    share = ours["profile_conv_ms"] / ours["profile_node_ms"]
    assert floor == pytest.approx(share * ours["latency_ms"]["mean"] / rec["latency_ms"]["mean"])
    peer_row = next(
        line
        for line in rep["md"].split("## Peers")[1].splitlines()
        if line.startswith("| peer:") and line.count("|") == 7
    )
    assert peer_row.rstrip(" |").endswith(f"{floor:.2f}x")
    assert "Kernel time" in rep["md"].split("### peer:anom")[1]


@pytest.mark.parametrize(
    ("spec", "backend", "message"),
    [
        ("anom={missing}", "ort-cpu", "--peer anom: {missing} not found"),
        ("{peer}", "ort-cpu", "is invalid"),  # no LABEL=
        ("bad label={peer}", "ort-cpu", "is invalid"),
        ("anom={txt}", "ort-cpu", "--peer anom: cannot time"),
        ("anom={xml}", "ort-cpu", "--peer anom: {xml} is an OpenVINO IR; --backend ort-cpu"),
    ],
)
def test_peer_errors_name_the_flag_and_file(
    tmp_path: Path, capsys, spec: str, backend: str, message: str
) -> None:
    paths = {"peer": foreign_graph(tmp_path / "foreign.onnx"), "missing": tmp_path / "no.onnx",
             "txt": tmp_path / "graph.txt", "xml": tmp_path / "model.xml"}  # fmt: skip
    paths["txt"].write_text("x")
    paths["xml"].write_text("<net/>")  # only the suffix is read before the run
    ours = stpm_test_double(tmp_path / "ours.onnx")
    out = tmp_path / "r"
    argv = [str(ours), "--backend", backend, "--peer", spec.format(**paths), "--out", str(out)]
    assert main(argv) == 2
    assert message.format(**paths) in capsys.readouterr().err
    assert not out.exists()  # validated before anything was written


def test_peer_label_twice_is_refused(tmp_path: Path, capsys) -> None:
    peer = foreign_graph(tmp_path / "foreign.onnx")
    ours = stpm_test_double(tmp_path / "ours.onnx")
    argv = [str(ours), "--peer", f"a={peer}", "--peer", f"a={peer}", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "--peer label 'a' is given twice" in capsys.readouterr().err


def test_peer_with_two_inputs_is_skipped_with_the_reason(tmp_path: Path) -> None:
    peer = foreign_graph(tmp_path / "two.onnx", inputs=2)
    rep = _run(tmp_path, "--backend", "ort-cpu", "--peer", f"two={peer}")
    assert not [r for r in rep["records"] if r["peer"]]
    (skip,) = rep["skipped"]
    assert skip["label"] == "peer:two ort-cpu b1 t1 model"
    assert "--peer two: the graph has 2 inputs ['input', 'input_1']" in skip["reason"]
    assert "peer:two" in rep["md"].split("## Skipped")[1]


def test_peer_feeds_follow_the_declared_shape_and_dtype() -> None:
    feeds = peer_feeds({"input": (np.dtype(np.float32), (-1, 3, 8, 8))}, 3, 0, "p")
    x = feeds["input"]
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() < 1.0 and x.std() > 0.1  # random, image-like range
    feeds = peer_feeds({"image": (np.dtype(np.uint8), (1, 8, 8, 3))}, 1, 0, "p")
    assert feeds["image"].shape == (1, 8, 8, 3) and feeds["image"].dtype == np.uint8
    assert feeds["image"].max() > 200  # spans 0..255, not 0..1


def test_peer_feeds_refuse_what_they_cannot_fill() -> None:
    with pytest.raises(ConfigError, match=r"--peer p: the graph has 2 inputs"):
        peer_feeds({"a": (np.dtype(np.float32), (1, 3)), "b": (np.dtype(np.float32), (1, 3))},
                   1, 0, "p")  # fmt: skip
    with pytest.raises(ConfigError, match=r"--peer p: .*dynamic axis besides the batch"):
        peer_feeds({"input": (np.dtype(np.float32), (-1, 3, -1, -1))}, 1, 0, "p")
