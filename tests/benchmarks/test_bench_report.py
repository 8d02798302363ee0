"""report.json schema, ratios and report.md from a fake run; environment capture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stpm_edge.benchmarks.environment import capture_environment, parse_cpuinfo
from stpm_edge.benchmarks.report import (
    SCHEMA_VERSION,
    build_report,
    prepare_out_dir,
    validate_report,
    write_report,
)
from stpm_edge.errors import OutputExistsError


def _record(model: str, precision: str, mode: str, mean: float, batch: int = 1) -> dict:
    samples = [mean * f for f in (0.9, 1.0, 1.1)]
    return {
        "model": model, "model_name": Path(model).stem, "backend": "ort-cpu",
        "runner": "onnxruntime[CPUExecutionProvider]", "device": "cpu", "precision": precision,
        "layout": "separate", "batch": batch, "threads": 2, "mode": mode, "iters": 3,
        "latency_ms": {"p50": mean, "p90": mean * 1.08, "p99": mean * 1.098, "mean": mean,
                       "std": mean * 0.08, "min": mean * 0.9, "max": mean * 1.1},
        "throughput_ips": batch * 1000.0 / mean, "gflop_per_image": 7.1,
        "achieved_gflops": 7.1 * batch * 1000.0 / mean, "roofline_fraction": 0.3,
        "peak_rss_mb": 321.0, "samples_ms": samples,
        "profile_top": [{"name": "Conv", "total_ms": 9.0, "ms_per_run": 3.0, "percent": 90.0,
                         "calls": 3}],
    }  # fmt: skip


def _fake_report() -> dict:
    records = [
        _record("m_fp32.onnx", "fp32", "model", 40.0),
        _record("m_int8.onnx", "int8", "model", 20.0),
        _record("m_int8.onnx", "int8", "model", 60.0, batch=4),
        _record("best.ckpt", "fp32", "torch", 100.0),
    ]
    records[-1].update(backend="torch-cpu", runner="torch-cpu")
    env = {"hostname": "box", "cpu": {"model": "Fake CPU"}, "gpus": [], "libraries": {}}
    roof = {"usable_cpus": 2, "matmul": None, "theoretical": None}
    return build_report("stpm-bench m_fp32.onnx m_int8.onnx --batch 1,4", env, roof, records)


def test_schema_and_ratios() -> None:
    rep = _fake_report()
    assert rep["schema_version"] == SCHEMA_VERSION and validate_report(rep) == []
    fp32, int8, int8_b4, torch = rep["records"]
    assert fp32["speedup_vs_torch"] == pytest.approx(2.5)
    assert int8["speedup_vs_torch"] == pytest.approx(5.0)
    assert int8["speedup_vs_fp32"] == pytest.approx(2.0)
    assert int8_b4["speedup_vs_torch"] is None and int8_b4["speedup_vs_fp32"] is None
    assert torch["speedup_vs_torch"] is None and fp32["speedup_vs_fp32"] is None


def test_validate_catches_problems() -> None:
    rep = _fake_report()
    del rep["records"][0]["latency_ms"]["p99"]
    rep["records"][1]["batch"] = "1"
    rep["records"][2]["mode"] = "other"
    del rep["command"]
    problems = "\n".join(validate_report(rep))
    assert "latency_ms.p99" in problems and "records[1].batch" in problems
    assert "records[2].mode" in problems and "'command'" in problems


def test_write_report_files(tmp_path: Path) -> None:
    rep = _fake_report()
    paths = write_report(rep, prepare_out_dir(tmp_path / "out"))
    parsed = json.loads(paths["json"].read_text())
    assert validate_report(parsed) == [] and parsed["command"] == rep["command"]
    md = paths["md"].read_text()
    assert f"```\n{rep['command']}\n```" in md
    assert "## PyTorch eager baseline" in md and "5.00x" in md and "2.00x" in md
    assert "| Conv | 3.000 | 90.0% | 3 |" in md
    for key in ("latency_cdf", "throughput_vs_batch", "comparison"):
        assert paths[key].stat().st_size > 1000 and f"]({paths[key].name})" in md


def test_prepare_out_dir(tmp_path: Path) -> None:
    prepare_out_dir(tmp_path / "a" / "b")  # creates parents
    prepare_out_dir(tmp_path / "a" / "b")  # existing but empty: fine
    (tmp_path / "a" / "b" / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        prepare_out_dir(tmp_path / "a" / "b")
    assert prepare_out_dir(tmp_path / "a" / "b", force=True).is_dir()


def test_parse_cpuinfo() -> None:
    text = (
        "processor\t: 0\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t: 0\n"
        "cpu MHz\t\t: 2400.5\nflags\t\t: fpu sse4_2 avx avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t: 1\n"
        "processor\t: 2\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t: 0\n"
    )
    info = parse_cpuinfo(text)
    assert info["model"] == "Test CPU 9000" and info["physical_cores"] == 2
    assert info["current_mhz"] == pytest.approx(2400.5)
    assert info["flags"] == ["avx", "avx2", "fma", "sse4_2"]


def test_environment_never_imports_torch() -> None:
    code = (
        "import json, sys\n"
        "from stpm_edge.benchmarks.environment import capture_environment\n"
        "env = capture_environment()\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'keys': sorted(env)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["torch"] is False
    assert {"cpu", "gpus", "libraries", "thread_env", "hostname", "python"} <= set(out["keys"])
    env = capture_environment()
    assert env["cpu"]["logical_cpus"] >= 1 and env["libraries"]["numpy"]
