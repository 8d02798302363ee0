"""The demo report holds the speed figures the README sends readers to (camera FPS, model img/s,
training img/s), taken from the run's own records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stpm_edge import demo


def test_mean_train_ips_leaves_out_the_first_epoch(tmp_path: Path) -> None:
    # epoch 1 also fills the teacher-feature cache: the later epochs are the steady state
    log = tmp_path / "train_log.jsonl"
    rows = [{"epoch": e, "images_per_s": ips} for e, ips in ((1, 2.0), (2, 9.0), (3, 11.0))]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert demo._mean_train_ips(log) == pytest.approx(10.0)
    log.write_text(json.dumps(rows[0]) + "\n")
    assert demo._mean_train_ips(log) == pytest.approx(2.0)  # one epoch: that epoch


def _result(run: Path) -> demo.DemoResult:
    metrics = {
        "image_auroc": 0.9,
        "pixel_auroc": 0.95,
        "aupro": 0.8,
        "image_f1_max": 0.85,
        "accuracy_at_threshold": 0.75,
    }
    export = {
        "size_mb": 1.0,
        "metrics": {"image_auroc": 0.9, "pixel_auroc": 0.95},
        "parity": {"max_rel_map_error": 1e-6, "finite": True},
        "path": str(run / "brick" / "export" / "m_fp32.onnx"),
    }
    return demo.DemoResult(
        run_dir=run,
        metrics={"brick": metrics},
        exports={"brick": {"fp32": export}},
        camera={"frames": 180, "ng": 12, "fps": 43.21, "latency_p50_ms": 15.5},
        timings={"train brick": 61.0},
        train_ips={"brick": 12.34},
    )


def test_report_carries_camera_fps_model_and_training_throughput(tmp_path: Path) -> None:
    run = tmp_path / "demo_out" / "run-1"
    run.mkdir(parents=True)
    bench = {
        "records": [
            {
                "model": "m_fp32.onnx",
                "precision": "fp32",
                "latency_ms": {"p50": 16.0, "p99": 19.0},
                "throughput_ips": 61.7,
            }
        ]
    }
    cfg = demo.DemoConfig(out=tmp_path / "demo_out")
    report = demo.write_demo_report(_result(run), cfg, bench).read_text()
    brick_row = next(line for line in report.splitlines() if line.startswith("| brick | 0.9000"))
    assert brick_row.rstrip(" |").endswith("12.3")  # training img/s column
    assert "frames 180, NG 12, FPS 43.21" in report
    assert "| m_fp32.onnx | fp32 | 16.00 | 19.00 | 61.7 |" in report
    assert f"batch {cfg.batch_size}" in report  # the training batch the img/s belongs to
    live = next(line for line in report.splitlines() if line.startswith("stpm-camera"))
    assert f"--model {run / 'brick' / 'export' / 'm_fp32.onnx'}" in live and "--http" in live
    assert f"stpm-tune {run / 'brick' / 'best.ckpt'}" in report
    summary = json.loads((run / "summary.json").read_text())
    assert summary["camera"]["fps"] == 43.21 and summary["train_ips"] == {"brick": 12.34}
    assert (tmp_path / "demo_out" / "latest").resolve() == run.resolve()
