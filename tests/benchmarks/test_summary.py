"""python -m stpm_edge.benchmarks.summary: the README's speed table from report.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stpm_edge.benchmarks.report import build_report
from stpm_edge.benchmarks.summary import main, summarize
from stpm_edge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "benchmarks/reports/cpu-epyc-2core/int8_targets/efficientnet_lite0/report.json"


def _record(name: str, precision: str, mean: float, batch: int = 1, **extra) -> dict:
    rec = {
        "model": f"/tmp/{name}.onnx", "model_name": name, "backend": "ort-cpu",
        "runner": "onnxruntime[CPUExecutionProvider]", "device": "cpu", "precision": precision,
        "layout": "separate", "batch": batch, "threads": 2, "mode": "model", "iters": 3,
        "latency_ms": {"p50": mean - 0.1, "p90": mean, "p99": mean, "mean": mean, "std": 0.1,
                       "min": mean - 0.2, "max": mean + 0.2},
        "throughput_ips": batch * 1000.0 / mean, "gflop_per_image": 1.3,
        "achieved_gflops": 1.3 * batch * 1000.0 / mean, "roofline_fraction": None,
        "peak_rss_mb": 300.0,
    }  # fmt: skip
    rec.update(extra)
    return rec


def _write(tmp_path: Path, records: list[dict], **top) -> Path:
    env = {"hostname": "box", "cpu": {}, "gpus": [], "libraries": {}}
    report = build_report("stpm-bench x.onnx", env, {"usable_cpus": 2}, records, name="box")
    report.update(top)
    folder = tmp_path / "my-box"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(report))
    return folder / "report.json"


def _cells(lines: list[str]) -> list[list[str]]:
    """The cells of every markdown table row, header rows excluded."""
    rows = [line.strip("| ").split(" | ") for line in lines if line.startswith("| ")]
    return [r for r in rows if r[0] not in ("model", "peer")]


def _rows(lines: list[str]) -> dict[str, list[str]]:
    """Our records' rows by their first two cells ("name backend")."""
    return {f"{r[0]} {r[1]}": r for r in _cells(lines) if r[0] != "anomalib"}


def test_rows_roofline_of_own_precision_and_tail_budget_mark(tmp_path: Path) -> None:
    int8 = _record(
        "int8_cpu",
        "int8",
        7.4,
        roofline_fraction=0.206,
        roofline_ref="int8 matmul 863.4 G/s",
        profile_stages={"tail": 0.29},
    )
    fp32 = _record(
        "fp32",
        "fp32",
        11.3,
        roofline_fraction=0.545,
        roofline_ref="fp32 matmul 208.0 G/s",
        profile_stages={"tail": 0.10},
    )
    torch = _record("lite0", "fp32", 30.0, backend="torch-cpu", mode="torch")
    e2e = _record("fp32", "fp32", 14.0, mode="e2e")  # fmt: skip
    lines = summarize(_write(tmp_path, [int8, fp32, torch, e2e]))
    assert lines[0] == "### my-box"
    rows = _rows(lines)
    assert set(rows) == {"int8_cpu ort-cpu", "fp32 ort-cpu"}  # model records only
    assert rows["int8_cpu ort-cpu"] == [
        "int8_cpu", "ort-cpu", "int8", "1", "2", "7.30", "135.1", "176", "20.6% of int8",
        "29.0% (>10%)",
    ]  # fmt: skip
    # exactly at the budget is within it
    assert rows["fp32 ort-cpu"][-2:] == ["54.5% of fp32", "10.0%"]


def test_peer_ratio_is_our_latency_over_the_peers(tmp_path: Path) -> None:
    ours = _record("int8_cpu", "int8", 7.4)
    slower = _record("int8_cpu", "int8", 9.0, backend="openvino")
    peer = _record("peer:anomalib", None, 10.0, peer="anomalib")
    lines = summarize(_write(tmp_path, [ours, slower, peer]))
    cells = _cells(lines)
    assert [r[0] for r in cells] == ["int8_cpu", "int8_cpu", "anomalib"]  # peers in their table
    peer_row = cells[-1]
    assert peer_row[4:6] == ["9.90", "10.00"]  # peer p50, mean
    assert peer_row[6].startswith("int8_cpu ort-cpu int8 b1 t2")  # our fastest, not openvino
    assert peer_row[7:] == ["7.40", "0.74x", "-"]  # not profiled: no conv floor


def test_peer_row_gives_the_reports_conv_floor(tmp_path: Path) -> None:
    ours = _record("int8_cpu", "int8", 8.0, profile_node_ms=6.0, profile_conv_ms=5.4)
    peer = _record("peer:anomalib", None, 10.0, peer="anomalib")
    lines = summarize(_write(tmp_path, [ours, peer]))
    assert _cells(lines)[-1][-2:] == ["0.80x", "0.72x"]  # 0.9 of our 8.0 ms / the peer's 10.0


def test_batch_and_threads_filters(tmp_path: Path) -> None:
    recs = [_record("int8", "int8", 7.0), _record("int8", "int8", 25.0, batch=4),
            _record("int8", "int8", 12.0, threads=1)]  # fmt: skip
    path = _write(tmp_path, recs)
    assert [r[3:5] for r in _rows(summarize(path, batch=4)).values()] == [["4", "2"]]
    assert [r[3:5] for r in _rows(summarize(path, threads=1)).values()] == [["1", "1"]]
    assert "(no model record at batch 8, threads any)" in summarize(path, batch=8)


def test_recommendation_line(tmp_path: Path) -> None:
    rec = {"model": "/tmp/int8_cpu.onnx", "backend": "openvino", "precision": "int8",
           "batch": 1, "threads": 2, "latency_ms_p50": 15.72, "throughput_ips": 63.11}  # fmt: skip
    lines = summarize(_write(tmp_path, [_record("int8_cpu", "int8", 7.0)], recommendation=rec))
    assert (
        "Recommendation: int8_cpu.onnx on openvino (int8, batch 1, 2 threads): "
        "p50 15.72 ms, 63.1 img/s."
    ) in lines


def test_missing_or_invalid_report_is_a_config_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match=r"report file not found: .*nope\.json\n  Note: "):
        summarize(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read .* as JSON"):
        summarize(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"schema_version": "other/2"}')
    with pytest.raises(ConfigError, match="not a stpm-bench/1 report"):
        summarize(tmp_path / "other.json")
    assert main([str(tmp_path / "nope.json")]) == 2
    assert "error: report file not found" in capsys.readouterr().err


def test_committed_report_gives_a_row_per_model_record(capsys) -> None:
    assert main([str(COMMITTED), "--batch", "1", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    report = json.loads(COMMITTED.read_text())
    rows = _rows(out.splitlines())
    models = [r for r in report["records"] if r["mode"] == "model" and not r.get("peer")]
    assert len(rows) == len(models) == 10
    for rec in models:
        row = rows[f"{rec['model_name']} {rec['backend']}"]
        assert row[5] == f"{rec['latency_ms']['p50']:.2f}"
    assert "### efficientnet_lite0" in out and "Recommendation: int8_cpu.onnx on ort-cpu" in out
