"""Tests of the TensorRT engine builder, through the shared TensorRT/CUDA double (``tests/fakes``).

The double's ONNX parser applies the project's TensorRT rules (``stpm_edge.export.trt_check``), its
enums carry the real values per version (10.3 and 11.x), and its failure returns are the real ones
(``None``, ``-1``, ``False``), so these tests fail where TensorRT would. The real-import path is
tested too: on this machine ``tensorrt`` is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from fakes.cuda import FakeCudart
from fakes.tensorrt import FakeTensorRT, Faults
from onnx import TensorProto, helper

from stpm_edge.errors import BackendError, ExportError, OutputExistsError
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


def make_onnx(
    path: Path,
    shape: tuple = ("N", 64, 64, 3),
    elem: int = TensorProto.UINT8,
    transpose_first: bool = False,
) -> Path:
    """A tiny graph with the stpm.* metadata: score = max pixel / 255, map = channel mean / 255.

    ``transpose_first`` puts a Transpose on the uint8 input before the Cast: the node order every
    exported graph had before issue 8, which TensorRT's parser rejects (uint8 may only feed a Cast).
    """
    image = helper.make_tensor_value_info("image", elem, list(shape))
    nodes = []
    src = "image"
    if transpose_first:
        nodes.append(
            helper.make_node("Transpose", ["image"], ["t"], perm=[0, 1, 2, 3], name="pre/T")
        )
        src = "t"
    nodes += [
        helper.make_node("Cast", [src], ["f"], to=TensorProto.FLOAT, name="pre/Cast"),
        helper.make_node("Div", ["f", "c255"], ["g"], name="pre/Div"),
        helper.make_node("ReduceMax", ["g"], ["score"], axes=[1, 2, 3], keepdims=0, name="score"),
    ]
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, [shape[0]])
    init = [helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0])]
    graph = helper.make_graph(nodes, "tiny", [image], [out], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, {**METADATA, "producer.note": "not stpm"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


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
    shapes = {"image": ((1, 64, 64, 3), (2, 64, 64, 3), (8, 64, 64, 3))}
    assert fake.called("add_optimization_profile") == [("add_optimization_profile", shapes)]
    assert fake.called("set_memory_pool_limit") == [
        ("set_memory_pool_limit", fake.MemoryPoolType.WORKSPACE, 512 * 1024 * 1024)
    ]
    assert fake.called("set_flag") == []  # precision comes from the graph, never from flags
    assert engine.read_bytes().startswith(b"FAKE-TRT-ENGINE")

    side = json.loads(sidecar_path(engine).read_text())
    assert sidecar_path(engine) == tmp_path / "out" / "model.engine.json"
    # DESIGN.md §5: the one sidecar key set the runtime reads too
    assert {
        "format",
        "tensorrt_version",
        "gpu_name",
        "compute_capability",
        "cuda_driver_version",
        "batch_profile",
        "strongly_typed",
        "onnx_sha256",
        "metadata",
    } <= set(side)
    assert side["format"] == "stpm-edge-engine/1"
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
    fake = FakeTensorRT()
    build_engine(onnx_path, tmp_path / "f.engine", batch=(2, 4, 4), trt_module=fake)
    shapes = {"image": ((2, 3, 32, 48), (4, 3, 32, 48), (4, 3, 32, 48))}
    assert fake.called("add_optimization_profile") == [("add_optimization_profile", shapes)]


def test_trt10_sets_only_strongly_typed_with_its_real_value(tmp_path, onnx_file, no_cudart):
    fake = FakeTensorRT("10.3.0")
    build_engine(onnx_file, tmp_path / "a.engine", trt_module=fake)
    # 10.x: STRONGLY_TYPED = 1; EXPLICIT_BATCH (= 0) is deprecated and ignored, never set
    assert int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    assert fake.called("create_network") == [("create_network", 1 << 1)]

    fake = FakeTensorRT("10.3.0")
    info = build_engine(onnx_file, tmp_path / "b.engine", strongly_typed=False, trt_module=fake)
    assert fake.called("create_network") == [("create_network", 0)]
    assert info.strongly_typed is False
    assert json.loads(info.sidecar_path.read_text())["strongly_typed"] is False


@pytest.mark.parametrize("version", ["11.0.0.post1", "11.4.1"])
def test_trt11_passes_no_flag_and_is_always_strongly_typed(tmp_path, onnx_file, no_cudart, version):
    fake = FakeTensorRT(version)
    flags = fake.NetworkDefinitionCreationFlag
    assert not hasattr(flags, "EXPLICIT_BATCH") and not hasattr(fake.BuilderFlag, "FP16")
    # 11.x: STRONGLY_TYPED is 0 (deprecated, ignored) and bit 1 means PREFER_JIT_PYTHON_PLUGINS,
    # so a hard-coded ``1 << 1`` would silently ask for JIT Python plugins.
    assert int(flags.STRONGLY_TYPED) == 0 and int(flags.PREFER_JIT_PYTHON_PLUGINS) == 1
    info = build_engine(onnx_file, tmp_path / "m.engine", strongly_typed=False, trt_module=fake)
    assert fake.called("create_network") == [("create_network", 0)]
    assert info.strongly_typed is True
    assert fake.called("set_flag") == []


def test_too_old_tensorrt_is_refused(tmp_path, onnx_file, no_cudart):
    with pytest.raises(ExportError, match=r"TensorRT 8\.6\.1 is too old"):
        build_engine(onnx_file, tmp_path / "m.engine", trt_module=FakeTensorRT("8.6.1"))
    assert not (tmp_path / "m.engine").exists()


def test_timing_cache_is_read_and_extended(tmp_path, onnx_file, no_cudart):
    cache = tmp_path / "trt.cache"
    fake = FakeTensorRT()
    build_engine(onnx_file, tmp_path / "1.engine", timing_cache=cache, trt_module=fake)
    assert fake.called("create_timing_cache") == [("create_timing_cache", b"")]
    assert cache.read_bytes() == fake.cache_header() + b"entries=1"

    fake = FakeTensorRT()
    build_engine(onnx_file, tmp_path / "2.engine", timing_cache=cache, trt_module=fake)
    assert fake.called("create_timing_cache")[0][1] == fake.cache_header() + b"entries=1"
    assert cache.read_bytes() == fake.cache_header() + b"entries=2"  # loaded, extended, saved


@pytest.mark.parametrize("foreign", ["none", "raise", "mismatch"])
def test_foreign_timing_cache_falls_back_to_a_fresh_one(
    tmp_path, onnx_file, no_cudart, caplog, foreign
):
    """A cache from another TensorRT/GPU: create_timing_cache returns None, raises, or gives a
    cache that set_timing_cache refuses. Each way the build goes on with a fresh cache."""
    cache = tmp_path / "trt.cache"
    other = FakeTensorRT("10.2.0")
    cache.write_bytes(other.cache_header() + b"entries=5")
    fake = FakeTensorRT("10.3.0", faults=Faults(foreign_cache=foreign))
    with caplog.at_level(logging.WARNING):
        build_engine(onnx_file, tmp_path / "m.engine", timing_cache=cache, trt_module=fake)
    assert "does not match this TensorRT/GPU" in caplog.text
    assert [c[1] for c in fake.called("create_timing_cache")][-1] == b""
    assert cache.read_bytes() == fake.cache_header() + b"entries=1"  # replaced by this device's


def test_parser_rejects_what_tensorrt_rejects(tmp_path, no_cudart):
    """The double's parser applies the project's TensorRT rules: the pre-issue-8 node order
    (Transpose on the uint8 input) fails to parse, naming the node; nothing is built."""
    check_model = pytest.importorskip("stpm_edge.export.trt_check").check_model
    bad = make_onnx(tmp_path / "bad.onnx", transpose_first=True)
    violations = check_model(onnx.load(str(bad)), trt_version="10.3")
    assert violations and violations[0].op_type == "Transpose"
    fake = FakeTensorRT()
    with pytest.raises(ExportError) as exc:
        build_engine(bad, tmp_path / "m.engine", trt_module=fake)
    msg = str(exc.value)
    assert "TensorRT's ONNX parser rejected" in msg and str(bad) in msg
    assert "node 0 'pre/T' (Transpose) [UNSUPPORTED_NODE]" in msg
    assert violations[0].rule in msg and "Note:" in msg
    assert fake.called("build_serialized_network") == []
    assert not (tmp_path / "m.engine").exists()

    # the same graph with the Cast first parses
    build_engine(make_onnx(tmp_path / "good.onnx"), tmp_path / "ok.engine", trt_module=fake)


def test_unreadable_onnx_fails_the_parse(tmp_path, no_cudart):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not a protobuf\xff")
    with pytest.raises(ExportError, match="cannot read ONNX file|MODEL_DESERIALIZE_FAILED"):
        build_engine(junk, tmp_path / "m.engine", trt_module=FakeTensorRT())


def test_failed_build_raises_with_logged_error_and_writes_nothing(tmp_path, onnx_file, no_cudart):
    fake = FakeTensorRT(faults=Faults(build_fails=True))
    engine = tmp_path / "m.engine"
    with pytest.raises(ExportError, match="GPU memory could not be met"):
        build_engine(onnx_file, engine, timing_cache=tmp_path / "c", trt_module=fake)
    assert not engine.exists() and not sidecar_path(engine).exists()
    assert not (tmp_path / "c").exists()


def test_rejected_profile_is_an_error(tmp_path, onnx_file, no_cudart):
    """add_optimization_profile returns -1 for a profile TensorRT finds invalid; without the check
    the build would go on with no profile (and fail later with a vaguer message)."""
    fake = FakeTensorRT(faults=Faults(reject_profile=True))
    with pytest.raises(ExportError, match=r"rejected the optimisation profile.*returned -1"):
        build_engine(onnx_file, tmp_path / "m.engine", trt_module=fake)
    assert fake.called("build_serialized_network") == []


def test_null_network_is_an_error(tmp_path, onnx_file, no_cudart, monkeypatch):
    """create_network returns None for flag bits this TensorRT does not define."""
    fake = FakeTensorRT("11.0.0")
    monkeypatch.setattr(trt_build, "_network_flags", lambda *a: (1 << 5, True))
    with pytest.raises(ExportError, match=r"create_network\(32\) returned None.*invalid flags"):
        build_engine(onnx_file, tmp_path / "m.engine", trt_module=fake)


def test_no_gpu_gives_one_line_error(tmp_path, onnx_file, no_cudart):
    fake = FakeTensorRT(faults=Faults(no_gpu=True))
    with pytest.raises(ExportError) as exc:
        build_engine(onnx_file, tmp_path / "m.engine", trt_module=fake)
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
    assert engine.read_bytes().startswith(b"FAKE-TRT-ENGINE")
    assert json.loads(sidecar_path(engine).read_text())["metadata"] == METADATA


def test_static_batch_or_dynamic_hw_is_refused(tmp_path, no_cudart):
    static = make_onnx(tmp_path / "static.onnx", (1, 64, 64, 3))
    with pytest.raises(ExportError, match="fixed batch of 1"):
        build_engine(static, tmp_path / "a.engine", batch=(1, 1, 8), trt_module=FakeTensorRT())
    info = build_engine(static, tmp_path / "b.engine", batch=(1, 1, 1), trt_module=FakeTensorRT())
    assert info.batch_profile == (1, 1, 1)

    dyn_hw = make_onnx(tmp_path / "hw.onnx", ("N", "H", "W", 3))
    with pytest.raises(ExportError, match="dynamic non-batch dims"):
        build_engine(dyn_hw, tmp_path / "c.engine", trt_module=FakeTensorRT())


@pytest.mark.parametrize("batch", [(0, 1, 8), (1, 8, 4), (2, 1, 8), (1, 2)])
def test_invalid_batch_profile(tmp_path, onnx_file, batch):
    with pytest.raises(ExportError, match="batch"):
        build_engine(onnx_file, tmp_path / "m.engine", batch=batch, trt_module=FakeTensorRT())


def test_missing_onnx(tmp_path):
    with pytest.raises(ExportError, match="ONNX file not found"):
        build_engine(tmp_path / "nope.onnx", tmp_path / "m.engine", trt_module=FakeTensorRT())


def test_query_gpu_with_cuda_python(monkeypatch):
    cudart = FakeCudart(gpu_name=b"NVIDIA Jetson AGX Orin")
    monkeypatch.setattr(trt_build, "_import_cudart", lambda: cudart)
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

    cudart = FakeCudart(gpu_name=b"NVIDIA Jetson AGX Orin")
    monkeypatch.setattr(trt_build, "_import_cudart", lambda: cudart)
    info = build_engine(onnx_file, None, trt_module=FakeTensorRT("10.3.0", cudart=cudart))
    assert info.engine_path == tmp_path / "model.trt10.3.nvidia-jetson-agx-orin.engine"
    side = json.loads(info.sidecar_path.read_text())
    assert side["gpu_name"] == "NVIDIA Jetson AGX Orin"
    assert side["compute_capability"] == "8.7" and side["cuda_driver_version"] == "12.6"
    with pytest.raises(OutputExistsError):  # the default name is protected too
        build_engine(onnx_file, None, trt_module=FakeTensorRT("10.3.0", cudart=cudart))


def test_engine_built_here_runs_in_the_runner_through_the_same_double(tmp_path, monkeypatch):
    """Builder and runner share one TensorRT/CUDA double and one sidecar: the engine built by
    ``build_engine`` loads in ``TrtRunner`` (metadata from the sidecar) and computes the graph."""
    from stpm_edge.runtime.runners.trt import TrtRunner

    cudart = FakeCudart(gpu_name=b"NVIDIA Jetson Orin Nano")
    monkeypatch.setattr(trt_build, "_import_cudart", lambda: cudart)
    fake = FakeTensorRT("10.3.0", cudart=cudart)
    info = build_engine(
        make_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", batch=(1, 2, 4), trt_module=fake
    )
    frames = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (51, 255)])
    with TrtRunner(info.engine_path, trt_module=fake, cudart_module=cudart) as runner:
        assert runner.metadata() == METADATA
        assert runner.build_info["gpu_name"] == "NVIDIA Jetson Orin Nano"
        assert runner.build_info["tensorrt_version"] == "10.3.0"
        assert runner.max_batch_size() == 4
        np.testing.assert_allclose(runner.infer({"image": frames})["score"], [0.2, 1.0], atol=1e-6)

    # the same engine on another TensorRT version: refused, naming both versions
    other = FakeTensorRT("10.4.0", cudart=cudart)
    with pytest.raises(BackendError, match=r"built with TensorRT 10\.3\.0 .*this is 10\.4\.0"):
        TrtRunner(info.engine_path, trt_module=other, cudart_module=cudart).load()


def _graph(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 9
    return model


def _topk_too_large() -> onnx.ModelProto:  # TensorRT: K < 3840
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    return _graph(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="score/TopK")],
        [helper.make_tensor_value_info("x", f, ["N", 5000])],
        [
            helper.make_tensor_value_info("v", f, ["N", 4000]),
            helper.make_tensor_value_info("i", i64, ["N", 4000]),
        ],
        [helper.make_tensor("k", i64, [1], [4000])],
    )


def _int32_bias_dq() -> onnx.ModelProto:  # TensorRT's DequantizeLinear takes no int32
    f = TensorProto.FLOAT
    return _graph(
        [
            helper.make_node("DequantizeLinear", ["b", "s"], ["y"], name="bias/DQ"),
            helper.make_node("Add", ["x", "y"], ["z"], name="add"),
        ],
        [helper.make_tensor_value_info("x", f, ["N", 4])],
        [helper.make_tensor_value_info("z", f, ["N", 4])],
        [
            helper.make_tensor("b", TensorProto.INT32, [4], [1, 2, 3, 4]),
            helper.make_tensor("s", f, [], [0.1]),
        ],
    )


def _asymmetric_qdq() -> onnx.ModelProto:  # TensorRT: symmetric INT8 only (zero point 0)
    f = TensorProto.FLOAT
    return _graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="act/Q"),
            helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["z"], name="act/DQ"),
        ],
        [helper.make_tensor_value_info("x", f, ["N", 4])],
        [helper.make_tensor_value_info("z", f, ["N", 4])],
        [
            helper.make_tensor("zp", TensorProto.UINT8, [], [128]),
            helper.make_tensor("s", f, [], [0.1]),
        ],
    )


@pytest.mark.parametrize(
    "make, node",
    [(_topk_too_large, "score/TopK"), (_int32_bias_dq, "bias/DQ"), (_asymmetric_qdq, "act/Q")],
)
def test_fake_parser_rejects_exactly_what_the_rules_reject(tmp_path, make, node):
    check_model = pytest.importorskip("stpm_edge.export.trt_check").check_model
    model = make()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    violations = check_model(model, trt_version="10.3")
    assert violations

    fake = FakeTensorRT("10.3.0")
    network = fake.Builder(fake.Logger()).create_network(0)
    parser = fake.OnnxParser(network, fake.Logger())
    assert parser.parse_from_file(str(path)) is False
    assert parser.num_errors == len(violations)
    first = parser.get_error(0)
    assert first.node_name() == node and first.code() == fake.ErrorCode.UNSUPPORTED_NODE
    assert violations[0].rule in first.desc()
    assert network.num_inputs == 0  # nothing imported from a rejected graph
