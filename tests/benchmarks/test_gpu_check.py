"""benchmarks/gpu/check.sh and its helper, on a machine without a GPU: the script must stop at once
with a clear message and write nothing; the helper's IO-binding timing and summary run on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_bench_cli import stpm_test_double

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu" / "check.sh"


def load_helper():
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT.with_name("gpu_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(tmp_path: Path, nvidia_smi: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NVIDIA_SMI=nvidia_smi, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path / "report"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_syntax() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_without_nvidia_smi_stops_and_writes_nothing(tmp_path: Path) -> None:
    done = run_script(tmp_path, str(tmp_path / "no-such-nvidia-smi"))
    assert done.returncode == 3, done.stderr
    assert "no NVIDIA GPU" in done.stderr and "nothing was run" in done.stderr
    assert not (tmp_path / "report").exists()


def test_nvidia_smi_without_devices_stops(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    fake.chmod(0o755)
    done = run_script(tmp_path, str(fake))
    assert done.returncode == 3, done.stderr
    assert "No devices were found" in done.stderr
    assert not (tmp_path / "report").exists()


def fake_gpu(tmp_path: Path) -> str:
    """An nvidia-smi that reports one GPU (the rest of this machine still has none)."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA Fake GPU 80GB'\nexit 0\n")
    fake.chmod(0o755)
    return str(fake)


def test_missing_cuda_prerequisites_stop_before_writing(tmp_path: Path) -> None:
    done = run_script(tmp_path, fake_gpu(tmp_path))
    assert done.returncode == 4, done.stderr
    assert "no CUDAExecutionProvider" in done.stderr  # this machine's onnxruntime is CPU-only
    assert "nothing was measured" in done.stderr
    assert not (tmp_path / "report").exists()


def test_wheel_pieces_need_their_name(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "part-aa").write_bytes(b"PK")
    done = run_script(tmp_path, fake_gpu(tmp_path), "--ort-wheel-parts", str(parts))
    assert done.returncode == 2 and "wheel-name missing" in done.stderr


def test_unknown_argument_is_a_usage_error(tmp_path: Path) -> None:
    done = run_script(tmp_path, "nvidia-smi", "--bogus")
    assert done.returncode == 2 and "unknown argument --bogus" in done.stderr


def test_iobinding_records_both_modes(tmp_path: Path) -> None:
    gpu_report = load_helper()
    model = stpm_test_double(tmp_path / "m.onnx")
    out = tmp_path / "iob.json"
    argv = ["iobinding", str(model), "--backend", "ort-cpu", "--batch", "1,2"]
    assert gpu_report.main([*argv, "--seconds", "0.01", "--out", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    assert [(r["batch"], r["io_binding"]) for r in records] == [
        (1, False),
        (1, True),
        (2, False),
        (2, True),
    ]
    assert all(r["iters"] >= 10 and r["latency_ms"]["mean"] > 0 for r in records)


def _rec(mode: str, precision: str | None, batch: int, mean: float, **kw) -> dict:
    return {
        "mode": mode,
        "precision": precision,
        "batch": batch,
        "latency_ms": {"mean": mean},
        **kw,
    }


def test_summary_table(tmp_path: Path) -> None:
    gpu_report = load_helper()
    (tmp_path / "bench").mkdir()
    bench = {
        "created": "2026-01-01T00:00:00Z",
        "environment": {"gpus": [{"name": "NVIDIA H200", "driver": "570"}], "libraries": {}},
        "records": [
            _rec("torch", "fp16-autocast", 1, 4.0, input_size=[256, 256]),
            _rec("model", "fp32", 1, 2.0, input_size=[256, 256]),
            _rec("model", "fp16", 1, 1.0, input_size=[256, 256]),
        ],
        "skipped": [{"label": "ort-cuda b8", "reason": "out of memory\nmore"}],
    }
    iob = {"records": [_rec("model", "fp16", 1, 0.5, io_binding=True)]}
    (tmp_path / "bench" / "report.json").write_text(json.dumps(bench))
    (tmp_path / "iobinding.json").write_text(json.dumps(iob))
    assert gpu_report.main(["summary", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# GPU check: NVIDIA H200")
    assert "| fp16 | 1 | 4.00 ms | 1.00 ms | 0.50 ms | 4.00x | 8.00x |" in text
    assert "| fp32 | 1 | 4.00 ms | 2.00 ms | — | 2.00x | — |" in text
    assert "- ort-cuda b8: out of memory" in text
    assert "input 256x256" in text
    assert gpu_report.main(["summary", str(tmp_path), "--gpu", "NVIDIA X"]) == 0
    assert (tmp_path / "README.md").read_text().startswith("# GPU check: NVIDIA X")
