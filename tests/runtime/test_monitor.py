"""stpm-camera monitoring: Prometheus metrics scraped during a run, the OK-score drift alarm."""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import camera_process, log_records, sigterm

from stpm_edge.calibration import calibrate_from_good
from stpm_edge.errors import ConfigError
from stpm_edge.runtime.camera import DriftMonitor, main
from stpm_edge.runtime.camera.monitor import HIGH, Metrics, attach_monitoring
from stpm_edge.runtime.camera.station import CameraConfig, StationResources, build_station

pytest.importorskip("prometheus_client", reason="the monitor extra (prometheus-client)")


def _events(log: Path, name: str) -> list[dict]:
    return [r for r in log_records(log) if r.get("event") == name]


# -- the drift statistic on synthetic score streams ---------------------------------------------
def _good_scores(n: int, seed: int, gain: float = 1.0) -> np.ndarray:
    """Raw scores of good parts: log-normal, as STPM's product-of-distances scores are."""
    return gain * np.exp(np.random.default_rng(seed).normal(np.log(0.3), 0.15, n))


def _feed(monitor: DriftMonitor, scores, threshold: float) -> list[tuple[int, str]]:
    """What the observer does: OK frames only (score below the threshold)."""
    changes = []
    for i, score in enumerate(scores):
        if score < threshold and (change := monitor.update(float(score))) is not None:
            changes.append((i, change))
    return changes


def test_drift_statistic_quiet_on_good_parts_fires_once_on_a_shift() -> None:
    calibration = calibrate_from_good(_good_scores(200, seed=0))  # what stpm-train stores
    thr = calibration["image_threshold"]
    monitor = DriftMonitor.from_calibration(calibration, thr)
    assert _feed(monitor, _good_scores(3000, seed=1), thr) == []  # the same parts, other days
    assert 0.1 < monitor.statistic < 0.5
    shifted = _good_scores(300, seed=2, gain=1.6)  # lighting: every score up 60 %
    changes = _feed(monitor, shifted, thr)
    assert [c for _, c in changes] == ["drift"] and monitor.alarm
    assert monitor.statistic > HIGH
    back = _feed(monitor, _good_scores(300, seed=3), thr)
    assert [c for _, c in back] == ["drift_cleared"] and not monitor.alarm


def test_drift_hysteresis_fires_once_at_the_bound() -> None:
    monitor = DriftMonitor(score_min=0.0, threshold=1.0, window=5, min_frames=5)
    stream = [0.3] * 10 + [0.76, 0.74] * 50  # the median hovers at the bound
    changes = [c for s in stream if (c := monitor.update(s)) is not None]
    assert changes == ["drift"]
    assert [c for s in [0.3] * 10 if (c := monitor.update(s))] == ["drift_cleared"]
    low = [c for s in [-1.5] * 10 if (c := monitor.update(s))]  # far below every good score
    assert low == ["drift"]


def test_drift_needs_min_frames_and_skips_nan() -> None:
    monitor = DriftMonitor(score_min=0.0, threshold=1.0, window=50, min_frames=20)
    assert [monitor.update(0.9) for _ in range(19)] == [None] * 19
    assert np.isnan(monitor.statistic)
    assert monitor.update(float("nan")) is None
    assert monitor.update(0.9) == "drift"


# -- end to end: a brightness shift in the fake model's frames ----------------------------------
def _noise_frames(n: int, low: int, high: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def _write(folder: Path, frames: list[np.ndarray], start: int = 0) -> Path:
    folder.mkdir(exist_ok=True)
    for i, frame in enumerate(frames, start):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    return folder


def test_drift_event_on_a_brightness_shift_not_on_normal_frames(fake_onnx, tmp_path) -> None:
    # the fake model scores a frame by its brightest pixel; its calibration: min 0, threshold 0.5
    normal = _noise_frames(40, 10, 40, seed=0)
    brighter = [np.clip(f.astype(int) + 80, 0, 255).astype(np.uint8) for f in normal]
    only_normal = _write(tmp_path / "normal", normal)
    shifted = _write(_write(tmp_path / "shift", normal), brighter, start=40)
    base = ["--model", str(fake_onnx), "--stats-every", "0"]
    quiet = tmp_path / "quiet.jsonl"
    argv = base + ["--source", str(only_normal), "--log", str(quiet)]
    assert main(argv + ["--on-end", "loop", "--max-frames", "120"]) == 0
    assert _events(quiet, "drift") == []
    log = tmp_path / "shift.jsonl"
    assert main(base + ["--source", str(shifted), "--log", str(log)]) == 0
    frames = [json.loads(line) for line in log.read_text().splitlines() if '"verdict"' in line]
    assert all(f["verdict"] == "OK" for f in frames)  # brighter, yet every frame still passes
    [drift] = _events(log, "drift")
    assert 40 < drift["frame"] < 80 and drift["drift"] > HIGH


# -- metrics scraped during a run ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _value(text: str, name: str, camera: str = "cam0") -> float:
    match = re.search(rf'^{name}\{{camera="{camera}",model="model.onnx"\}} (\S+)$', text, re.M)
    assert match, (name, camera, text[:2000])
    return float(match.group(1))


def test_metrics_endpoint_scraped_during_a_cli_run(fake_onnx, tmp_path) -> None:
    folder = _write(tmp_path / "parts", _noise_frames(4, 10, 40, 0) + _noise_frames(2, 200, 255, 1))
    (folder / "999.png").write_bytes(b"corrupt")
    port = _free_port()
    args = ["--model", str(fake_onnx), "--source", str(folder), "--on-end", "loop",
            "--stats-every", "0", "--metrics-port", str(port),
            "--log", str(tmp_path / "m.jsonl")]  # fmt: skip
    with camera_process(*args) as proc:
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            try:
                text = _scrape(port)
                if _value(text, "stpm_frames_total") >= 40:  # >= 20 OK frames: drift measured
                    break
            except (OSError, AssertionError):
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"no metrics: {text[:500]}")
        assert proc.poll() is None  # scraped while running
        frames = _value(text, "stpm_frames_total")
        assert _value(text, "stpm_ng_total") >= 2 * (frames // 6)
        assert _value(text, "stpm_corrupt_frames_total") >= 1
        assert _value(text, "stpm_reconnects_total") == 0
        assert _value(text, "stpm_dropped_frames_total") >= 0
        # the run goes on while the page is written: later series may count a few more frames
        assert frames <= _value(text, "stpm_latency_seconds_count") <= frames + 30
        assert frames <= _value(text, "stpm_e2e_seconds_count") <= frames + 30
        assert 'stpm_latency_seconds_bucket{camera="cam0",le="0.001",model="model.onnx"}' in text
        assert 0 <= _value(text, "stpm_drift") < HIGH and _value(text, "stpm_drift_alarm") == 0
        err = sigterm(proc)
    assert proc.returncode == 0, err
    assert f"metrics: http://127.0.0.1:{port}/metrics" in err


def test_station_metrics_per_camera(fake_onnx, tmp_path) -> None:
    a = _write(tmp_path / "a", _noise_frames(5, 10, 40, 0))
    b = _write(tmp_path / "b", _noise_frames(3, 200, 255, 1))
    args = argparse.Namespace(backend="ort-cpu", threads=1, batch=2, stats_every=0, duration=None,
                              batch_timeout_ms=5.0)  # fmt: skip
    cameras = [CameraConfig("a", str(a), str(fake_onnx)), CameraConfig("b", str(b), str(fake_onnx))]
    resources = StationResources()
    scraped: list[str] = []

    class ScrapeMidRun:
        def on_frame(self, camera, frame, prediction, record) -> None:
            if camera == "a" and record["frame"] == 2:
                scraped.append(_scrape(port))

        def on_event(self, camera, record) -> None:
            pass

    try:
        station = build_station(cameras, args, resources)
        metrics = attach_monitoring(station.loops, station.models, 0, "127.0.0.1")
        assert metrics is not None
        port = metrics._server.server_port
        station.add_observer(ScrapeMidRun())
        station.run()
        final = _scrape(port)
        metrics.close()
    finally:
        resources.close()
    assert scraped and 'stpm_frames_total{camera="a",model="model.onnx"}' in scraped[0]
    assert _value(final, "stpm_frames_total", "a") == 5 and _value(final, "stpm_ng_total", "a") == 0
    assert _value(final, "stpm_frames_total", "b") == 3 and _value(final, "stpm_ng_total", "b") == 3


def test_metrics_without_prometheus_client_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match="prometheus-client") as exc:
        Metrics()
    assert "stpm-edge[monitor]" in str(exc.value)


def test_metrics_port_in_use_is_a_clear_error(fake_onnx, tmp_path, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        folder = _write(tmp_path / "p", _noise_frames(1, 10, 40, 0))
        argv = ["--model", str(fake_onnx), "--source", str(folder), "--metrics-port", str(port)]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--metrics-port {port}" in err and "Note:" in err
