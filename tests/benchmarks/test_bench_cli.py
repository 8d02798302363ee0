"""End to end: stpm-bench on a tiny STPM-contract ONNX *test double*; report files parse.

The double (``stpm_test_double``) honours the graph contract of DESIGN.md §5 (uint8 NHWC input
``image``; outputs ``anomaly_map`` (N,1,H,W), ``score`` (N,), ``score_normalized`` (N,); the
``stpm.*`` metadata) but computes a meaningless map from one tiny convolution. No speed asserts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stpm_edge.benchmarks.cli import main
from stpm_edge.benchmarks.report import validate_report

SIZE = 32
CONV_FLOPS = 2 * 4 * SIZE * SIZE * 3 * 3 * 3


def stpm_test_double(path: Path, precision: str = "fp32", size: int = SIZE) -> Path:
    """Write a tiny graph with the stpm-export I/O and metadata contract (a TEST DOUBLE)."""
    rng = np.random.default_rng(0)
    consts = {
        "inv255": np.array(1 / 255, np.float32),
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "thr": np.array(0.5, np.float32),
        "rng": np.array(2.0, np.float32),
        "half": np.array(0.5, np.float32),
        "zero": np.array(0.0, np.float32),
        "one": np.array(1.0, np.float32),
    }
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["xf"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["xt", "inv255"], ["x"]),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "c"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["anomaly_map"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["score", "thr"], ["s1"]),
        helper.make_node("Div", ["s1", "rng"], ["s2"]),
        helper.make_node("Add", ["s2", "half"], ["s3"]),
        helper.make_node("Clip", ["s3", "zero", "one"], ["score_normalized"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stpm_test_double",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])],
        [
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, size, size]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("score_normalized", TensorProto.FLOAT, ["N"]),
        ],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    calibration = {"image_threshold": 0.5, "pixel_threshold": 0.4, "score_min": 0.0,
                   "score_max": 2.0, "source": "val_good"}  # fmt: skip
    props = {
        "stpm.format": "stpm-edge-onnx/1",
        "stpm.version": "0.0.0-test-double",
        "stpm.backbone": "test-double",
        "stpm.layers": json.dumps(["conv"]),
        "stpm.input_size": json.dumps([size, size]),
        "stpm.input_format": "uint8_nhwc",
        "stpm.color_order": "BGR",
        "stpm.mean": json.dumps([0.485, 0.456, 0.406]),
        "stpm.std": json.dumps([0.229, 0.224, 0.225]),
        "stpm.calibration": json.dumps(calibration),
        "stpm.image_threshold": "0.5",
        "stpm.pixel_threshold": "0.4",
        "stpm.precision": precision,
        "stpm.layout": "separate",
        "stpm.blur_sigma": "0.0",
        "stpm.score_reduction": "max",
        "stpm.checkpoint_sha256": "0" * 64,
        "stpm.outputs": json.dumps(["anomaly_map", "score", "score_normalized"]),
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def doubles(tmp_path: Path) -> tuple[Path, Path]:
    return (
        stpm_test_double(tmp_path / "double_fp32.onnx", "fp32"),
        stpm_test_double(tmp_path / "double_fp16.onnx", "fp16"),
    )


def test_cli_end_to_end(tmp_path: Path, doubles: tuple[Path, Path]) -> None:
    out = tmp_path / "report"
    argv = [str(doubles[0]), str(doubles[1]), "--backend", "ort-cpu", "--batch", "1,2",
            "--threads", "1", "--warmup", "1", "--iters", "5", "--e2e", "--frame-size", "64x48",
            "--profile", "--profile-iters", "3", "--matmul-roofline", "--matmul-size", "128",
            "--out", str(out), "--name", "ci-box"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    assert report["name"] == "ci-box"
    assert report["command"].startswith("stpm-bench ") and "--e2e" in report["command"]
    records = report["records"]
    modes = sorted((r["mode"], r["precision"], r["batch"]) for r in records)
    assert modes == sorted(
        (m, p, b) for m in ("model", "e2e") for p in ("fp32", "fp16") for b in (1, 2)
    )
    for rec in records:
        assert rec["iters"] == 5 and len(rec["samples_ms"]) == 5
        assert rec["threads"] == 1 and rec["layout"] == "separate"
        assert rec["runner"].startswith("onnxruntime")
        assert rec["gflop_per_image"] == pytest.approx(
            report["flops"][rec["model"]]["gflop_per_image"]
        )
        assert rec["gflop_per_image"] * 1e9 >= CONV_FLOPS
        assert rec["achieved_gflops"] == pytest.approx(
            rec["gflop_per_image"] * rec["throughput_ips"]
        )
        assert rec["roofline_fraction"] is not None
    fp16_model = next(r for r in records if r["mode"] == "model" and r["precision"] == "fp16")
    assert fp16_model["speedup_vs_fp32"] is not None
    profiled = [r for r in records if r["mode"] == "model"]
    assert all(r["profile_top"] for r in profiled)
    assert {row["name"] for r in profiled for row in r["profile_top"]} >= {"Conv"}
    assert all(Path(r["profile_file"]).is_file() for r in profiled)
    assert str(out) in profiled[0]["profile_file"]  # never in the working directory
    matmul = report["roofline"]["matmul"]
    assert matmul["n"] == 128 and list(matmul["gflops_by_threads"]) == ["1"]
    assert all(r["frame_size"] == [64, 48] for r in records if r["mode"] == "e2e")
    md = (out / "report.md").read_text()
    assert report["command"] in md
    assert "## Inference" in md and "## End to end" in md and "## Profiles" in md
    for png in ("latency_cdf.png", "throughput_vs_batch.png", "comparison.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rounds_interleave_and_pool(tmp_path: Path, doubles, monkeypatch) -> None:
    """--rounds 3: A, B, A, B, A, B with a third of the budget each, profiled in round 1 only,
    each configuration's samples pooled into one record with its per-round p50s."""
    from stpm_edge.benchmarks import cli

    order = []
    real = cli.run_job

    def spy(job):
        order.append((Path(job.model).stem, job.policy.iters, job.profile_prefix is not None))
        return real(job)

    monkeypatch.setattr(cli, "run_job", spy)
    out = tmp_path / "r"
    argv = [str(doubles[0]), str(doubles[1]), "--backend", "ort-cpu", "--threads", "1",
            "--warmup", "0", "--iters", "6", "--rounds", "3", "--profile", "--profile-iters", "2",
            "--out", str(out), "--no-plots"]  # fmt: skip
    assert main(argv) == 0
    names = ["double_fp32", "double_fp16"] * 3
    assert [o[0] for o in order] == names
    assert [o[1] for o in order] == [2] * 6
    assert [o[2] for o in order] == [True, True] + [False] * 4
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    for rec in report["records"]:
        assert rec["iters"] == 6 and len(rec["samples_ms"]) == 6 and rec["rounds"] == 3
        assert len(rec["round_p50_ms"]) == 3 and rec["profile_top"]
        assert rec["latency_ms"]["p50"] == pytest.approx(np.median(rec["samples_ms"]), abs=1e-3)
    assert main([*argv[:-3], "--rounds", "0", "--out", str(tmp_path / "x")]) == 2


def test_cli_refuses_non_empty_out(tmp_path: Path, doubles: tuple[Path, Path], capsys) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    argv = [str(doubles[0]), "--iters", "2", "--warmup", "0", "--out", str(out), "--no-plots"]
    assert main(argv) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert main([*argv, "--force"]) == 0
    assert (out / "report.json").is_file() and (out / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch", "0"], "--batch"),
        (["--backend", "onnx-magic"], "--backend"),
        (["--frame-size", "big"], "--frame-size"),
    ],
)
def test_cli_bad_flags(tmp_path: Path, doubles: tuple[Path, Path], capsys, extra, message) -> None:
    argv = [str(doubles[0]), "--out", str(tmp_path / "r"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # validated before anything was written


def test_cli_missing_model(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.onnx not found" in capsys.readouterr().err


def test_cli_without_torch_baseline_never_imports_torch(tmp_path: Path) -> None:
    """Subprocess: the whole CLI run (isolated jobs too) leaves torch out of sys.modules."""
    model = stpm_test_double(tmp_path / "double.onnx")
    out = tmp_path / "r"
    code = (
        "import sys\n"
        "from stpm_edge.benchmarks.cli import main\n"
        f"rc = main([{str(model)!r}, '--iters', '3', '--warmup', '0', '--isolate', '--no-plots',"
        f" '--out', {str(out)!r}])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == [] and report["records"][0]["iters"] == 3


def test_cli_torch_baseline(tmp_path: Path) -> None:
    """--torch-baseline: a torch record at the checkpoint's size and a ratio for the ONNX."""
    pytest.importorskip("torch")
    try:
        from stpm_edge.checkpoint import save_checkpoint
        from stpm_edge.model import STPM, ModelConfig
    except ImportError:
        pytest.skip("stpm_edge.checkpoint / stpm_edge.model not available yet")
    ckpt = tmp_path / "tiny.ckpt"
    config = ModelConfig(backbone="resnet18", image_size=SIZE * 2, teacher_weights="random")
    from stpm_edge.calibration import calibrate_manual  # a complete, checked calibration

    save_checkpoint(ckpt, STPM(config), calibrate_manual(0.5))
    model = stpm_test_double(tmp_path / "double.onnx", size=SIZE * 2)
    out = tmp_path / "r"
    argv = [str(model), "--torch-baseline", str(ckpt), "--iters", "2", "--warmup", "1",
            "--threads", "1", "--no-plots", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    torch_rec = next(r for r in report["records"] if r["mode"] == "torch")
    assert torch_rec["backend"] == "torch-cpu" and torch_rec["precision"] == "fp32"
    assert torch_rec["input_size"] == [SIZE * 2, SIZE * 2] and torch_rec["iters"] == 2
    onnx_rec = next(r for r in report["records"] if r["mode"] == "model")
    assert onnx_rec["speedup_vs_torch"] == pytest.approx(
        torch_rec["latency_ms"]["mean"] / onnx_rec["latency_ms"]["mean"]
    )
    assert "## PyTorch eager baseline" in (out / "report.md").read_text()
