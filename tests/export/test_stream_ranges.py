"""Stacked INT8 with the student's streams at the teacher's ranges (``export.stream_ranges``).

In the stacked layout one INT8 scale per tensor covers both networks; a student whose streams are
much smaller than the teacher's loses bits on the teacher's grid. A positive factor per stream
(``FeatureTrunk.scale_streams``) changes no feature direction, so no map.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from stpm_edge.backbones import create_backbone
from stpm_edge.export import graph as G
from stpm_edge.export import int8
from stpm_edge.export.stream_ranges import stream_peaks, student_stream_scales
from stpm_edge.runtime.image import to_model_input

SIZE = 64
CALIBRATION = {"image_threshold": 0.5, "pixel_threshold": 0.5, "score_min": 0.0, "score_max": 1.0}


def stream_outputs(trunk, batch: torch.Tensor) -> list[list[torch.Tensor]]:
    """Every stream module's output on ``batch``, per stream."""
    streams = trunk.streams()
    outputs: list[list[torch.Tensor]] = [[] for _ in streams]
    handles = [
        module.register_forward_hook(lambda _m, _i, out, k=k: outputs[k].append(out.clone()))
        for k, stream in enumerate(streams)
        for module in stream
    ]
    with torch.no_grad():
        features = trunk(batch)
    for handle in handles:
        handle.remove()
    return outputs + [features]


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_a_stream_factor_scales_its_outputs_and_features_and_nothing_else(backbone) -> None:
    torch.manual_seed(0)
    trunk = create_backbone(backbone, "random").eval()
    factors = [2.0 + 0.5 * k for k in range(len(trunk.streams()))]
    batch = torch.randn(2, 3, SIZE, SIZE)
    *before, features_before = stream_outputs(trunk, batch)
    trunk.scale_streams(factors)
    *after, features_after = stream_outputs(trunk, batch)
    for factor, old, new in zip(factors, before, after, strict=True):
        for a, b in zip(old, new, strict=True):
            torch.testing.assert_close(b, factor * a, rtol=1e-4, atol=1e-4 * factor * a.abs().max())
    for a, b in zip(features_before, features_after, strict=True):  # directions unchanged
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        assert cos.min() > 1 - 1e-5


def test_a_trunk_without_streams_is_refused_with_a_note() -> None:
    from stpm_edge.backbones import FeatureTrunk
    from stpm_edge.errors import ExportError

    with pytest.raises(ExportError, match="--layout separate"):
        stream_peaks(FeatureTrunk(), torch.zeros(1, 3, SIZE, SIZE))


def test_wrong_number_of_factors_is_refused() -> None:
    trunk = create_backbone("resnet18", "random")
    with pytest.raises(ValueError, match="3 stream factors"):
        trunk.scale_streams([1.0, 2.0])


@pytest.fixture(scope="module")
def small_student():
    """A random-teacher lite0 pair whose student streams are 16x smaller than it would be."""
    from stpm_edge.model import STPM, ModelConfig

    torch.manual_seed(0)
    model = STPM(ModelConfig(image_size=SIZE, teacher_weights="random")).eval()
    model.student.scale_streams([1 / 16] * len(model.student.streams()))
    return model


def frames(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_student_streams_reach_the_teacher_peaks(small_student) -> None:
    rgb = frames(0, 6)
    scales = student_stream_scales(small_student, rgb)
    assert min(scales) > 4  # the student was made 16x smaller
    student = copy.deepcopy(small_student.student)
    student.scale_streams(scales)
    cfg = small_student.config
    batch = torch.from_numpy(
        to_model_input(rgb, SIZE, "float32_nchw", "RGB", cfg.mean, cfg.std, order="RGB")
    )
    np.testing.assert_allclose(
        stream_peaks(student, batch), stream_peaks(small_student.teacher, batch), rtol=1e-4
    )


def build(model, scales: tuple[float, ...], layout: str = "stacked"):
    options = G.GraphOptions(layout=layout, student_stream_scales=scales)
    return G.build_graph(model, CALIBRATION, options, "0" * 64)


def maps(graph, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["anomaly_map"], {"image": batch})[0]


def test_scaled_stacked_graph_computes_the_same_map(small_student) -> None:
    scales = student_stream_scales(small_student, frames(0, 6))
    plain, scaled = build(small_student, ()), build(small_student, scales)
    assert "stpm.student_stream_scales" not in G.read_metadata(plain)
    recorded = json.loads(G.read_metadata(scaled)["stpm.student_stream_scales"])
    assert np.allclose(recorded, scales)
    batch = frames(1, 3)
    want, got = maps(plain, batch), maps(scaled, batch)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def int8_map_error(model, scales, layout: str = "stacked") -> float:
    fp32 = build(model, scales, layout)
    quantized = int8.quantize_int8(fp32, frames(0, 8), progress=False, target="cpu")
    batch = frames(2, 4)
    want = maps(fp32, batch)
    return float(np.abs(maps(quantized, batch) - want).max() / np.abs(want).max())


def test_stacked_int8_holds_a_small_student_as_well_as_the_separate_graph(small_student) -> None:
    """On the teacher's grid the 16x smaller student keeps 4 bits fewer: the stacked graph's map is
    far from float32 unless the streams are matched first."""
    separate = int8_map_error(small_student, (), "separate")
    unmatched = int8_map_error(small_student, ())
    matched = int8_map_error(small_student, student_stream_scales(small_student, frames(0, 8)))
    assert unmatched > 3 * separate
    assert matched < 2 * separate


def test_stpm_export_matches_the_streams_of_stacked_int8_only(
    best_ckpt, demo_data, int8, tmp_path
) -> None:
    """The trained run's stacked INT8 graph carries its factors; the separate one (the session's
    INT8 fixture) has none."""
    import contextlib
    import io

    import onnx

    from stpm_edge.export.cli import main as export_main

    out = tmp_path / "stacked_int8.onnx"
    args = [str(best_ckpt), "-o", str(out), "--int8", "--target", "tensorrt", "--layout"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert export_main([*args, "stacked", "--calib", str(demo_data.train_good), "-q"]) == 0
    meta = G.read_metadata(onnx.load(out))
    scales = json.loads(meta["stpm.student_stream_scales"])
    assert len(scales) == 5 and all(s > 0 for s in scales)  # efficientnet_lite0's five streams
    assert meta["stpm.layout"] == "stacked"
    assert "stpm.student_stream_scales" not in G.read_metadata(int8)


@pytest.mark.parametrize(
    ("meta", "status"),
    [
        ({"stpm.layout": "stacked", "stpm.student_stream_scales": "[2.0, 3.0]"}, "pass"),
        ({"stpm.layout": "stacked"}, "warn"),  # exported before the streams were matched
        ({"stpm.layout": "stacked", "stpm.student_stream_scales": "[oops"}, "warn"),
        ({"stpm.layout": "separate"}, None),
    ],
)
def test_doctor_warns_of_a_stacked_int8_graph_with_unmatched_streams(meta, status) -> None:
    from stpm_edge.runtime.doctor.model import stacked_int8_check

    check = stacked_int8_check({"stpm.precision": "int8", **meta})
    assert (check and check.status) == status
    if status == "warn" and "stpm.student_stream_scales" not in meta:
        assert "Note: re-export" in check.detail
    assert stacked_int8_check({**meta, "stpm.precision": "fp32"}) is None
