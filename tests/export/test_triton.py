"""Tests of the Triton model-repository writer, checked against Triton's own protobuf schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from stpm_edge.errors import ConfigError, ExportError, OutputExistsError
from stpm_edge.export import triton
from stpm_edge.export.triton import write_triton_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

METADATA = {
    "stpm.format": "stpm-edge-onnx/1",
    "stpm.input_size": "[64, 64]",
    "stpm.input_format": "uint8_nhwc",
    "stpm.color_order": "BGR",
    # JSON with quotes, a backslash and a newline: the text emitters must escape them.
    "stpm.calibration": json.dumps({"image_threshold": 0.25, "source": 'val\\"good"\n'}),
    "stpm.image_threshold": "0.25",
    "stpm.outputs": json.dumps(["anomaly_map", "score", "score_normalized"]),
}
ONNX_TO_NP = {TensorProto.UINT8: np.uint8, TensorProto.FLOAT: np.float32}


def make_stpm_onnx(path: Path, batch: str | int = "N") -> Path:
    """A tiny graph with the stpm-edge I/O contract (DESIGN.md §5) at 64x64.

    ``image`` uint8 (N, 64, 64, 3) -> ``anomaly_map`` float32 (N, 1, 64, 64), ``score`` (N,),
    ``score_normalized`` (N,), plus stpm.* metadata.
    """
    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=f32),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["nchw"], ["anomaly_map"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sigmoid", ["score"], ["score_normalized"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stpm_tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, 64, 64, 3])],
        [
            helper.make_tensor_value_info("anomaly_map", f32, [batch, 1, 64, 64]),
            helper.make_tensor_value_info("score", f32, [batch]),
            helper.make_tensor_value_info("score_normalized", f32, [batch]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {**METADATA, "other.key": "not stpm"})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def onnx_io(path: Path) -> dict[str, tuple[int, list]]:
    """name -> (elem_type, shape with None for symbolic dims), from the ONNX itself."""
    graph = onnx.load(str(path)).graph
    out = {}
    for v in [*graph.input, *graph.output]:
        t = v.type.tensor_type
        out[v.name] = (
            t.elem_type,
            [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim],
        )
    return out


def parse_config(model_dir: Path):
    return text_format.Parse(
        (model_dir / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig()
    )


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return make_stpm_onnx(tmp_path / "model.onnx")


def test_onnx_repository_matches_graph_io(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    model_dir = write_triton_repository(
        repo,
        onnx_file,
        max_batch_size=8,
        preferred_batch_sizes=(2, 8),
        max_queue_delay_us=500,
        instance_count=2,
    )
    assert model_dir == repo / "stpm"
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert not (model_dir / "1" / "model.plan").exists()

    cfg = parse_config(model_dir)
    pb = model_config_pb2
    assert cfg.name == "stpm" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 8
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, pb.ModelInstanceGroup.KIND_GPU)]

    # Every tensor checked against the ONNX's own declaration: batch axis dropped from dims,
    # (N,) tensors as dims [1] + an empty reshape (Triton's documented batch-only form).
    io = onnx_io(onnx_file)
    triton_type = {TensorProto.UINT8: pb.TYPE_UINT8, TensorProto.FLOAT: pb.TYPE_FP32}
    tensors = [*cfg.input, *cfg.output]
    assert [t.name for t in cfg.input] == ["image"]
    assert [t.name for t in cfg.output] == ["anomaly_map", "score", "score_normalized"]
    for t in tensors:
        elem, shape = io[t.name]
        assert shape[0] is None  # dynamic batch in the ONNX
        assert t.data_type == triton_type[elem]
        if len(shape) == 1:
            assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == []
        else:
            assert list(t.dims) == shape[1:] and not t.HasField("reshape")
    assert list(cfg.input[0].dims) == [64, 64, 3]
    assert list(cfg.output[0].dims) == [1, 64, 64]

    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == METADATA  # stpm.* only, escapes round-tripped
    assert json.loads(params["stpm.calibration"])["image_threshold"] == 0.25


def test_config_shapes_agree_with_onnxruntime(tmp_path, onnx_file):
    """What Triton will send (batch + dims) runs in the model and returns batch + dims."""
    cfg = parse_config(write_triton_repository(tmp_path / "r", onnx_file))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    batch = 3
    feed = {t.name: np.zeros((batch, *t.dims), np.uint8) for t in cfg.input}
    results = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True)
    )
    for t in cfg.output:
        want = (batch,) + (tuple(t.reshape.shape) if t.HasField("reshape") else tuple(t.dims))
        assert results[t.name].shape == want


def test_hand_written_emitter_parses_to_the_same_message(tmp_path, onnx_file, monkeypatch):
    via_pb = parse_config(write_triton_repository(tmp_path / "a", onnx_file))
    monkeypatch.setattr(triton, "_load_model_config_pb2", lambda: None)
    model_dir = write_triton_repository(tmp_path / "b", onnx_file)
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    assert "reshape: { shape: [ ] }" in text  # the hand emitter really ran
    assert parse_config(model_dir) == via_pb


def test_static_batch_onnx_is_refused(tmp_path):
    static = make_stpm_onnx(tmp_path / "static.onnx", batch=1)
    with pytest.raises(ExportError, match="fixed batch axis of 1") as exc:
        write_triton_repository(tmp_path / "repo", static)
    assert "'image'" in str(exc.value)
    assert not (tmp_path / "repo" / "stpm").exists()


def test_refuses_to_overwrite_without_force(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    model_dir = write_triton_repository(repo, onnx_file, max_batch_size=8)
    (model_dir / "config.pbtxt").write_text("user edits")
    with pytest.raises(OutputExistsError, match="--force"):
        write_triton_repository(repo, onnx_file, max_batch_size=4, preferred_batch_sizes=(4,))
    assert (model_dir / "config.pbtxt").read_text() == "user edits"

    (model_dir / "2").mkdir()  # force replaces the whole model folder
    write_triton_repository(
        repo, onnx_file, max_batch_size=4, preferred_batch_sizes=(4,), force=True
    )
    assert parse_config(model_dir).max_batch_size == 4
    assert not (model_dir / "2").exists()
    assert [p.name for p in repo.iterdir()] == ["stpm"]  # no staging folder left behind


def test_engine_variant_writes_plan(tmp_path, onnx_file):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00serialized-plan\xff")
    sidecar = {
        "onnx_sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
        "batch_profile": [1, 4, 8],
    }
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    model_dir = write_triton_repository(
        tmp_path / "repo", onnx_file, model_name="stpm_trt", engine_path=engine
    )
    assert (model_dir / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert not (model_dir / "1" / "model.onnx").exists()
    cfg = parse_config(model_dir)
    assert cfg.name == "stpm_trt" and cfg.platform == "tensorrt_plan"
    assert [t.name for t in cfg.output] == ["anomaly_map", "score", "score_normalized"]


def test_engine_checks_against_its_sidecar(tmp_path, onnx_file):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    side = tmp_path / "model.engine.json"
    side.write_text(json.dumps({"onnx_sha256": "0" * 64, "batch_profile": [1, 1, 8]}))
    with pytest.raises(ExportError, match="was not built from"):
        write_triton_repository(tmp_path / "repo", onnx_file, engine_path=engine)

    digest = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    side.write_text(json.dumps({"onnx_sha256": digest, "batch_profile": [1, 1, 4]}))
    with pytest.raises(ConfigError, match="batches up to 4"):
        write_triton_repository(tmp_path / "repo", onnx_file, engine_path=engine, max_batch_size=8)
    with pytest.raises(ConfigError, match="KIND_CPU"):
        write_triton_repository(tmp_path / "repo", onnx_file, engine_path=engine, kind="KIND_CPU")
    assert not (tmp_path / "repo" / "stpm").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"preferred_batch_sizes": (4, 16)},
        {"max_queue_delay_us": -1},
        {"instance_count": 0},
        {"kind": "KIND_TPU"},
        {"model_name": "../escape"},
    ],
)
def test_invalid_arguments(tmp_path, onnx_file, kwargs):
    with pytest.raises(ConfigError):
        write_triton_repository(tmp_path / "repo", onnx_file, **kwargs)


def test_external_data_is_copied(tmp_path):
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [4], np.arange(4, dtype=np.float32).tobytes(), raw=True
    )
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(
        model,
        str(src / "m.onnx"),
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    model_dir = write_triton_repository(tmp_path / "repo", src / "m.onnx", preferred_batch_sizes=())
    copied = model_dir / "1"
    assert (copied / "m.onnx.data").read_bytes() == (src / "m.onnx.data").read_bytes()
    session = ort.InferenceSession(str(copied / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(y[1], [0, 1, 2, 3])


def test_tensorrt_accelerator_for_the_onnx_model(tmp_path, onnx_file, monkeypatch):
    """--triton-trt: ONNX Runtime's TensorRT provider inside Triton, with engine/timing caches
    and a profile over Triton's batch range; the config parses with Triton's own schema and the
    hand emitter writes the same message."""
    options = dict(
        max_batch_size=8,
        preferred_batch_sizes=(2, 4),
        tensorrt_accelerator=True,
        trt_workspace_mb=512,
    )
    model_dir = write_triton_repository(tmp_path / "a", onnx_file, **options)
    cfg = parse_config(model_dir)
    assert cfg.platform == "onnxruntime_onnx"
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    assert dict(acc.parameters) == {
        "precision_mode": "FP32",  # FP16 would switch the provider to weak typing
        "max_workspace_size_bytes": str(512 << 20),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/stpm_trt_cache/stpm",
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": "/tmp/stpm_trt_cache/stpm",
        "trt_profile_min_shapes": "image:1x64x64x3",
        "trt_profile_opt_shapes": "image:4x64x64x3",
        "trt_profile_max_shapes": "image:8x64x64x3",
    }
    assert not cfg.optimization.execution_accelerators.cpu_execution_accelerator

    monkeypatch.setattr(triton, "_load_model_config_pb2", lambda: None)
    hand = write_triton_repository(tmp_path / "b", onnx_file, **options)  # same options
    assert "gpu_execution_accelerator [" in (hand / "config.pbtxt").read_text()
    assert parse_config(hand) == cfg

    # without the option: no optimization section at all
    plain = parse_config(write_triton_repository(tmp_path / "c", onnx_file))
    assert not plain.HasField("optimization")


def test_tensorrt_accelerator_cache_path_and_refusals(tmp_path, onnx_file):
    model_dir = write_triton_repository(
        tmp_path / "r", onnx_file, tensorrt_accelerator=True, trt_cache_path="/models/cache"
    )
    (acc,) = parse_config(model_dir).optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.parameters["trt_engine_cache_path"] == "/models/cache"
    with pytest.raises(ConfigError, match="KIND_GPU"):
        write_triton_repository(
            tmp_path / "x", onnx_file, tensorrt_accelerator=True, kind="KIND_CPU"
        )
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ConfigError, match="drop it for a .plan"):
        write_triton_repository(
            tmp_path / "y", onnx_file, engine_path=engine, tensorrt_accelerator=True
        )


def test_plan_says_it_needs_the_containers_tensorrt(tmp_path, onnx_file, caplog):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with caplog.at_level("WARNING"):
        write_triton_repository(tmp_path / "repo", onnx_file, engine_path=engine)
    assert "build it inside the Triton container that will serve it" in caplog.text


def test_export_cli_triton_trt_flag(tmp_path, onnx_file):
    """``stpm-export ... --triton REPO --triton-trt`` writes the accelerator into the config."""
    from stpm_edge.export import cli

    repo = tmp_path / "r"
    args = cli.build_parser().parse_args(
        ["run/best.ckpt", "-o", str(onnx_file), "--triton", str(repo), "--triton-trt"]
    )
    result = cli.ExportResult(onnx_path=onnx_file, precision="fp32", parity={})
    cli._downstream(args, result)
    cfg = parse_config(result.triton_dir)
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["trt_profile_max_shapes"] == "image:8x64x64x3"
