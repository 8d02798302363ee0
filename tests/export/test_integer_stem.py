"""Integer stems (``GraphOptions.integer_stem``): resnet18's stems read x - 128, whole numbers in
[-128, 127], which the CPU INT8 targets quantise at scale 1 without rounding a single pixel.

A random-teacher resnet18 at 64 px: the graph only has to compute what the plain graph does.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from stpm_edge.errors import ExportError
from stpm_edge.export import graph as G
from stpm_edge.export import int8, int8_graph, int8_weights

SIZE = 64
CALIBRATION = {"image_threshold": 0.5, "pixel_threshold": 0.5, "score_min": 0.0, "score_max": 1.0}
STEMS = ("/pair/teacher/conv1/Conv", "/pair/student/conv1/Conv")


def frames(seed: int, n: int) -> np.ndarray:
    """uint8 (n, S, S, 3) noise, the first frame black and the second white (the byte's ends)."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    out[0], out[1] = 0, 255
    return out


def calibration_frames() -> np.ndarray:
    """Mid-grey frames (40-199): a range calibrated on them is narrower than the byte."""
    return np.random.default_rng(2).integers(40, 200, (8, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model():
    import torch

    from stpm_edge.model import STPM, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(backbone="resnet18", image_size=SIZE, teacher_weights="random")
    return STPM(config).eval()


def build(model, integer_stem: bool, layout: str = "separate", colour: str = "BGR"):
    options = G.GraphOptions(layout=layout, color_order=colour, integer_stem=integer_stem)
    return G.build_graph(model, CALIBRATION, options, "0" * 64)


def run(graph: onnx.ModelProto, batch: np.ndarray, extra: tuple[str, ...] = ()) -> list:
    import onnxruntime as ort

    graph = onnx.ModelProto.FromString(graph.SerializeToString())
    graph.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in extra)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = ["anomaly_map", "score", *extra]
    return session.run(names, {session.get_inputs()[0].name: batch})


@pytest.mark.parametrize(("layout", "colour"), [("separate", "BGR"), ("stacked", "RGB")])
def test_integer_stem_graph_computes_what_the_plain_graph_does(model, layout, colour) -> None:
    batch = frames(0, 4)
    plain, whole = build(model, False, layout, colour), build(model, True, layout, colour)
    assert G.read_metadata(whole)["stpm.integer_stem"] == "true"
    assert "stpm.integer_stem" not in G.read_metadata(plain)
    (want_map, want_score), (got_map, got_score) = run(plain, batch), run(whole, batch)
    peak = np.abs(want_map).max()
    assert np.abs(got_map - want_map).max() <= 1e-4 * peak  # the padding is where it was
    np.testing.assert_allclose(got_score, want_score, rtol=1e-4)


def test_stem_input_is_whole_numbers_in_one_byte(model) -> None:
    graph = build(model, True)
    (source,) = int8_graph.stem_inputs(graph)
    pad = 3  # resnet18's 7x7 stem pads 3 on each side
    stem_input = run(graph, frames(1, 3), (source,))[2]
    assert stem_input.shape == (3, 3, SIZE + 2 * pad, SIZE + 2 * pad)
    inside = stem_input[:, :, pad:-pad, pad:-pad]
    np.testing.assert_array_equal(inside, np.round(inside))
    assert inside.min() == -128 and inside.max() == 127  # the black and the white frame
    # the padding is 255 mean - 128, what x - 255 mean = 0 is in x - 128 (BGR input order)
    mean = 255 * np.asarray(model.config.mean)[::-1] - 128
    np.testing.assert_allclose(stem_input[0, :, 0, 0], mean, rtol=1e-6)


def exact_quantiser(model: onnx.ModelProto, tensor: str) -> tuple[float, np.ndarray]:
    """(scale, zero point) of the QuantizeLinear reading ``tensor``."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    (q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    return float(inits[q.input[1]]), inits[q.input[2]]


def stem_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    weights = []
    for name in STEMS:
        dq = producers.get(convs[name].input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear", f"{name} reads float weights"
        weights.append(inits[dq.input[0]])
    return weights


def test_cpu_int8_quantises_the_stems_at_scale_one(model) -> None:
    """ONNX Runtime's quantiser gets the stem input's scale as an override: a range calibrated on
    these frames would clip the byte's ends (about 1.08 per step on photographs: rounding)."""
    fp32 = build(model, True)
    q = int8.quantize_int8(fp32, calibration_frames(), progress=False, target="cpu")
    scale, zero = exact_quantiser(q, int8_graph.stem_inputs(fp32)[0])
    assert scale == 1.0 and zero.dtype == np.uint8 and int(zero) == 128
    assert all(
        np.abs(w.astype(int)).max() <= int8_weights.PAIR_SAFE_WEIGHT for w in stem_weights(q)
    )
    (want, _), (got, _) = run(fp32, frames(3, 2)), run(q, frames(3, 2))
    assert np.isfinite(got).all() and np.abs(got - want).max() < 0.5 * np.abs(want).max()


def test_openvino_int8_quantises_the_stems_after_nncf(model) -> None:
    """NNCF clips a calibrated stem input and corrects the clipping's bias shift in the layers
    after it; the stems stay in its ignored scope and ``quantize_stems`` quantises them."""
    pytest.importorskip("nncf", reason="nncf not installed (pip install '.[quantization]')")
    fp32 = build(model, True)
    q = int8.quantize_int8(fp32, calibration_frames(), target="openvino")
    scale, zero = exact_quantiser(q, int8_graph.stem_inputs(fp32)[0])
    assert scale == 1.0 and zero.dtype == np.int8 and int(zero) == 0
    assert all(np.abs(w.astype(int)).max() < int8_weights.PAIR_SAFE_WEIGHT for w in stem_weights(q))
    onnx.checker.check_model(q)
    (want, _), (got, _) = run(fp32, frames(3, 2)), run(q, frames(3, 2))
    assert np.isfinite(got).all() and np.abs(got - want).max() < 0.5 * np.abs(want).max()


def test_without_integer_stem_the_stems_stay_float(model) -> None:
    q = int8.quantize_int8(build(model, False), calibration_frames(), progress=False, target="cpu")
    with pytest.raises(AssertionError, match="reads float weights"):
        stem_weights(q)


def test_which_exports_use_integer_stems() -> None:
    assert int8.wants_integer_stem("resnet18", "cpu")
    assert int8.wants_integer_stem("resnet18", "openvino")
    assert not int8.wants_integer_stem("resnet18", "tensorrt")  # float stems on a GPU
    # its stem feeds float blocks 0-2: quantising it would gain nothing
    assert not int8.wants_integer_stem("efficientnet_lite0", "cpu")


def test_a_network_that_pads_in_its_own_module_is_refused() -> None:
    """efficientnet_lite0 pads its input in ``_stem_pad``: the stems would pad x - 128 with zeros."""
    import torch

    from stpm_edge.model import STPM, ModelConfig

    torch.manual_seed(0)
    lite0 = STPM(ModelConfig(image_size=SIZE, teacher_weights="random")).eval()
    with pytest.raises(ExportError, match="_stem_pad"):
        build(lite0, True)


def test_integer_stem_needs_fp32_and_a_uint8_input() -> None:
    from stpm_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="integer_stem"):
        G.GraphOptions(precision="fp16", integer_stem=True)
    with pytest.raises(ConfigError, match="integer_stem"):
        G.GraphOptions(input_format="float32_nchw", integer_stem=True)
