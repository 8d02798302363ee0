"""AnomalyDetector on the fake stpm graph (runtime/detector.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bright_frame, dark_frame

from stpm_edge.errors import BackendError
from stpm_edge.runtime import AnomalyDetector, Detector
from stpm_edge.runtime.runners import OrtRunner


def test_bright_is_ng_dark_is_ok(fake_onnx) -> None:
    with AnomalyDetector(fake_onnx, threads=1) as det:
        ng, ok = det.predict([bright_frame(), dark_frame()])
    assert ng.verdict == "NG" and ng.score_normalized >= 0.5 and ng.is_ng
    assert ok.verdict == "OK" and ok.score_normalized < 0.5
    assert ng.score == pytest.approx(250 / 255, abs=1e-6)
    assert ng.anomaly_map.shape == (64, 64) and ng.anomaly_map.dtype == np.float32
    assert ng.overlay is None and ng.regions is None
    assert ng.latency_ms > 0
    assert ng.to_dict()["verdict"] == "NG"


def test_single_frame_and_ndarray_batch(fake_onnx) -> None:
    with Detector(fake_onnx) as det:
        assert len(det.predict(dark_frame())) == 1
        batch = np.stack([dark_frame(), bright_frame(), dark_frame()])
        assert [p.verdict for p in det.predict(batch)] == ["OK", "NG", "OK"]


def test_regions_and_overlay_in_frame_pixels(fake_onnx) -> None:
    frame = dark_frame(120, 160)
    frame[30:90, 40:100] = 255  # a bright defect, 60x60 frame pixels
    with AnomalyDetector(fake_onnx) as det:
        [pred] = det.predict(frame, overlay=True, regions=True)
    assert pred.overlay.shape == (120, 160, 3) and pred.overlay.dtype == np.uint8
    assert not np.array_equal(pred.overlay, frame)
    [(x, y, w, h, area)] = pred.regions
    assert abs(x - 40) <= 3 and abs(y - 30) <= 3 and abs(w - 60) <= 4 and abs(h - 60) <= 4
    assert 0.8 * 3600 <= area <= 1.2 * 3600


def test_roi_maps_regions_back(fake_onnx) -> None:
    frame = dark_frame(200, 300)
    frame[120:150, 210:240] = 255
    roi = (200, 100, 64, 64)  # model size: no resize, region = defect - roi offset + offset
    with AnomalyDetector(fake_onnx, roi=roi) as det:
        [pred] = det.predict(frame, regions=True, overlay=True)
    assert pred.regions == [(210, 120, 30, 30, 900)]
    assert pred.overlay.shape == frame.shape
    np.testing.assert_array_equal(pred.overlay[:50, :50], frame[:50, :50])  # outside ROI untouched


def test_ready_runner_is_not_closed(fake_onnx) -> None:
    runner = OrtRunner(fake_onnx)
    with AnomalyDetector(runner) as det:
        det.predict(dark_frame())
    assert runner.is_loaded
    runner.close()


def test_non_stpm_graph_is_rejected(make_fake_onnx, tmp_path) -> None:
    path = make_fake_onnx(tmp_path / "plain.onnx", metadata={"producer": "someone"})
    with pytest.raises(BackendError, match="(?s)plain.onnx: missing stpm metadata.*stpm-export"):
        AnomalyDetector(path)


def test_float_graph(make_fake_onnx, tmp_path) -> None:
    path = make_fake_onnx(tmp_path / "f.onnx", size=32, input_format="float32_nchw")
    with AnomalyDetector(path) as det:
        assert det.info.input_format == "float32_nchw"
        bright, dark = det.predict([bright_frame(), dark_frame()])
    assert bright.score > dark.score  # normalised values, monotonic in brightness
