"""The score baseline inside the one exported graph (stpm_edge.score_baseline): the graph scores
as PyTorch does, every TensorRT variant passes the parser check with the baseline in float32, and a
model without one exports the very graph it did before.

A random-teacher EfficientNet-Lite0 at 128 px (no training: the graph only has to compute what
PyTorch computes) with a baseline fitted on synthetic frames.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from helpers import normalised
from helpers import run_graph as run
from onnx import TensorProto

from stpm_edge.export.trt_check import check_model, format_violations

SIZE = 128
CALIBRATION = {"image_threshold": 0.0, "pixel_threshold": 0.5, "score_min": -1.0, "score_max": 1.0}


def frames(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, (n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model():
    import torch

    from stpm_edge import score_baseline as sb
    from stpm_edge.model import STPM, ModelConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = STPM(ModelConfig(image_size=SIZE, teacher_weights="random")).eval()
    m.baseline = sb.fit_score_baseline(m, frames(0, 6))
    return m


def build(model, precision: str = "fp32", inp: str = "uint8") -> onnx.ModelProto:
    from stpm_edge.export import graph as G

    options = G.GraphOptions(
        input_format="uint8_nhwc" if inp == "uint8" else "float32_nchw",
        precision="fp16" if precision == "fp16" else "fp32",
    )
    graph = G.build_graph(model, CALIBRATION, options, "0" * 64)
    if precision == "int8":
        from stpm_edge.export.int8 import quantize_int8

        calib = frames(3, 2)[..., ::-1] if inp == "uint8" else normalised(model, frames(3, 2))
        graph = quantize_int8(graph, np.ascontiguousarray(calib), progress=False, target="tensorrt")
    return graph


def test_fp32_graph_scores_above_the_baseline_as_pytorch_does(model) -> None:
    import torch

    rgb = frames(1, 3)
    out = run(build(model), np.ascontiguousarray(rgb[..., ::-1]))  # BGR frames
    amap, score = model.score_map(torch.from_numpy(normalised(model, rgb)))
    np.testing.assert_allclose(out["score"], score.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out["anomaly_map"], amap.numpy(), rtol=1e-3, atol=1e-4)
    # and it is not the plain score: the baseline changed it
    plain = copy.deepcopy(model)
    plain.baseline = None
    assert not np.allclose(
        out["score"], plain.score_map(torch.from_numpy(normalised(model, rgb)))[1]
    )


VARIANTS = [(p, i) for p in ("fp32", "fp16", "int8") for i in ("uint8", "float")]


@pytest.mark.parametrize(("precision", "inp"), VARIANTS)
def test_every_tensorrt_variant_passes_with_the_baseline_in_float32(model, precision, inp) -> None:
    graph = build(model, precision, inp)
    for version in ("10.3", "10.x", "11"):
        violations = check_model(graph, version)
        assert not violations, format_violations(violations)
    inits = {i.name: i for i in graph.graph.initializer}
    assert inits["baseline.values"].data_type == TensorProto.FLOAT
    subs = [n for n in graph.graph.node if "baseline.values" in n.input]
    assert [n.op_type for n in subs] == ["Sub"]
    inferred = onnx.shape_inference.infer_shapes(graph)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    scored, _ = subs[0].input  # the scored map, and the constant
    assert types[scored] == types[subs[0].output[0]] == TensorProto.FLOAT


def test_without_it_the_graph_is_the_one_before(model) -> None:
    import torch

    from stpm_edge.export import graph as G
    from stpm_edge.model import STPM, ModelConfig

    torch.manual_seed(0)
    fresh = STPM(ModelConfig(image_size=SIZE, teacher_weights="random")).eval()
    switched = copy.deepcopy(model)
    switched.baseline = None
    a, b = build(fresh), build(switched)
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    assert G.read_metadata(b)["stpm.score_baseline"] == '{"mode": "off"}'
    assert '"mode": "train_max"' in G.read_metadata(build(model))["stpm.score_baseline"]
