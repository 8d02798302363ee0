"""TrtRunner glue against test doubles (no TensorRT or GPU here).

``FakeTensorRTModule`` and ``FakeCudart`` imitate the documented TensorRT 10 / cuda-python calls
the runner makes; "device" memory is host memory and the fake engine computes the same trivial
map as the fake ONNX. This tests OUR glue (profile checks, buffer reuse, dtype mapping, sidecar,
CUDA-graph bookkeeping), not TensorRT.
"""

from __future__ import annotations

import ctypes
import enum
import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import bright_frame, dark_frame, fake_metadata

from stpm_edge.errors import BackendError
from stpm_edge.runtime import AnomalyDetector
from stpm_edge.runtime.runners import create_runner
from stpm_edge.runtime.runners.trt import TrtRunner, trt_to_numpy_dtype

SIZE = 16
ENGINE_BYTES = b"FAKE-ENGINE"


class FakeCudart:
    """cuda-python runtime double: (err, value) tuples, memory as numpy buffers, graph capture."""

    class cudaError_t(enum.IntEnum):  # noqa: N801 - mirrors cuda-python's name
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.capturing: list | None = None
        self.graph_launches = 0
        self.fail_malloc = False

    def _alloc(self, nbytes: int):
        if self.fail_malloc:
            return (self.cudaError_t.cudaErrorMemoryAllocation, 0)
        buf = np.zeros(nbytes, np.uint8)
        self.memory[buf.ctypes.data] = buf
        return (self.cudaError_t.cudaSuccess, buf.ctypes.data)

    cudaMalloc = cudaMallocHost = _alloc

    def _free(self, ptr):
        self.memory.pop(ptr)
        return (self.cudaError_t.cudaSuccess,)

    cudaFree = cudaFreeHost = _free

    def cudaStreamCreate(self):
        return (self.cudaError_t.cudaSuccess, 7)

    def cudaStreamDestroy(self, stream):
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        return (self.cudaError_t.cudaSuccess,)

    def run_or_record(self, op) -> None:
        if self.capturing is not None:
            self.capturing.append(op)
        else:
            op()

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self.run_or_record(lambda: ctypes.memmove(dst, src, nbytes))
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return (self.cudaError_t.cudaSuccess, graph)

    def cudaGraphInstantiate(self, graph, flags):
        return (self.cudaError_t.cudaSuccess, list(graph))

    def cudaGraphLaunch(self, graph_exec, stream):
        self.graph_launches += 1
        for op in graph_exec:
            op()
        return (self.cudaError_t.cudaSuccess,)

    def cudaGraphExecDestroy(self, graph_exec):
        return (self.cudaError_t.cudaSuccess,)

    def cudaGraphDestroy(self, graph):
        return (self.cudaError_t.cudaSuccess,)


class FakeTensorRTModule:
    """tensorrt module double: Logger, Runtime, DataType, TensorIOMode and a fake engine."""

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        UINT8 = 5
        BF16 = 7

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            self.level = level

    def __init__(self, cudart: FakeCudart, max_batch: int = 4) -> None:
        self.cudart = cudart
        self.max_batch = max_batch
        trt = self

        class Runtime:
            def __init__(self, logger) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes):
                return FakeEngine(trt) if data == ENGINE_BYTES else None

        self.Runtime = Runtime


class FakeEngine:
    def __init__(self, trt: FakeTensorRTModule) -> None:
        dt = trt.DataType
        self.trt = trt
        self.tensors = {
            "image": (trt.TensorIOMode.INPUT, dt.UINT8, (-1, SIZE, SIZE, 3)),
            "anomaly_map": (trt.TensorIOMode.OUTPUT, dt.FLOAT, (-1, 1, SIZE, SIZE)),
            "score": (trt.TensorIOMode.OUTPUT, dt.FLOAT, (-1,)),
            "score_normalized": (trt.TensorIOMode.OUTPUT, dt.FLOAT, (-1,)),
        }
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_shape(self, name):
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0
        return [(1, SIZE, SIZE, 3), (2, SIZE, SIZE, 3), (self.trt.max_batch, SIZE, SIZE, 3)]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.batch = 0

    def set_input_shape(self, name, shape):
        self.batch = shape[0]
        return True

    def get_tensor_shape(self, name):
        return tuple(self.batch if d == -1 else d for d in self.engine.tensors[name][2])

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def _view(self, name, dtype):
        shape = self.get_tensor_shape(name)
        count = int(np.prod(shape))
        raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(
            self.addresses[name]
        )
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def execute_async_v3(self, stream):
        def compute() -> None:
            image = self._view("image", np.uint8).astype(np.float32)
            amap = image.mean(axis=3)[:, None] / 255.0
            score = amap.reshape(len(amap), -1).max(axis=1)
            self._view("anomaly_map", np.float32)[...] = amap
            self._view("score", np.float32)[...] = score
            self._view("score_normalized", np.float32)[...] = np.clip(score, 0.0, 1.0)

        self.engine.trt.cudart.run_or_record(compute)
        return True


@pytest.fixture
def fakes():
    cudart = FakeCudart()
    return FakeTensorRTModule(cudart), cudart


@pytest.fixture
def engine_path(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(ENGINE_BYTES)
    sidecar = {"tensorrt_version": "10.3.0", "gpu": "fake", "metadata": fake_metadata(SIZE)}
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    return path


def _runner(engine_path, fakes, **kw) -> TrtRunner:
    trt, cudart = fakes
    return TrtRunner(engine_path, trt_module=trt, cudart_module=cudart, **kw)


def _batch(values) -> np.ndarray:
    return np.stack([np.full((SIZE, SIZE, 3), v, np.uint8) for v in values])


def test_load_spec_metadata(engine_path, fakes) -> None:
    with _runner(engine_path, fakes) as runner:
        assert runner.input_spec() == {"image": (np.dtype(np.uint8), (-1, SIZE, SIZE, 3))}
        assert runner.output_names() == ["anomaly_map", "score", "score_normalized"]
        assert runner.metadata()["stpm.input_size"] == f"[{SIZE}, {SIZE}]"
        assert runner.build_info["tensorrt_version"] == "10.3.0"
        assert runner.max_batch_size() == 4


def test_infer_values_and_copies(engine_path, fakes) -> None:
    with _runner(engine_path, fakes) as runner:
        first = runner.infer({"image": _batch([51, 102])})
        np.testing.assert_allclose(first["score"], [0.2, 0.4], atol=1e-6)
        assert first["anomaly_map"].shape == (2, 1, SIZE, SIZE)
        second = runner.infer({"image": _batch([255, 0])})
        np.testing.assert_allclose(second["score"], [1.0, 0.0], atol=1e-6)
        np.testing.assert_allclose(first["score"], [0.2, 0.4], atol=1e-6)  # not overwritten


def test_buffers_reused_until_batch_grows(engine_path, fakes) -> None:
    with _runner(engine_path, fakes) as runner:
        runner.infer({"image": _batch([1, 2])})
        after_first = runner.allocations
        assert after_first == 4  # one per I/O tensor
        runner.infer({"image": _batch([3])})
        runner.infer({"image": _batch([4, 5])})
        assert runner.allocations == after_first
        runner.infer({"image": _batch([6, 7, 8, 9])})
        assert runner.allocations == 2 * after_first
    assert fakes[1].memory == {}  # everything freed on close


def test_batch_outside_profile(engine_path, fakes) -> None:
    with (
        _runner(engine_path, fakes) as runner,
        pytest.raises(
            BackendError, match=r"shape \(5,16,16,3\) is outside the engine's optimisation profile"
        ),
    ):
        runner.infer({"image": _batch(range(5))})


def test_base_checks_apply(engine_path, fakes) -> None:
    with _runner(engine_path, fakes) as runner, pytest.raises(BackendError, match="expected uint8"):
        runner.infer({"image": np.zeros((1, 3, SIZE, SIZE), np.float32)})


def test_cuda_graph_capture_and_replay(engine_path, fakes) -> None:
    _, cudart = fakes
    with _runner(engine_path, fakes, cuda_graph=True) as runner:
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


def test_detector_splits_batches(engine_path, fakes) -> None:
    runner = _runner(engine_path, fakes)
    with AnomalyDetector(runner) as det:
        frames = [bright_frame(), dark_frame()] * 3
        preds = det.predict(frames)
    assert [p.verdict for p in preds] == ["NG", "OK"] * 3
    runner.close()


def test_engine_errors(tmp_path, engine_path, fakes) -> None:
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"other")
    (tmp_path / "bad.engine.json").write_text(json.dumps(fake_metadata(SIZE)))
    with pytest.raises(BackendError, match="tied to the TensorRT version and the GPU"):
        _runner(bad, fakes).load()
    (tmp_path / "lonely.engine").write_bytes(ENGINE_BYTES)
    with pytest.raises(BackendError, match="lonely.engine.json not found"):
        _runner(tmp_path / "lonely.engine", fakes).load()
    fakes[1].fail_malloc = True
    with (
        _runner(engine_path, fakes) as runner,
        pytest.raises(BackendError, match="cudaMalloc failed"),
    ):
        runner.infer({"image": _batch([1])})


def test_loader_callable_needs_metadata(fakes) -> None:
    trt, cudart = fakes
    with pytest.raises(BackendError, match="no stpm metadata"):
        TrtRunner(lambda: ENGINE_BYTES, trt_module=trt, cudart_module=cudart).load()
    with TrtRunner(
        lambda: ENGINE_BYTES, metadata=fake_metadata(SIZE), trt_module=trt, cudart_module=cudart
    ) as runner:
        assert runner.infer({"image": _batch([0])})["score"].shape == (1,)


def test_dtype_mapping() -> None:
    dt = FakeTensorRTModule.DataType
    assert trt_to_numpy_dtype(dt.FLOAT) == np.float32
    assert trt_to_numpy_dtype(dt.HALF) == np.float16
    assert trt_to_numpy_dtype(dt.UINT8) == np.uint8
    assert trt_to_numpy_dtype(SimpleNamespace(name="INT64")) == np.int64
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
