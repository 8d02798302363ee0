"""TrtRunner against the shared TensorRT/CUDA double (``tests/fakes``; no TensorRT or GPU here).

The engine is built from the runtime's fake stpm ONNX (``conftest.make_fake_stpm_onnx``: map =
channel mean / 255, score = max of the map) by the real ``build_engine`` through the double, so
runner and builder share one double and one sidecar. The double's engine computes the graph with
ONNX Runtime on the CPU through the CUDA double's "device" memory and streams, and it fails the way
TensorRT and CUDA fail (``None`` context, ``False`` from ``set_input_shape``/``execute_async_v3``,
stream capture errors), which is what the hardening tests inject.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import bright_frame, dark_frame, fake_metadata, make_fake_stpm_onnx
from fakes.cuda import FakeCudart
from fakes.tensorrt import FakeTensorRT, Faults

from stpm_edge.errors import BackendError
from stpm_edge.runtime import AnomalyDetector
from stpm_edge.runtime.runners import create_runner
from stpm_edge.runtime.runners.trt import TrtRunner, trt_to_numpy_dtype

SIZE = 16


class Device:
    """One TensorRT + CUDA double pair, with faults switchable between calls."""

    def __init__(self, version: str = "10.3.0") -> None:
        self.cudart = FakeCudart()
        self.faults = Faults()
        self.trt = FakeTensorRT(version, cudart=self.cudart, faults=self.faults)

    def runner(self, source, **kw) -> TrtRunner:
        return TrtRunner(source, trt_module=self.trt, cudart_module=self.cudart, **kw)


@pytest.fixture
def device() -> Device:
    return Device()


@pytest.fixture
def engine_path(tmp_path, device, monkeypatch):
    from stpm_edge.export import trt_build

    monkeypatch.setattr(trt_build, "_import_cudart", lambda: device.cudart)
    onnx_path = make_fake_stpm_onnx(tmp_path / "model.onnx", size=SIZE)
    info = trt_build.build_engine(
        onnx_path, tmp_path / "model.engine", batch=(1, 2, 4), trt_module=device.trt
    )
    return info.engine_path


def _batch(values) -> np.ndarray:
    return np.stack([np.full((SIZE, SIZE, 3), v, np.uint8) for v in values])


def test_load_spec_metadata(engine_path, device) -> None:
    with device.runner(engine_path) as runner:
        assert runner.input_spec() == {"image": (np.dtype(np.uint8), (-1, SIZE, SIZE, 3))}
        assert runner.output_names() == ["anomaly_map", "score", "score_normalized"]
        assert runner.metadata() == fake_metadata(SIZE)
        # the builder's sidecar keys (DESIGN.md §5), read back by the runtime
        assert runner.build_info["tensorrt_version"] == "10.3.0"
        assert runner.build_info["gpu_name"] == "NVIDIA Fake GPU"
        assert runner.build_info["compute_capability"] == "8.7"
        assert runner.build_info["batch_profile"] == [1, 2, 4]
        assert runner.max_batch_size() == 4


def test_infer_values_and_copies(engine_path, device) -> None:
    with device.runner(engine_path) as runner:
        first = runner.infer({"image": _batch([51, 102])})
        np.testing.assert_allclose(first["score"], [0.2, 0.4], atol=1e-6)
        assert first["anomaly_map"].shape == (2, 1, SIZE, SIZE)
        second = runner.infer({"image": _batch([255, 0])})
        np.testing.assert_allclose(second["score"], [1.0, 0.0], atol=1e-6)
        np.testing.assert_allclose(first["score"], [0.2, 0.4], atol=1e-6)  # not overwritten


def test_buffers_reused_until_batch_grows(engine_path, device) -> None:
    with device.runner(engine_path) as runner:
        runner.infer({"image": _batch([1, 2])})
        after_first = runner.allocations
        assert after_first == 4  # one per I/O tensor
        runner.infer({"image": _batch([3])})
        runner.infer({"image": _batch([4, 5])})
        assert runner.allocations == after_first
        runner.infer({"image": _batch([6, 7, 8, 9])})
        assert runner.allocations == 2 * after_first
    assert device.cudart.memory == {} and device.cudart.streams == {}  # all freed on close


def test_batch_outside_profile(engine_path, device) -> None:
    with (
        device.runner(engine_path) as runner,
        pytest.raises(
            BackendError, match=r"shape \(5,16,16,3\) is outside the engine's optimisation profile"
        ),
    ):
        runner.infer({"image": _batch(range(5))})


def test_base_checks_apply(engine_path, device) -> None:
    with device.runner(engine_path) as runner, pytest.raises(BackendError, match="expected uint8"):
        runner.infer({"image": np.zeros((1, 3, SIZE, SIZE), np.float32)})


def test_cuda_graph_capture_and_replay(engine_path, device) -> None:
    cudart = device.cudart
    with device.runner(engine_path, cuda_graph=True) as runner:
        runner.infer({"image": _batch([10])})
        assert cudart.graph_launches == 0  # first run at a shape: plain enqueue
        out = runner.infer({"image": _batch([51])})
        assert cudart.graph_launches == 1
        np.testing.assert_allclose(out["score"], [0.2], atol=1e-6)
        out = runner.infer({"image": _batch([102])})  # replay reads the refreshed pinned input
        assert cudart.graph_launches == 2
        np.testing.assert_allclose(out["score"], [0.4], atol=1e-6)
        out = runner.infer({"image": _batch([255, 255])})  # shape change: graph dropped
        assert cudart.graph_launches == 2 and runner._graph_exec is None
        np.testing.assert_allclose(out["score"], [1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    "failure", ["begin_capture", "execute_in_capture", "end_capture", "instantiate"]
)
def test_failed_capture_ends_capture_and_falls_back(engine_path, device, caplog, failure) -> None:
    """Whatever fails during capture, the stream leaves capture mode and the frame is still
    computed by a plain enqueue; graphs stay off afterwards (warned once)."""
    cudart = device.cudart
    if failure == "begin_capture":
        cudart.fail_begin_capture = True
    elif failure == "execute_in_capture":
        device.faults.execute_fails_in_capture = True
    elif failure == "end_capture":
        cudart.fail_end_capture = True
    else:
        cudart.fail_instantiate = True
    with device.runner(engine_path, cuda_graph=True) as runner:
        runner.infer({"image": _batch([10])})
        with caplog.at_level(logging.WARNING):
            out = runner.infer({"image": _batch([51])})  # the capture attempt
        np.testing.assert_allclose(out["score"], [0.2], atol=1e-6)
        assert "CUDA graph capture failed" in caplog.text and "plain enqueues" in caplog.text
        assert not any(s.capturing for s in cudart.streams.values())
        assert runner.cuda_graph is False and cudart.graph_launches == 0
        out = runner.infer({"image": _batch([102])})
        np.testing.assert_allclose(out["score"], [0.4], atol=1e-6)


def test_null_execution_context_is_an_error(engine_path, device) -> None:
    device.faults.no_context = True
    with pytest.raises(BackendError, match="create_execution_context returned None"):
        device.runner(engine_path).load()


def test_refused_input_shape_is_an_error(engine_path, device) -> None:
    with device.runner(engine_path) as runner:
        device.faults.reject_shape = True
        with pytest.raises(BackendError, match=r"set_input_shape\('image', \(1,16,16,3\)\) failed"):
            runner.infer({"image": _batch([1])})


def test_failed_execute_is_an_error(engine_path, device) -> None:
    with device.runner(engine_path) as runner:
        device.faults.execute_fails = True
        with pytest.raises(BackendError, match="execute_async_v3 failed"):
            runner.infer({"image": _batch([1])})


def test_detector_splits_batches(engine_path, device) -> None:
    runner = device.runner(engine_path)
    with AnomalyDetector(runner) as det:
        frames = [bright_frame(), dark_frame()] * 3
        preds = det.predict(frames)
    assert [p.verdict for p in preds] == ["NG", "OK"] * 3
    runner.close()


def test_engine_errors(tmp_path, engine_path, device) -> None:
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"other")
    (tmp_path / "bad.engine.json").write_text(json.dumps({"metadata": fake_metadata(SIZE)}))
    with pytest.raises(BackendError, match="tied to the TensorRT version and the GPU"):
        device.runner(bad).load()
    (tmp_path / "lonely.engine").write_bytes(engine_path.read_bytes())
    with pytest.raises(BackendError, match="lonely.engine.json not found"):
        device.runner(tmp_path / "lonely.engine").load()
    device.cudart.fail_malloc = True
    with (
        device.runner(engine_path) as runner,
        pytest.raises(BackendError, match="cudaMalloc failed"),
    ):
        runner.infer({"image": _batch([1])})


def test_engine_from_another_gpu_is_refused(engine_path, device) -> None:
    other = Device()
    other.cudart.gpu_name = b"NVIDIA GeForce RTX 4090"
    with pytest.raises(BackendError, match=r"built with TensorRT 10\.3\.0 on NVIDIA Fake GPU"):
        other.runner(engine_path).load()


def test_loader_callable_needs_metadata(engine_path, device) -> None:
    data = engine_path.read_bytes()
    with pytest.raises(BackendError, match="no stpm metadata"):
        device.runner(lambda: data).load()
    with device.runner(lambda: data, metadata=fake_metadata(SIZE)) as runner:
        assert runner.infer({"image": _batch([0])})["score"].shape == (1,)


def test_dtype_mapping() -> None:
    dt = FakeTensorRT().DataType
    assert trt_to_numpy_dtype(dt.FLOAT) == np.float32
    assert trt_to_numpy_dtype(dt.HALF) == np.float16
    assert trt_to_numpy_dtype(dt.UINT8) == np.uint8
    assert trt_to_numpy_dtype(dt.INT64) == np.int64
    with pytest.raises(BackendError, match="BF16 has no numpy equivalent"):
        trt_to_numpy_dtype(dt.BF16)


def test_create_runner_engine_needs_tensorrt(engine_path, monkeypatch) -> None:
    import stpm_edge.runtime.runners as runners

    monkeypatch.setattr(runners, "available_backends", lambda: ["ort-cpu"])
    with pytest.raises(
        BackendError, match=r"(?s)'tensorrt' is not available here.*available: \['ort-cpu'\]"
    ):
        create_runner(engine_path)
    monkeypatch.setattr(runners, "available_backends", lambda: ["tensorrt", "ort-cpu"])
    assert isinstance(create_runner(engine_path), TrtRunner)
