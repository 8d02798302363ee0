"""Tests of the TensorRT engine builder's glue, against ``FakeTensorRT`` (no GPU needed).

``FakeTensorRT`` is a test double of the ``tensorrt`` module: just enough classes to record what
``build_engine`` asks of TensorRT (network flags, profile shapes, workspace, timing cache) and to
return canned results (parser errors, a failed build). The real-import path is tested too: on
this machine ``tensorrt`` is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from types import ModuleType, SimpleNamespace

import onnx
import pytest
from onnx import TensorProto, helper

from stpm_edge.errors import ExportError, OutputExistsError
from stpm_edge.export import trt_build
from stpm_edge.export.trt_build import build_engine, default_engine_name, query_gpu, sidecar_path

METADATA = {
    "stpm.format": "stpm-edge-onnx/1",
    "stpm.input_size": "[64, 64]",
    "stpm.input_format": "uint8_nhwc",
    "stpm.calibration": json.dumps({"image_threshold": 0.25, "score_min": 0.1, "score_max": 0.9}),
    "stpm.image_threshold": "0.25",
    "stpm.precision": "fp16",
}


def make_onnx(path: Path, shape: tuple = ("N", 64, 64, 3), elem=TensorProto.UINT8) -> Path:
    """A tiny valid graph with the stpm.* metadata (TensorRT never sees it: the parser is fake)."""
    image = helper.make_tensor_value_info("image", elem, list(shape))
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, [shape[0]])
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["f"], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "tiny", [image], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {**METADATA, "producer.note": "not stpm"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class FakeTensorRT(ModuleType):
    """Test double of the ``tensorrt`` module that records every call in ``self.calls``."""

    def __init__(
        self,
        version: str = "10.3.0",
        inputs: dict[str, tuple[int, ...]] | None = None,
        parser_errors: tuple[dict, ...] = (),
        build_result: bytes | None = b"FAKE-ENGINE-BYTES",
        builder_fails: bool = False,
        cache_matches: bool = True,
    ) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        major = int(version.split(".")[0])
        fake = self

        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
        if major < 11:  # removed in 11.x
            self.NetworkDefinitionCreationFlag.EXPLICIT_BATCH = 0
        self.BuilderFlag = SimpleNamespace(TF32=7) if major >= 11 else SimpleNamespace(FP16=0)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        sev = SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        class ILogger:
            Severity = sev

            def __init__(self) -> None:
                pass

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = bytes(data)

            def serialize(self) -> bytes:
                return self.data + b"|tuned"

        class BuilderConfig:
            def __init__(self) -> None:
                self.cache = None

            def set_memory_pool_limit(self, pool, size) -> None:
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag) -> None:
                fake.calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile) -> int:
                fake.calls.append(("add_optimization_profile", profile))
                return 0

            def create_timing_cache(self, data: bytes) -> TimingCache:
                fake.calls.append(("create_timing_cache", bytes(data)))
                return TimingCache(data)

            def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
                fake.calls.append(("set_timing_cache", cache.data, ignore_mismatch))
                ok = cache_matches or not cache.data
                self.cache = cache if ok else self.cache
                return ok

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def set_shape(self, name, min, opt, max) -> None:  # noqa: A002 (TensorRT's names)
                fake.calls.append(("set_shape", name, tuple(min), tuple(opt), tuple(max)))

        class NetworkDefinition:
            def __init__(self, flags: int) -> None:
                self.flags = flags
                self.inputs: list[SimpleNamespace] = []

            @property
            def num_inputs(self) -> int:
                return len(self.inputs)

            def get_input(self, i: int) -> SimpleNamespace:
                return self.inputs[i]

        class Builder:
            def __init__(self, logger) -> None:
                if builder_fails:
                    raise TypeError("pybind11::init(): factory function returned nullptr")
                self.logger = logger
                fake.calls.append(("Builder",))

            def create_network(self, flags: int) -> NetworkDefinition:
                fake.calls.append(("create_network", flags))
                return NetworkDefinition(flags)

            def create_builder_config(self) -> BuilderConfig:
                return BuilderConfig()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network", network.flags))
                if build_result is None:
                    self.logger.log(sev.ERROR, "Requested amount of GPU memory could not be met")
                return build_result

        class ParserError:
            def __init__(self, node: int, name: str, op: str, desc: str) -> None:
                self._v = (node, name, op, desc)

            def node(self) -> int:
                return self._v[0]

            def node_name(self) -> str:
                return self._v[1]

            def node_operator(self) -> str:
                return self._v[2]

            def desc(self) -> str:
                return self._v[3]

            def code(self):
                return SimpleNamespace(name="UNSUPPORTED_NODE")

        class OnnxParser:
            def __init__(self, network, logger) -> None:
                self.network = network

            def parse_from_file(self, path: str) -> bool:
                fake.calls.append(("parse_from_file", path))
                if parser_errors:
                    return False
                shapes = inputs or {"image": (-1, 64, 64, 3)}
                self.network.inputs = [SimpleNamespace(name=n, shape=s) for n, s in shapes.items()]
                return True

            @property
            def num_errors(self) -> int:
                return len(parser_errors)

            def get_error(self, i: int) -> ParserError:
                return ParserError(**parser_errors[i])

        self.ILogger = ILogger
        self.Builder = Builder
        self.OnnxParser = OnnxParser

    def called(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


class FakeCudart:
    """Test double of cuda-python's runtime module."""

    cudaError_t = SimpleNamespace(cudaSuccess=0)

    def cudaGetDeviceProperties(self, device: int):  # noqa: N802 (cuda-python's name)
        return 0, SimpleNamespace(name=b"NVIDIA Jetson AGX Orin\0\0garbage", major=8, minor=7)

    def cudaDriverGetVersion(self):  # noqa: N802
        return 0, 12060


@pytest.fixture
def no_cudart(monkeypatch):
    monkeypatch.setattr(trt_build, "_import_cudart", lambda: None)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return make_onnx(tmp_path / "model.onnx")


def test_profile_workspace_and_sidecar(tmp_path, onnx_file, no_cudart):
    fake = FakeTensorRT("10.3.0")
    engine = tmp_path / "out" / "model.engine"
    info = build_engine(onnx_file, engine, batch=(1, 2, 8), workspace_mb=512, trt_module=fake)

    assert fake.called("parse_from_file") == [("parse_from_file", str(onnx_file))]
    assert fake.called("set_shape") == [
        ("set_shape", "image", (1, 64, 64, 3), (2, 64, 64, 3), (8, 64, 64, 3))
    ]
    assert len(fake.called("add_optimization_profile")) == 1
    assert fake.called("set_memory_pool_limit") == [
        ("set_memory_pool_limit", "WORKSPACE", 512 * 1024 * 1024)
    ]
    assert fake.called("set_flag") == []  # precision comes from the graph, never from flags
    assert engine.read_bytes() == b"FAKE-ENGINE-BYTES"

    side = json.loads(sidecar_path(engine).read_text())
    assert sidecar_path(engine) == tmp_path / "out" / "model.engine.json"
    assert side["tensorrt_version"] == "10.3.0"
    assert side["batch_profile"] == [1, 2, 8]
    assert side["strongly_typed"] is True
    assert side["onnx_sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert side["metadata"] == METADATA  # stpm.* verbatim, other props left out
    assert side["gpu_name"] is None and side["compute_capability"] is None
    assert side["cuda_driver_version"] is None
    assert side["input_shapes"] == {"image": [2, 64, 64, 3]}
    assert info.sidecar() == side
    assert info.engine_path == engine and info.metadata == METADATA


def test_float_nchw_input_takes_hw_from_network(tmp_path, no_cudart):
    onnx_path = make_onnx(tmp_path / "f.onnx", ("N", 3, 32, 48), TensorProto.FLOAT)
    fake = FakeTensorRT(inputs={"image": (-1, 3, 32, 48)})
    build_engine(onnx_path, tmp_path / "f.engine", batch=(2, 4, 4), trt_module=fake)
    assert fake.called("set_shape") == [
        ("set_shape", "image", (2, 3, 32, 48), (4, 3, 32, 48), (4, 3, 32, 48))
    ]


def test_trt10_flags_strongly_typed_and_weak(tmp_path, onnx_file, no_cudart):
    fake = FakeTensorRT("10.3.0")
    build_engine(onnx_file, tmp_path / "a.engine", trt_module=fake)
    explicit, typed = 1 << 0, 1 << 1
    assert fake.called("create_network") == [("create_network", explicit | typed)]

    fake = FakeTensorRT("10.3.0")
    info = build_engine(onnx_file, tmp_path / "b.engine", strongly_typed=False, trt_module=fake)
    assert fake.called("create_network") == [("create_network", explicit)]
    assert info.strongly_typed is False
    assert json.loads(info.sidecar_path.read_text())["strongly_typed"] is False


def test_trt11_has_no_explicit_batch_and_is_always_strongly_typed(tmp_path, onnx_file, no_cudart):
    fake = FakeTensorRT("11.0.0.post1")
    assert not hasattr(fake.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert not hasattr(fake.BuilderFlag, "FP16")
    info = build_engine(onnx_file, tmp_path / "m.engine", strongly_typed=False, trt_module=fake)
    assert fake.called("create_network") == [("create_network", 1 << 1)]
    assert info.strongly_typed is True
    assert fake.called("set_flag") == []


def test_too_old_tensorrt_is_refused(tmp_path, onnx_file, no_cudart):
    with pytest.raises(ExportError, match=r"TensorRT 8\.6\.1 is too old"):
        build_engine(onnx_file, tmp_path / "m.engine", trt_module=FakeTensorRT("8.6.1"))
    assert not (tmp_path / "m.engine").exists()


def test_timing_cache_is_read_and_written(tmp_path, onnx_file, no_cudart):
    cache = tmp_path / "trt.cache"
    fake = FakeTensorRT()
    build_engine(onnx_file, tmp_path / "1.engine", timing_cache=cache, trt_module=fake)
    assert fake.called("create_timing_cache") == [("create_timing_cache", b"")]
    assert fake.called("set_timing_cache") == [("set_timing_cache", b"", False)]
    assert cache.read_bytes() == b"|tuned"

    fake = FakeTensorRT()
    build_engine(onnx_file, tmp_path / "2.engine", timing_cache=cache, trt_module=fake)
    assert fake.called("create_timing_cache") == [("create_timing_cache", b"|tuned")]
    assert fake.called("set_timing_cache") == [("set_timing_cache", b"|tuned", False)]
    assert cache.read_bytes() == b"|tuned|tuned"  # the loaded cache was extended and saved


def test_mismatched_timing_cache_starts_fresh(tmp_path, onnx_file, no_cudart, caplog):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"from-another-gpu")
    fake = FakeTensorRT(cache_matches=False)
    with caplog.at_level(logging.WARNING):
        build_engine(onnx_file, tmp_path / "m.engine", timing_cache=cache, trt_module=fake)
    assert "does not match" in caplog.text
    assert [c[1] for c in fake.called("set_timing_cache")] == [b"from-another-gpu", b""]
    assert cache.read_bytes() == b"|tuned"


def test_parser_errors_are_all_reported_with_node_info(tmp_path, onnx_file, no_cudart):
    errors = (
        dict(node=3, name="/student/layer2/Conv", op="Conv", desc="unsupported dtype bfloat16"),
        dict(node=7, name="/map/Resize", op="Resize", desc="mode 'cubic' not supported"),
    )
    fake = FakeTensorRT(parser_errors=errors)
    with pytest.raises(ExportError) as exc:
        build_engine(onnx_file, tmp_path / "m.engine", trt_module=fake)
    msg = str(exc.value)
    assert "2 error(s)" in msg and str(onnx_file) in msg
    assert "node 3 '/student/layer2/Conv' (Conv) [UNSUPPORTED_NODE]: unsupported dtype" in msg
    assert "node 7 '/map/Resize' (Resize)" in msg and "cubic" in msg
    assert "Note:" in msg
    assert fake.called("build_serialized_network") == []
    assert not (tmp_path / "m.engine").exists()


def test_failed_build_raises_with_logged_error_and_writes_nothing(tmp_path, onnx_file, no_cudart):
    fake = FakeTensorRT(build_result=None)
    engine = tmp_path / "m.engine"
    with pytest.raises(ExportError, match="GPU memory could not be met"):
        build_engine(onnx_file, engine, timing_cache=tmp_path / "c", trt_module=fake)
    assert not engine.exists() and not sidecar_path(engine).exists()
    assert not (tmp_path / "c").exists()


def test_no_gpu_gives_one_line_error(tmp_path, onnx_file, no_cudart):
    with pytest.raises(ExportError) as exc:
        build_engine(onnx_file, tmp_path / "m.engine", trt_module=FakeTensorRT(builder_fails=True))
    assert "\n" not in str(exc.value) and "no usable CUDA GPU" in str(exc.value)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_missing_tensorrt_is_a_one_line_export_error(tmp_path, onnx_file):
    with pytest.raises(ExportError) as exc:
        build_engine(onnx_file, tmp_path / "m.engine")
    msg = str(exc.value)
    assert msg.startswith("TensorRT is not installed") and "\n" not in msg
    assert "pip install 'stpm-edge[tensorrt]'" in msg


def test_refuses_to_overwrite_without_force(tmp_path, onnx_file, no_cudart):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"precious")
    # Refused before TensorRT is even imported (it is absent here: this would otherwise fail).
    with pytest.raises(OutputExistsError, match="--force"):
        build_engine(onnx_file, engine)
    assert engine.read_bytes() == b"precious"

    engine.unlink()
    sidecar_path(engine).write_text("{}")  # a sidecar alone is also the user's
    with pytest.raises(OutputExistsError):
        build_engine(onnx_file, engine, trt_module=FakeTensorRT())

    build_engine(onnx_file, engine, force=True, trt_module=FakeTensorRT())
    assert engine.read_bytes() == b"FAKE-ENGINE-BYTES"
    assert json.loads(sidecar_path(engine).read_text())["metadata"] == METADATA


def test_static_batch_or_dynamic_hw_is_refused(tmp_path, onnx_file, no_cudart):
    fake = FakeTensorRT(inputs={"image": (1, 64, 64, 3)})
    with pytest.raises(ExportError, match="fixed batch of 1"):
        build_engine(onnx_file, tmp_path / "a.engine", batch=(1, 1, 8), trt_module=fake)
    info = build_engine(
        onnx_file,
        tmp_path / "b.engine",
        batch=(1, 1, 1),
        trt_module=FakeTensorRT(inputs={"image": (1, 64, 64, 3)}),
    )
    assert info.batch_profile == (1, 1, 1)

    fake = FakeTensorRT(inputs={"image": (-1, -1, -1, 3)})
    with pytest.raises(ExportError, match="dynamic non-batch dims"):
        build_engine(onnx_file, tmp_path / "c.engine", trt_module=fake)


@pytest.mark.parametrize("batch", [(0, 1, 8), (1, 8, 4), (2, 1, 8), (1, 2)])
def test_invalid_batch_profile(tmp_path, onnx_file, batch):
    with pytest.raises(ExportError, match="batch"):
        build_engine(onnx_file, tmp_path / "m.engine", batch=batch, trt_module=FakeTensorRT())


def test_missing_onnx(tmp_path):
    with pytest.raises(ExportError, match="ONNX file not found"):
        build_engine(tmp_path / "nope.onnx", tmp_path / "m.engine", trt_module=FakeTensorRT())


def test_query_gpu_with_cuda_python(monkeypatch):
    monkeypatch.setattr(trt_build, "_import_cudart", FakeCudart)
    assert query_gpu() == {
        "gpu_name": "NVIDIA Jetson AGX Orin",
        "compute_capability": "8.7",
        "cuda_driver_version": "12.6",
    }


def test_default_engine_name_uses_version_and_gpu(tmp_path, onnx_file, monkeypatch):
    assert default_engine_name("out/model.onnx", "10.3.0.26", "NVIDIA GeForce RTX 4090") == Path(
        "out/model.trt10.3.nvidia-geforce-rtx-4090.engine"
    )
    assert default_engine_name("m.onnx", "11.0.0", None) == Path("m.trt11.0.gpu.engine")

    monkeypatch.setattr(trt_build, "_import_cudart", FakeCudart)
    info = build_engine(onnx_file, None, trt_module=FakeTensorRT("10.3.0"))
    assert info.engine_path == tmp_path / "model.trt10.3.nvidia-jetson-agx-orin.engine"
    side = json.loads(info.sidecar_path.read_text())
    assert side["gpu_name"] == "NVIDIA Jetson AGX Orin"
    assert side["compute_capability"] == "8.7" and side["cuda_driver_version"] == "12.6"
    with pytest.raises(OutputExistsError):  # the default name is protected too
        build_engine(onnx_file, None, trt_module=FakeTensorRT("10.3.0"))
