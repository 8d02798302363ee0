"""The fused ONNX graph against the PyTorch model: every layout, input kind and precision.

The reference is always ``STPM.score_map`` on the normalised float RGB input computed by the
training code (not the fused module the exporter traced), so the graph's own pre-processing
(uint8 BGR NHWC -> normalised RGB NCHW) is checked too.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from stpm_edge.backbones import get_backbone_spec
from stpm_edge.export import graph as G

RTOL, ATOL = 1e-4, 1e-5
SIZE = 64
DESIGN_KEYS = {
    "stpm.format",
    "stpm.version",
    "stpm.backbone",
    "stpm.layers",
    "stpm.input_size",
    "stpm.input_format",
    "stpm.color_order",
    "stpm.mean",
    "stpm.std",
    "stpm.calibration",
    "stpm.image_threshold",
    "stpm.pixel_threshold",
    "stpm.precision",
    "stpm.layout",
    "stpm.blur_sigma",
    "stpm.score_reduction",
    "stpm.topk_fraction",
    "stpm.checkpoint_sha256",
    "stpm.outputs",
}


def run(model: onnx.ModelProto | Path, frames: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs on ONNX Runtime CPU (one thread: the test machine is shared)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": frames}), strict=True))


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def backbone_convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" and n.name.startswith("/pair/") for n in model.graph.node)


@pytest.fixture(scope="module")
def payload(best_ckpt: Path) -> dict:
    from stpm_edge.checkpoint import load_checkpoint

    return load_checkpoint(best_ckpt)


@pytest.fixture(scope="module")
def build(trained_model, payload, best_ckpt: Path):
    """``build(**options) -> ModelProto`` straight from ``build_graph`` (checkpoint calibration)."""
    sha = G.fingerprint(best_ckpt)

    def make(**kwargs) -> onnx.ModelProto:
        return G.build_graph(trained_model, payload["calibration"], G.GraphOptions(**kwargs), sha)

    return make


@pytest.fixture(scope="module")
def cli_graph(exported_onnx: Path) -> onnx.ModelProto:
    return onnx.load(exported_onnx)


@pytest.fixture(scope="module")
def reference(trained_model, real_frames_bgr, torch_reference) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch maps (N, 64, 64) and scores (N,) of the BGR frames, via the training pre-processing."""
    return torch_reference(trained_model, np.ascontiguousarray(real_frames_bgr[..., ::-1]))


@pytest.fixture(scope="module")
def stacked(build) -> onnx.ModelProto:
    return build(layout="stacked")


@pytest.fixture(scope="module")
def fp16(build) -> onnx.ModelProto:
    return build(precision="fp16")


def assert_same_ranking(a: np.ndarray, b: np.ndarray) -> None:
    assert np.array_equal(np.argsort(a, kind="stable"), np.argsort(b, kind="stable"))


@pytest.mark.parametrize("batch", [1, 8])
def test_fp32_parity_with_pytorch(
    exported_onnx: Path, real_frames_bgr, reference, batch: int
) -> None:
    ref_maps, ref_scores = reference
    frames = real_frames_bgr if batch == 1 else real_frames_bgr[:8]
    chunks = [run(exported_onnx, frames[i : i + batch]) for i in range(0, len(frames), batch)]
    maps = np.concatenate([c["anomaly_map"] for c in chunks])
    scores = np.concatenate([c["score"] for c in chunks])
    n = len(frames)
    assert maps.shape == (n, 1, SIZE, SIZE) and maps.dtype == np.float32
    assert scores.shape == (n,) and scores.dtype == np.float32
    assert np.allclose(maps[:, 0], ref_maps[:n], rtol=RTOL, atol=ATOL), np.abs(
        maps[:, 0] - ref_maps[:n]
    ).max()
    np.testing.assert_allclose(scores, ref_scores[:n], rtol=RTOL)
    assert_same_ranking(scores, ref_scores[:n])
    assert np.ptp(ref_scores) > 0  # the frames really differ


def test_score_normalized_uses_the_graph_calibration(
    exported_onnx: Path, cli_graph, real_frames_bgr
) -> None:
    out = run(exported_onnx, real_frames_bgr)
    cal = json.loads(G.read_metadata(cli_graph)["stpm.calibration"])
    expected = np.clip(
        (out["score"] - cal["image_threshold"]) / (cal["score_max"] - cal["score_min"]) + 0.5, 0, 1
    )
    np.testing.assert_allclose(out["score_normalized"], expected, rtol=1e-5, atol=1e-6)


def test_graph_is_recalibrated_on_the_validation_images(
    exported_onnx: Path, cli_graph, payload, read_rgb
) -> None:
    """stpm-export fits the thresholds to the graph's own scores on the run's held-out images."""
    from stpm_edge.calibration import calibrate_from_good

    val = np.ascontiguousarray(read_rgb([Path(p) for p in payload["val_paths"]])[..., ::-1])
    out = run(exported_onnx, val)
    cal = json.loads(G.read_metadata(cli_graph)["stpm.calibration"])
    expected = calibrate_from_good(out["score"])
    assert cal["image_threshold"] == pytest.approx(expected["image_threshold"], rel=1e-5)
    assert cal["source"] == "val_good"
    assert (out["score_normalized"] < 0.5).all()  # no validation image is rejected


def test_float_input_equals_uint8_input(
    build, exported_onnx: Path, trained_model, real_frames_bgr, reference
) -> None:
    from stpm_edge.data.torch_dataset import normalize

    graph = build(input_format="float32_nchw")
    [inp] = graph.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, SIZE, SIZE]
    assert G.read_metadata(graph)["stpm.input_format"] == "float32_nchw"
    cfg = trained_model.config
    x = np.stack(
        [normalize(np.ascontiguousarray(f[..., ::-1]), cfg.mean, cfg.std) for f in real_frames_bgr]
    )
    got = run(graph, x)
    via_uint8 = run(exported_onnx, real_frames_bgr)
    np.testing.assert_allclose(got["anomaly_map"], via_uint8["anomaly_map"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["score"], via_uint8["score"], rtol=RTOL)
    assert np.allclose(got["anomaly_map"][:, 0], reference[0], rtol=RTOL, atol=ATOL)


def test_stacked_layout_equals_separate(
    stacked, cli_graph, exported_onnx: Path, real_frames_bgr
) -> None:
    a, b = run(stacked, real_frames_bgr), run(exported_onnx, real_frames_bgr)
    np.testing.assert_allclose(a["anomaly_map"], b["anomaly_map"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(a["score"], b["score"], rtol=RTOL)
    # backbone convolutions (scope /pair/); the two separable-blur convolutions of the tail stay
    n_stacked, n_separate = backbone_convs(stacked), backbone_convs(cli_graph)
    assert n_separate > 0 and 2 * n_stacked == n_separate
    assert ops(stacked).count("Conv") - n_stacked == ops(cli_graph).count("Conv") - n_separate
    assert G.read_metadata(stacked)["stpm.layout"] == "stacked"


def test_graphs_are_valid_and_folded(cli_graph, stacked, fp16, build) -> None:
    for graph in (cli_graph, stacked, fp16):
        assert "BatchNormalization" not in ops(graph)  # folded into the convolutions
        onnx.checker.check_model(graph, full_check=True)
        opset = {o.domain: o.version for o in graph.opset_import}
        assert opset.get("", opset.get("ai.onnx", 0)) >= 17


def test_graph_io_contract(cli_graph) -> None:
    [inp] = cli_graph.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [SIZE, SIZE, 3]
    outputs = {o.name: o.type.tensor_type for o in cli_graph.graph.output}
    assert list(outputs) == ["anomaly_map", "score", "score_normalized"]
    assert all(t.elem_type == onnx.TensorProto.FLOAT for t in outputs.values())
    assert [d.dim_value for d in outputs["anomaly_map"].shape.dim[1:]] == [1, SIZE, SIZE]
    assert len(outputs["score"].shape.dim) == 1


def test_metadata_contract(cli_graph, best_ckpt: Path, payload) -> None:
    from stpm_edge.runtime.metadata import parse_metadata

    meta = G.read_metadata(cli_graph)
    assert meta.keys() >= DESIGN_KEYS
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["stpm.format"] == "stpm-edge-onnx/1"
    assert json.loads(meta["stpm.input_size"]) == [SIZE, SIZE]
    assert meta["stpm.input_format"] == "uint8_nhwc" and meta["stpm.color_order"] == "BGR"
    assert meta["stpm.precision"] == "fp32" and meta["stpm.layout"] == "separate"
    assert meta["stpm.backbone"] == "efficientnet_lite0"
    stages = get_backbone_spec("efficientnet_lite0").stages
    assert json.loads(meta["stpm.layers"]) == [s.module for s in stages]
    assert meta["stpm.score_reduction"] == payload["config"]["score_reduction"] == "topk"
    assert json.loads(meta["stpm.topk_fraction"]) == payload["config"]["topk_fraction"]
    assert json.loads(meta["stpm.mean"]) == payload["config"]["mean"]
    assert meta["stpm.checkpoint_sha256"] == G.fingerprint(best_ckpt)
    assert json.loads(meta["stpm.outputs"]) == ["anomaly_map", "score", "score_normalized"]
    cal = json.loads(meta["stpm.calibration"])
    assert {"image_threshold", "pixel_threshold", "score_min", "score_max", "source"} <= cal.keys()
    assert float(meta["stpm.image_threshold"]) == cal["image_threshold"]
    info = parse_metadata(meta, "image", "model.onnx")
    assert info.input_size == (SIZE, SIZE) and info.input_format == "uint8_nhwc"
    assert info.image_threshold == pytest.approx(cal["image_threshold"])


def test_export_is_deterministic(build, real_frames_bgr) -> None:
    a, b = build(), build()
    out_a, out_b = run(a, real_frames_bgr), run(b, real_frames_bgr)
    for name in out_a:
        assert np.array_equal(out_a[name], out_b[name]), name
    assert a.SerializeToString() == b.SerializeToString()


def test_fp16_graph(fp16, exported_onnx: Path, trained_model, real_frames_bgr) -> None:
    import torch

    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in trained_model.modules())
    inits = {i.name: i for i in fp16.graph.initializer}
    convs = [n for n in fp16.graph.node if n.op_type == "Conv"]
    backbone = [inits[n.input[1]] for n in convs if n.name.startswith("/pair/")]
    tail = [inits[n.input[1]] for n in convs if not n.name.startswith("/pair/")]
    assert len(backbone) == n_convs and all(
        w.data_type == onnx.TensorProto.FLOAT16 for w in backbone
    )
    assert all(w.data_type == onnx.TensorProto.FLOAT for w in tail)  # the blur stays float32
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in fp16.graph.output)
    casts = {
        a.i for n in fp16.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"
    }
    assert {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT} <= casts
    assert G.read_metadata(fp16)["stpm.precision"] == "fp16"

    hard = np.stack(
        [
            np.full((SIZE, SIZE, 3), 255, np.uint8),
            np.zeros((SIZE, SIZE, 3), np.uint8),
            np.random.default_rng(7).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        ]
    )
    frames = np.concatenate([real_frames_bgr, hard])
    got, ref = run(fp16, frames), run(exported_onnx, frames)
    assert all(np.isfinite(v).all() for v in got.values())
    peaks = np.abs(ref["anomaly_map"]).reshape(len(frames), -1).max(axis=1)
    errors = np.abs(got["anomaly_map"] - ref["anomaly_map"]).reshape(len(frames), -1).max(axis=1)
    assert (errors / peaks).max() < 5e-2, (errors / peaks).max()
    assert int(np.argmax(got["score"])) == int(np.argmax(ref["score"]))


def test_per_scale_maps(build, trained_model, real_frames_bgr) -> None:
    import torch

    from stpm_edge import anomaly_map as am

    graph = build(per_scale_maps=True)
    names = [o.name for o in graph.graph.output]
    assert names == [
        "anomaly_map",
        "score",
        "score_normalized",
        "scale_map_0",
        "scale_map_1",
        "scale_map_2",
    ]
    assert json.loads(G.read_metadata(graph)["stpm.outputs"]) == names
    out = run(graph, real_frames_bgr[:5])
    for i, stride in enumerate((4, 8, 16)):
        side = SIZE // stride
        assert out[f"scale_map_{i}"].shape == (5, 1, side, side)
        declared = [d.dim_value for d in graph.graph.output[3 + i].type.tensor_type.shape.dim[1:]]
        assert declared == [1, side, side]
        assert out[f"scale_map_{i}"].min() >= 0 and out[f"scale_map_{i}"].max() <= 2 + 1e-6
    # the anomaly map is the blurred product of the scale maps on the stride-4 grid (the default
    # map resolution), upsampled once; sigma is in input pixels, so 1/4 of it on that grid
    assert trained_model.config.map_resolution == "feature"
    scale_maps = [torch.from_numpy(out[f"scale_map_{i}"]) for i in range(3)]
    grid = (SIZE // 4, SIZE // 4)
    sigma = trained_model.config.blur_sigma / 4
    rebuilt = am.upsample(
        am.gaussian_blur(am.combine_scales(scale_maps, grid), sigma), (SIZE, SIZE)
    )
    np.testing.assert_allclose(rebuilt.numpy(), out["anomaly_map"], rtol=1e-4, atol=1e-6)


def test_rgb_color_order(build, exported_onnx: Path, real_frames_bgr) -> None:
    graph = build(color_order="RGB")
    assert G.read_metadata(graph)["stpm.color_order"] == "RGB"
    got = run(graph, np.ascontiguousarray(real_frames_bgr[..., ::-1]))
    ref = run(exported_onnx, real_frames_bgr)
    np.testing.assert_allclose(got["anomaly_map"], ref["anomaly_map"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["score"], ref["score"], rtol=RTOL)
    # and the colour order matters: the same frames unflipped give different maps
    assert not np.allclose(run(graph, real_frames_bgr)["score"], ref["score"], rtol=1e-3)


def test_invalid_options_are_config_errors() -> None:
    from stpm_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="opset"):
        G.GraphOptions(opset=13)
    with pytest.raises(ConfigError, match="layout"):
        replace(G.GraphOptions(), layout="diagonal")


def test_uint8_input_is_cast_before_anything_else(cli_graph, stacked, fp16) -> None:
    """TensorRT takes a uint8 network input only into a Cast: no Transpose/Slice may touch it."""
    for graph in (cli_graph, stacked, fp16):
        image = graph.graph.input[0].name
        readers = [n for n in graph.graph.node if image in n.input]
        assert [n.op_type for n in readers] == ["Cast"]
        assert graph.graph.node[0].op_type == "Cast" and list(graph.graph.node[0].input) == [image]
    assert G.read_metadata(cli_graph)["stpm.target"] == "cpu"


@pytest.mark.parametrize("side", [16, 64, 256, 600])
def test_topk_score_below_the_limit_is_the_old_formula(side: int) -> None:
    """Where one TopK is valid (K <= 3839) the score is exactly the plain top-k mean."""
    import torch

    from stpm_edge import anomaly_map as am

    x = torch.rand(3, 1, side, side, generator=torch.Generator().manual_seed(side))
    k = max(1, round(side * side * 0.01))
    old = x.flatten(1).topk(k, dim=1).values.mean(dim=1)
    assert torch.equal(am.image_score(x, "topk", 0.01), old)


@pytest.mark.parametrize(("side", "fraction"), [(620, 0.01), (1024, 0.01), (256, 0.2)])
def test_topk_score_above_the_limit_is_exact(side: int, fraction: float) -> None:
    """K >= 3840 is summed over bounded TopK rounds: the mean of exactly the k largest values,
    ties included (a block of equal peaks straddles the round boundary)."""
    import torch

    from stpm_edge import anomaly_map as am

    x = torch.rand(2, 1, side, side, generator=torch.Generator().manual_seed(side))
    x[0, 0, :70, :70] = 2.0  # 4900 equal values: more than one round of 3839
    k = max(1, round(side * side * fraction))
    assert k > am.TOPK_MAX_K
    expected = torch.sort(x.flatten(1).double(), dim=1, descending=True).values[:, :k].mean(1)
    got = am.image_score(x, "topk", fraction)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)
