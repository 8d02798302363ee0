"""The TensorRT compatibility check: every graph the exporter writes passes it, and hand-made graphs
breaking each documented parser limit are rejected with the node and the rule named.

The exporter's graphs come from a random-teacher EfficientNet-Lite0 pair (no training: the check
reads structure and types, not weights). Matrix: fp32/fp16/int8(tensorrt) x separate/stacked x
uint8/float at 256 px; fp32 x both layouts (uint8 input) at 512 and 1024 px. The 1024 px models
score at the input resolution (map_resolution "input"), where the top-1 % score needs K above
TensorRT's TopK limit; the others at the default stride-4 grid. fp16 and int8 at 512/1024 are left out for time (the
trace runs fp16 convolutions on the CPU: about a minute per 1024 px graph); the size-dependent
part — the float32 tail and its TopK rounds — is the same graph in every precision.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stpm_edge.export import trt_check
from stpm_edge.export.trt_check import check_model, format_violations, require_trt_compatible

CALIBRATION = {"image_threshold": 0.5, "pixel_threshold": 0.5, "score_min": 0.0, "score_max": 1.0}


def random_model(size: int):
    import torch

    from stpm_edge.model import STPM, ModelConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    resolution = "input" if size == 1024 else "feature"
    config = ModelConfig(image_size=size, teacher_weights="random", map_resolution=resolution)
    return STPM(config).eval()


@pytest.fixture(scope="module")
def models() -> dict:
    return {}


def export(models: dict, size: int, precision: str, layout: str, inp: str) -> onnx.ModelProto:
    """The exporter's graph for one variant (INT8: the tensorrt target, 2 calibration frames)."""
    key = (size, precision, layout, inp)
    if key not in models:
        models[key] = _export(models, *key)
    return models[key]


def _export(models: dict, size: int, precision: str, layout: str, inp: str) -> onnx.ModelProto:
    """Options as ``stpm-export`` chooses them (``graph_options``: e.g. the stacked INT8 graph's
    student streams at the teacher's ranges)."""
    from stpm_edge.export import graph as G
    from stpm_edge.export.cli import graph_options

    if size not in models:
        models[size] = random_model(size)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    input_format = "uint8_nhwc" if inp == "uint8" else "float32_nchw"
    options = graph_options(
        models[size], precision, layout, "tensorrt", rgb, input_format=input_format
    )
    graph = G.build_graph(models[size], CALIBRATION, options, "0" * 64)
    if precision == "int8":
        from stpm_edge.export.int8 import quantize_int8

        if inp == "uint8":
            frames = rgb
        else:
            frames = rng.standard_normal((2, 3, size, size)).astype(np.float32)
        graph = quantize_int8(graph, frames, progress=False, target="tensorrt")
    return graph


VARIANTS = [
    (256, precision, layout, inp)
    for precision in ("fp32", "fp16", "int8")
    for layout in ("separate", "stacked")
    for inp in ("uint8", "float")
] + [
    (size, precision, layout, "uint8")
    for size in (512, 1024)
    for precision in ("fp32",)
    for layout in ("separate", "stacked")
]


@pytest.mark.parametrize(("size", "precision", "layout", "inp"), VARIANTS)
def test_every_exported_variant_passes(models, size, precision, layout, inp) -> None:
    graph = export(models, size, precision, layout, inp)
    for version in ("10.3", "10.x", "11"):
        violations = check_model(graph, version)
        assert not violations, format_violations(violations)
    image = graph.graph.input[0]
    if inp == "uint8":
        # node 0 reading the camera frame is a Cast, and nothing else reads it
        readers = [n for n in graph.graph.node if image.name in n.input]
        assert [n.op_type for n in readers] == ["Cast"]
        assert graph.graph.node[0].op_type == "Cast"
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    ks = [int(inits[n.input[1]].max()) for n in graph.graph.node if n.op_type == "TopK"]
    assert ks and max(ks) < 3840
    if size == 1024:
        assert len(ks) == 3 and sum(ks) == round(size * size * 0.01)  # 10486 in 3 rounds


def test_1024_score_equals_the_training_score(models) -> None:
    """The multi-round TopK of the exported graph gives the top-1 % mean of the map exactly."""
    import onnxruntime as ort
    import torch

    graph = export(models, 1024, "fp32", "separate", "uint8")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), opts)
    frame = np.random.default_rng(3).integers(0, 256, (1, 1024, 1024, 3), dtype=np.uint8)
    amap, score = session.run(["anomaly_map", "score"], {"image": frame})
    k = round(1024 * 1024 * 0.01)
    expected = np.sort(amap.reshape(-1).astype(np.float64))[::-1][:k].mean()
    np.testing.assert_allclose(score[0], expected, rtol=1e-5)
    from stpm_edge import anomaly_map as am

    torch_score = am.image_score(torch.from_numpy(amap), "topk", 0.01)
    np.testing.assert_allclose(score, torch_score.numpy(), rtol=1e-5)


# --------------------------------------------------------------------------- hand-made graphs


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vinfo(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def init(name: str, values, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def only_rule(model: onnx.ModelProto, rule: str, node: str, version: str = "10.3") -> str:
    """The violations of ``model`` include ``rule`` at ``node``; returns the formatted text."""
    violations = check_model(model, version)
    text = format_violations(violations)
    assert any(v.rule == rule and v.node == node for v in violations), text
    assert all(v.source for v in violations)
    assert node in text and rule in text
    return text


def qdq_graph(zero_point, zero_dtype, scale=0.1, data_type=TensorProto.FLOAT) -> onnx.ModelProto:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dequant"),
    ]
    return make_model(
        nodes,
        [vinfo("x", data_type, [1, 4])],
        [vinfo("y", TensorProto.FLOAT, [1, 4])],
        [init("s", scale, np.float32), init("z", zero_point, zero_dtype)],
    )


def test_uint8_transpose_on_the_input_is_rejected() -> None:
    model = make_model(
        [
            helper.make_node("Transpose", ["image"], ["t"], name="nhwc_to_nchw", perm=[0, 3, 1, 2]),
            helper.make_node("Cast", ["t"], ["y"], name="to_float", to=TensorProto.FLOAT),
        ],
        [vinfo("image", TensorProto.UINT8, [1, 8, 8, 3])],
        [vinfo("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    text = only_rule(model, "uint8-input", "nhwc_to_nchw")
    only_rule(model, "uint8-intermediate", "nhwc_to_nchw")
    assert "Transpose" in text and "Cast" in text


def test_cast_first_passes() -> None:
    model = make_model(
        [
            helper.make_node("Cast", ["image"], ["f"], name="to_float", to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["f"], ["y"], name="nhwc_to_nchw", perm=[0, 3, 1, 2]),
        ],
        [vinfo("image", TensorProto.UINT8, [1, 8, 8, 3])],
        [vinfo("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    assert check_model(model) == []


def test_asymmetric_qdq_is_rejected() -> None:
    model = qdq_graph(3, np.int8)
    only_rule(model, "qdq-zero-point", "quant")
    only_rule(model, "qdq-zero-point", "dequant")


def test_uint8_qdq_is_rejected() -> None:
    model = qdq_graph(0, np.uint8)
    only_rule(model, "qdq-uint8", "quant")
    only_rule(model, "uint8-intermediate", "quant")
    only_rule(model, "dq-input-type", "dequant")


def test_symmetric_int8_qdq_passes() -> None:
    assert check_model(qdq_graph(0, np.int8)) == []


def test_int32_dequantize_is_rejected() -> None:
    model = make_model(
        [helper.make_node("DequantizeLinear", ["b", "s"], ["y"], name="bias_dq")],
        [],
        [vinfo("y", TensorProto.FLOAT, [4])],
        [init("b", [1, 2, 3, 4], np.int32), init("s", 0.01, np.float32)],
    )
    text = only_rule(model, "dq-input-type", "bias_dq")
    assert "INT32" in text


def test_per_channel_scale_must_match_the_axis_and_be_positive() -> None:
    model = make_model(
        [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["y"], name="weight_dq", axis=0)],
        [],
        [vinfo("y", TensorProto.FLOAT, [4, 2])],
        [
            init("w", np.ones((4, 2)), np.int8),
            init("s", [0.1, -0.2, 0.3], np.float32),
            init("z", [0, 0, 0], np.int8),
        ],
    )
    only_rule(model, "qdq-per-channel", "weight_dq")
    only_rule(model, "qdq-scale", "weight_dq")


def topk_model(k_inits, k_nodes, k_name: str = "k") -> onnx.ModelProto:
    nodes = [*k_nodes, helper.make_node("TopK", ["x", k_name], ["v", "i"], name="score_topk")]
    return make_model(
        nodes,
        [vinfo("x", TensorProto.FLOAT, [1, 1048576])],
        [vinfo("v", TensorProto.FLOAT, None), vinfo("i", TensorProto.INT64, None)],
        k_inits,
    )


@pytest.mark.parametrize("k", [3840, 10486])
def test_topk_over_the_limit_is_rejected(k: int) -> None:
    text = only_rule(topk_model([init("k", [k], np.int64)], []), "topk-k", "score_topk")
    assert str(k) in text


def test_topk_limit_is_found_through_computed_constants() -> None:
    """K folded from a Constant and a Mul (as a tracer may emit) is evaluated, not skipped."""
    nodes = [
        helper.make_node("Constant", [], ["base"], value=helper.make_tensor("c", 7, [1], [5243])),
        helper.make_node("Mul", ["base", "two"], ["k"], name="k_mul"),
    ]
    only_rule(topk_model([init("two", [2], np.int64)], nodes), "topk-k", "score_topk")


def test_topk_at_the_limit_passes_and_dynamic_k_is_rejected() -> None:
    assert check_model(topk_model([init("k", [3839], np.int64)], [])) == []
    dynamic = make_model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="score_topk")],
        [vinfo("x", TensorProto.FLOAT, [1, 100]), vinfo("k", TensorProto.INT64, [1])],
        [vinfo("v", TensorProto.FLOAT, None), vinfo("i", TensorProto.INT64, None)],
    )
    only_rule(dynamic, "constant-input", "score_topk")


def resize_model(**attrs) -> onnx.ModelProto:
    return make_model(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="upsample", **attrs)],
        [vinfo("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [vinfo("y", TensorProto.FLOAT, [1, 1, 8, 8])],
        [init("scales", [1, 1, 2, 2], np.float32)],
        opset=18,
    )


def test_resize_rules() -> None:
    assert check_model(resize_model(mode="linear")) == []
    only_rule(resize_model(mode="linear", antialias=1), "resize-antialias", "upsample")
    only_rule(resize_model(mode="cubic"), "resize-mode", "upsample")
    only_rule(
        resize_model(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"),
        "resize-coordinate-transformation-mode",
        "upsample",
    )


def test_average_pool_rules() -> None:
    """operators.md 10.x AveragePool: "2D or 3D Pooling only. `dilations` must be empty or all
    ones" — what the colour map's two poolings must (and do) satisfy."""

    def pool(**attrs) -> onnx.ModelProto:
        rank = len(attrs["kernel_shape"])
        return make_model(
            [helper.make_node("AveragePool", ["x"], ["y"], name="cells", **attrs)],
            [vinfo("x", TensorProto.FLOAT, [1, 3] + [16] * rank)],
            [vinfo("y", TensorProto.FLOAT, None)],
        )

    assert check_model(pool(kernel_shape=[8, 8], strides=[8, 8])) == []
    assert check_model(pool(kernel_shape=[2, 2], dilations=[1, 1])) == []
    only_rule(pool(kernel_shape=[4]), "pool-rank", "cells")
    only_rule(pool(kernel_shape=[2, 2], dilations=[2, 2]), "pool-dilations", "cells")


def test_reduce_axes_must_be_constant() -> None:
    model = make_model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="channel_sum")],
        [vinfo("x", TensorProto.FLOAT, [1, 3, 4]), vinfo("axes", TensorProto.INT64, [1])],
        [vinfo("y", TensorProto.FLOAT, None)],
    )
    only_rule(model, "constant-input", "channel_sum")


def test_unsupported_ops_types_and_opsets_are_rejected() -> None:
    model = make_model(
        [
            helper.make_node("Cast", ["x"], ["c"], name="to_int8", to=TensorProto.INT8),
            helper.make_node("Cast", ["c"], ["d"], name="back", to=TensorProto.FLOAT),
            helper.make_node("NonZero", ["d"], ["y"], name="where_nonzero"),
            helper.make_node("Gelu", ["d"], ["g"], name="gelu", domain="com.microsoft"),
        ],
        [vinfo("x", TensorProto.FLOAT, [4])],
        [vinfo("y", TensorProto.INT64, None), vinfo("g", TensorProto.FLOAT, None)],
        opset=21,
    )
    only_rule(model, "cast-type", "to_int8")
    only_rule(model, "op-unverified", "where_nonzero")
    only_rule(model, "op-domain", "gelu")
    only_rule(model, "opset", "")
    assert not [v for v in check_model(model, "11") if v.rule == "opset"]  # 9-24 there


def test_versions_and_errors(tmp_path: Path) -> None:
    from stpm_edge.errors import ConfigError, ExportError

    assert trt_check.normalize_version("10.8") == "10.3"  # the conservative 10.0-era limits
    assert trt_check.normalize_version("10.15.1") == "10.x"
    assert trt_check.normalize_version("11.0") == "11"
    with pytest.raises(ConfigError, match="8.6"):
        check_model(qdq_graph(0, np.int8), "8.6")
    with pytest.raises(ConfigError, match="not found"):
        check_model(tmp_path / "missing.onnx")
    with pytest.raises(ExportError, match="qdq-zero-point") as info:
        require_trt_compatible(qdq_graph(3, np.int8), "10.3", "my graph")
    assert "my graph" in str(info.value) and "Note:" in str(info.value)


def test_imports_only_onnx_and_numpy() -> None:
    """stpm-doctor runs the check on devices: no torch, ONNX Runtime or OpenCV at import."""
    import subprocess
    import sys

    code = (
        "import sys; import stpm_edge.export.trt_check; "
        "bad = {'torch', 'onnxruntime', 'cv2'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- the CLI


def run_export(argv: list[str]) -> tuple[int, str, str]:
    from stpm_edge.export.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_check_trt_cli(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(qdq_graph(0, np.int8), good)
    onnx.save(qdq_graph(3, np.int8), bad)
    rc, out, _ = run_export(["--check-trt", str(good)])
    assert rc == 0 and "no documented TensorRT 10.3" in out
    rc, out, _ = run_export(["--check-trt", str(bad), "--trt-version", "11"])
    assert rc == 2 and "quant (QuantizeLinear): [qdq-zero-point]" in out
    rc, _, err = run_export(["-o", str(tmp_path / "x.onnx")])
    assert rc == 2 and "needs a checkpoint" in err


def test_engine_export_of_a_cpu_int8_graph_is_refused(
    best_ckpt: Path, demo_data, tmp_path: Path
) -> None:
    """--engine with the cpu INT8 recipe: the check stops it before any TensorRT is needed and
    nothing is written (the passing --target tensorrt export is in test_int8.py)."""
    refused = tmp_path / "cpu_int8.onnx"
    calib = ["--int8", "--calib", str(demo_data.train_good), "-q"]
    rc, _, err = run_export(
        [str(best_ckpt), "-o", str(refused), *calib, "--target", "cpu", "--engine"]
    )
    assert rc == 2 and "would reject" in err and "dq-input-type" in err
    assert "--target tensorrt" in err
    assert not refused.exists()


def test_every_export_is_checked_error_for_tensorrt_warning_otherwise(caplog) -> None:
    import argparse
    import logging

    from stpm_edge.errors import ExportError
    from stpm_edge.export.cli import _trt_check

    bad = qdq_graph(3, np.int8)
    args = argparse.Namespace(engine=False, trt_version="10.3")
    with caplog.at_level(logging.WARNING, logger="stpm_edge.export.cli"):
        _trt_check(bad, args, "cpu", "int8")
    assert "not for TensorRT" in caplog.text and "--target tensorrt" in caplog.text
    with pytest.raises(ExportError, match="qdq-zero-point"):
        _trt_check(bad, args, "tensorrt", "int8")
    with pytest.raises(ExportError, match="would reject"):
        _trt_check(bad, argparse.Namespace(engine=True, trt_version="11"), "cpu", "fp32")
    _trt_check(qdq_graph(0, np.int8), args, "tensorrt", "int8")  # a valid graph passes silently


def test_the_score_rounds_fit_the_checked_topk_limit() -> None:
    """anomaly_map's TopK rounds (torch side) never exceed what the check (onnx side) allows."""
    from stpm_edge import anomaly_map as am

    assert am.TOPK_MAX_K <= trt_check.TOPK_MAX_K < 3840
