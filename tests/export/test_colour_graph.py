"""The colour map inside the one exported graph (stpm_edge.colour_map): parity with PyTorch, every
TensorRT variant passes the parser check, FP16/INT8 leave it in float32, and switched off it
leaves no trace in the graph.

A random-teacher EfficientNet-Lite0 at 128 px (no training: the STPM part only has to be the same
in PyTorch and in the graph) with a colour map fitted on synthetic textured frames.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import normalised
from helpers import run_graph as run
from onnx import TensorProto, numpy_helper

from stpm_edge.export.trt_check import check_model, format_violations

SIZE = 128
CALIBRATION = {"image_threshold": 0.5, "pixel_threshold": 0.5, "score_min": 0.0, "score_max": 1.0}
GAINS = (1.15, 0.92, 0.92)  # a colour stain: red up, green and blue down, luminance about kept


def frames(seed: int, n: int) -> np.ndarray:
    """uint8 RGB (n, S, S, 3): a brownish grain texture with per-frame gain jitter."""
    rng = np.random.default_rng(seed)
    base = np.array([150, 110, 80], np.float32)
    grain = rng.normal(0, 0.1, (n, SIZE, SIZE, 1)).astype(np.float32)
    gain = rng.uniform(0.9, 1.1, (n, 1, 1, 1)).astype(np.float32)
    return np.clip(base * (1 + grain) * gain, 0, 255).astype(np.uint8)


def stain(rgb: np.ndarray) -> np.ndarray:
    out = rgb.astype(np.float32)
    out[:, 40:80, 50:90] *= np.array(GAINS, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


# every constant a mode puts in the graph, by its initializer name
CONSTANTS = {
    "texture": {"colour.mean": "mean", "colour.precision": "precision"},
    "local": {"colour.whiten": "whiten", "colour.bank": "bank", "colour.bank_norm": "bank_norm"},
}


@pytest.fixture(scope="module", params=sorted(CONSTANTS))
def model(request):
    import torch

    from stpm_edge import colour_map as cm
    from stpm_edge.model import STPM, ModelConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = STPM(ModelConfig(image_size=SIZE, teacher_weights="random")).eval()
    m.colour = cm.fit_colour_map(m, frames(0, 12), frames(1, 6), request.param)
    return m


@pytest.fixture(scope="module")
def test_rgb() -> np.ndarray:
    good = frames(2, 3)
    return np.concatenate([good, stain(good)])


@pytest.fixture(scope="module")
def graphs() -> dict:
    return {}


def build(model, graphs: dict, precision: str = "fp32", inp: str = "uint8", layout="separate"):
    from stpm_edge.export import graph as G

    key = (id(model.colour), precision, inp, layout)
    if key not in graphs:
        options = G.GraphOptions(
            input_format="uint8_nhwc" if inp == "uint8" else "float32_nchw",
            layout=layout,
            precision="fp16" if precision == "fp16" else "fp32",
        )
        graph = G.build_graph(model, CALIBRATION, options, "0" * 64)
        if precision == "int8":
            from stpm_edge.export.int8 import quantize_int8

            calib = frames(3, 2)[..., ::-1] if inp == "uint8" else normalised(model, frames(3, 2))
            graph = quantize_int8(
                graph, np.ascontiguousarray(calib), progress=False, target="tensorrt"
            )
        graphs[key] = graph
    return graphs[key]


def torch_outputs(model, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    amap, score = model.score_map(torch.from_numpy(normalised(model, rgb)))
    return amap.numpy(), score.numpy()


def test_fp32_graph_equals_pytorch_with_the_colour_map(model, graphs, test_rgb) -> None:
    out = run(build(model, graphs), np.ascontiguousarray(test_rgb[..., ::-1]))  # BGR frames
    amap, score = torch_outputs(model, test_rgb)
    np.testing.assert_allclose(out["score"], score, rtol=2e-3)
    np.testing.assert_allclose(out["anomaly_map"], amap, rtol=2e-3, atol=2e-3 * float(amap.max()))
    # and the colour map is what tells the stained frames apart (scores in good-image units)
    good, stained = out["score"][:3], out["score"][3:]
    assert (stained > good + 3.0).all(), (good, stained)


def test_float_input_equals_uint8_input(model, graphs, test_rgb) -> None:
    uint8 = run(build(model, graphs), np.ascontiguousarray(test_rgb[..., ::-1]))
    floats = run(build(model, graphs, inp="float"), normalised(model, test_rgb))
    np.testing.assert_allclose(floats["score"], uint8["score"], rtol=2e-3)


VARIANTS = [(p, i) for p in ("fp32", "fp16", "int8") for i in ("uint8", "float")]


@pytest.mark.parametrize(("precision", "inp"), VARIANTS)
def test_every_tensorrt_variant_passes_and_keeps_the_colour_map_in_float32(
    model, graphs, precision, inp
) -> None:
    graph = build(model, graphs, precision, inp)
    for version in ("10.3", "10.x", "11"):
        violations = check_model(graph, version)
        assert not violations, format_violations(violations)
    if inp == "uint8":  # TensorRT takes a uint8 input only into one Cast
        readers = [n for n in graph.graph.node if graph.graph.input[0].name in n.input]
        assert [n.op_type for n in readers] == ["Cast"]
    inits = {i.name: i for i in graph.graph.initializer}
    colour = {n: i for n, i in inits.items() if n.startswith("colour.")}
    assert {*CONSTANTS[model.colour.mode], "colour.scale"} <= colour.keys()
    assert all(i.data_type == TensorProto.FLOAT for i in colour.values())
    # the cell means are two AveragePools on float32: never quantised (INT8 quantises only the
    # backbones) and never in half (FP16 runs only the backbones in half)
    pools = [n for n in graph.graph.node if n.op_type == "AveragePool"]
    assert len(pools) == 2
    producers = {o: n for n in graph.graph.node for o in n.output}
    assert producers[pools[0].input[0]].op_type == "Pad"  # the reflect padding, then the pools
    assert producers[pools[1].input[0]] is pools[0]
    inferred = onnx.shape_inference.infer_shapes(graph)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for pool in pools:
        assert types[pool.input[0]] == types[pool.output[0]] == TensorProto.FLOAT


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_graphs_still_see_the_stain(model, graphs, test_rgb, precision) -> None:
    out = run(build(model, graphs, precision), np.ascontiguousarray(test_rgb[..., ::-1]))
    reference = run(build(model, graphs), np.ascontiguousarray(test_rgb[..., ::-1]))
    assert (out["score"][3:] > out["score"][:3] + 3.0).all()
    # the colour part is float32 maths on the frame: the stained frames' score rise is the same
    rise = lambda o: o["score"][3:] - o["score"][:3]  # noqa: E731
    np.testing.assert_allclose(rise(out), rise(reference), rtol=0.05, atol=0.5)


def test_switched_off_leaves_no_trace(model, graphs) -> None:
    """A model whose colour map is switched off exports the very graph of one that never had it."""
    import copy

    import torch

    from stpm_edge.export import graph as G
    from stpm_edge.model import STPM, ModelConfig

    torch.manual_seed(0)
    fresh = STPM(ModelConfig(image_size=SIZE, teacher_weights="random")).eval()
    switched = copy.deepcopy(model)
    switched.colour = None
    assert torch.equal(
        fresh.student.state_dict()["_conv_stem.weight"],
        switched.student.state_dict()["_conv_stem.weight"],
    )
    a, b = build(fresh, {}), build(switched, {})
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    assert not [i.name for i in b.graph.initializer if "colour" in i.name]
    meta = G.read_metadata(b)
    assert meta["stpm.colour_map"] == '{"mode": "off"}'
    on = G.read_metadata(build(model, graphs))
    assert f'"mode": "{model.colour.mode}"' in on["stpm.colour_map"]


def test_colour_constants_are_named_initializers(model, graphs) -> None:
    graph = build(model, graphs)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    for name, buffer in CONSTANTS[model.colour.mode].items():
        np.testing.assert_array_equal(inits[name], getattr(model.colour, buffer).numpy())
    assert float(inits["colour.stpm_scale"]) == pytest.approx(model.colour.stats.stpm_scale)
    assert float(inits["colour.scale"]) == pytest.approx(model.colour.stats.colour_scale)
