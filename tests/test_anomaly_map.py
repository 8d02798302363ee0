"""The anomaly-map maths: float32 whatever comes in, the paper's definitions on hand examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stpm_edge import anomaly_map as am


def reference_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The paper's definition, literally and in float64: normalise both, difference, 0.5 |.|²."""
    t, s = t.double(), s.double()
    t_hat = t / t.norm(dim=1, keepdim=True).clamp(min=am.NORM_EPS)
    s_hat = s / s.norm(dim=1, keepdim=True).clamp(min=am.NORM_EPS)
    return 0.5 * ((t_hat - s_hat) ** 2).sum(dim=1, keepdim=True)


def test_scale_distance_equals_the_normalised_difference() -> None:
    torch.manual_seed(0)
    t = torch.randn(2, 64, 9, 9)
    s = t + 0.05 * torch.randn_like(t)  # near-equal features: where cancellation would show
    s[0, :, 0, :] = torch.randn(64, 9)
    t[1, :, 2, 2] = 0.0  # an all-zero teacher vector: its normalised form is 0
    got = am.scale_distance(t, s)
    want = reference_distance(t, s)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)
    assert float(got[1, 0, 2, 2]) == pytest.approx(0.5)  # 0.5 * (0 + 1)
    assert float(got.min()) >= 0.0


def test_scale_distance_survives_fp16_overflow() -> None:
    # 256 channels of 300: the sum of squares (2.3e7) is far beyond fp16's 65504
    x = torch.full((2, 256, 3, 3), 300.0, dtype=torch.float16)
    assert not torch.isfinite((x * x).sum(dim=1)).all()  # the trap the float32 cast avoids
    y = x.clone()
    y[:, :128] = -300.0
    d = am.scale_distance(x, y)
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    torch.testing.assert_close(d, torch.ones_like(d))  # half the channels flipped: t̂·ŝ = 0


def test_scale_distance_all_zero_vectors_are_finite() -> None:
    for dtype in (torch.float16, torch.float32):
        zero = torch.zeros(1, 64, 2, 2, dtype=dtype)
        one = zero.clone()
        one[0, 0] = 2.0
        assert torch.equal(am.scale_distance(zero, zero), torch.zeros(1, 1, 2, 2))
        torch.testing.assert_close(am.scale_distance(zero, one), torch.full((1, 1, 2, 2), 0.5))


def test_scale_distance_range_and_extremes() -> None:
    torch.manual_seed(0)
    t = torch.randn(3, 16, 5, 7)
    d_same = am.scale_distance(t, t.clone())
    assert d_same.shape == (3, 1, 5, 7) and d_same.dtype == torch.float32
    assert torch.allclose(d_same, torch.zeros_like(d_same), atol=1e-6)
    d_opposite = am.scale_distance(t, -t)
    assert torch.allclose(d_opposite, torch.full_like(d_opposite, 2.0), atol=1e-5)
    d_scaled = am.scale_distance(t, 7.0 * t)  # only the direction matters
    assert torch.allclose(d_scaled, torch.zeros_like(d_scaled), atol=1e-6)
    d_random = am.scale_distance(t, torch.randn(3, 16, 5, 7))
    assert float(d_random.min()) >= 0.0 and float(d_random.max()) <= 2.0
    # orthogonal unit vectors: 0.5 * ||e1 - e2||^2 = 1
    e1, e2 = torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    e1[0, 0], e2[0, 1] = 1.0, 1.0
    assert float(am.scale_distance(e1, e2)) == pytest.approx(1.0)


def test_scale_distance_of_half_inputs_is_float32() -> None:
    t = torch.randn(1, 8, 2, 2).half()
    assert am.scale_distance(t, t.flip(1)).dtype == torch.float32


# Bilinear 2 -> 4 with align_corners=False samples the source at -0.25, 0.25, 0.75, 1.25 (clamped
# to the edges): the weight of the second source pixel is 0, 1/4, 3/4, 1 along each axis.
W_2_TO_4 = np.array([0.0, 0.25, 0.75, 1.0])


def bilinear_2x2_to_4x4(m: np.ndarray) -> np.ndarray:
    """The 4x4 bilinear upsampling of a 2x2 map, written out with the weights above."""
    wy, wx = W_2_TO_4[:, None], W_2_TO_4[None, :]
    return (
        (1 - wy) * (1 - wx) * m[0, 0]
        + (1 - wy) * wx * m[0, 1]
        + wy * (1 - wx) * m[1, 0]
        + wy * wx * m[1, 1]
    )


def test_combine_scales_is_the_product_of_upsampled_maps() -> None:
    a = torch.full((1, 1, 2, 2), 0.5)
    b = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    c = torch.full((1, 1, 1, 1), 3.0)
    combined = am.combine_scales([a, b, c], (2, 2))
    assert combined.shape == (1, 1, 2, 2)
    torch.testing.assert_close(combined, torch.tensor([[[[1.5, 3.0], [4.5, 6.0]]]]))
    # with real upsampling: 4x4 full-size map x (2x2 map upsampled) x constant
    full = torch.arange(1.0, 17.0).view(1, 1, 4, 4) / 8.0
    ramp = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    up = am.combine_scales([full, ramp, c], (4, 4))
    by_hand = np.array(
        [
            [0.0, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0],
        ]
    )
    np.testing.assert_allclose(bilinear_2x2_to_4x4(ramp[0, 0].numpy()), by_hand)  # the helper
    expected = full[0, 0].numpy() * by_hand * 3.0
    assert up.shape == (1, 1, 4, 4) and up.dtype == torch.float32
    np.testing.assert_allclose(up[0, 0].numpy(), expected, rtol=1e-6, atol=1e-7)


def test_upsample_size_and_bilinear_values() -> None:
    m = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=torch.float16)
    up = am.upsample(m, (4, 6))
    assert up.shape == (1, 1, 4, 6) and up.dtype == torch.float32
    # align_corners=False: corners keep the corner values, the mean is preserved for this ramp
    assert float(up[0, 0, 0, 0]) == 0.0 and float(up[0, 0, -1, -1]) == 3.0
    assert float(up.mean()) == pytest.approx(1.5)


def test_gaussian_blur_properties() -> None:
    flat = torch.full((2, 1, 20, 24), 0.37)
    torch.testing.assert_close(am.gaussian_blur(flat, 2.0), flat)
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32)
    assert am.gaussian_blur(x, 0.0) is x
    blurred = am.gaussian_blur(x, 1.5)
    assert blurred.shape == x.shape
    assert float(blurred.mean()) == pytest.approx(float(x.mean()), abs=0.02)
    assert float(blurred.std()) < 0.6 * float(x.std())  # it really smooths
    spike = torch.zeros(1, 1, 33, 33)
    spike[0, 0, 16, 16] = 1.0
    out = am.gaussian_blur(spike, 2.0)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)  # mass preserved away from borders
    assert int(out.flatten().argmax()) == 16 * 33 + 16
    torch.testing.assert_close(out, out.transpose(2, 3))  # isotropic
    kernel = am.gaussian_kernel(2.0)
    assert kernel.numel() == 2 * 8 + 1 and float(kernel.sum()) == pytest.approx(1.0)


def test_image_score_max_and_topk() -> None:
    amap = torch.zeros(2, 1, 10, 10)
    amap[0, 0, 0, :5] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0])
    amap[1, 0, 3, 3] = 1.0
    torch.testing.assert_close(am.image_score(amap, "max"), torch.tensor([9.0, 1.0]))
    # top 3 % of 100 pixels = 3 pixels
    torch.testing.assert_close(am.image_score(amap, "topk", 0.03), torch.tensor([8.0, 1.0 / 3.0]))
    # at least one pixel even for a tiny fraction
    torch.testing.assert_close(am.image_score(amap, "topk", 1e-9), torch.tensor([9.0, 1.0]))
    with pytest.raises(ValueError):
        am.image_score(amap, "median")


def test_normalize_score_maps_threshold_to_half_and_clips() -> None:
    scores = torch.tensor([0.2, 1.0, 1.5, 100.0, -100.0])
    out = am.normalize_score(scores, threshold=1.0, scale=2.0)
    torch.testing.assert_close(out, torch.tensor([0.1, 0.5, 0.75, 1.0, 0.0]))
    as_tensors = am.normalize_score(scores, torch.tensor(1.0), torch.tensor(2.0))
    torch.testing.assert_close(as_tensors, out)
    assert am.calibration_scale({"score_min": 3.0, "score_max": 3.0}) > 0


def loss_by_hand(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> float:
    """The paper's loss in float64 numpy: per scale, normalise each position's channel vector,
    0.5 x squared distance, mean over batch and positions; then the sum over scales."""
    total = 0.0
    for t, s in zip(teacher, student, strict=True):
        t64, s64 = t.double().numpy(), s.double().numpy()
        t_hat = t64 / np.sqrt((t64**2).sum(axis=1, keepdims=True))
        s_hat = s64 / np.sqrt((s64**2).sum(axis=1, keepdims=True))
        total += float((0.5 * ((t_hat - s_hat) ** 2).sum(axis=1)).mean())
    return total


def test_stpm_loss_on_a_hand_case() -> None:
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # scale 0, 2x2 positions: one orthogonal pair (distance 1), three equal pairs (0) -> mean 0.25;
    # the student is 5x longer where equal, so a missing normalisation shows
    t0, s0 = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    t0[0, :, :, :] = e1[:, None, None]
    s0[0, :, :, :] = 5.0 * e1[:, None, None]
    s0[0, :, 0, 1] = 3.0 * e2
    # scale 1, one position: opposite vectors, distance 0.5 * |2|^2 = 2
    t1, s1 = e1.view(1, 2, 1, 1), -4.0 * e1.view(1, 2, 1, 1)
    loss = am.stpm_loss([t0, t1], [s0, s1])
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert float(loss) == pytest.approx(0.25 + 2.0, abs=1e-6)
    assert loss_by_hand([t0, t1], [s0, s1]) == pytest.approx(2.25)  # the helper agrees


def test_stpm_loss_matches_the_formula_on_random_features() -> None:
    torch.manual_seed(0)
    teacher = [torch.randn(2, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2))]
    student = [torch.randn_like(t) for t in teacher]
    loss = am.stpm_loss(teacher, student)
    assert float(loss) == pytest.approx(loss_by_hand(teacher, student), rel=1e-5)
    assert float(am.stpm_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


def features_at_distances(d: np.ndarray, student_length: float = 3.0):
    """(h, w) wanted distances in [0, 2] -> teacher, student (1, 2, h, w) features whose
    ``0.5 * |t_hat - s_hat|^2`` is ``d``: for unit vectors at angle a it is ``1 - cos a``."""
    angle = torch.from_numpy(np.arccos(1.0 - d)).float()
    teacher = torch.stack([torch.ones_like(angle), torch.zeros_like(angle)])[None]
    student = student_length * torch.stack([torch.cos(angle), torch.sin(angle)])[None]
    return teacher, student


def test_anomaly_map_on_a_hand_case() -> None:
    d0 = np.array([[0.1, 0.2, 0.3, 0.4]] * 2 + [[1.0, 1.2, 1.4, 1.6]] * 2)  # at full size 4x4
    d1 = np.array([[0.2, 0.4], [0.6, 0.8]])  # 2x2, upsampled x2
    d2 = np.array([[1.5]])  # 1x1, a constant factor
    pairs = [features_at_distances(d) for d in (d0, d1, d2)]
    teacher, student = [p[0] for p in pairs], [p[1] for p in pairs]
    amap, scale_maps = am.anomaly_map(teacher, student, (4, 4), blur_sigma=0.0)
    for got, want in zip(scale_maps, (d0, d1, d2), strict=True):
        np.testing.assert_allclose(got[0, 0].numpy(), want, atol=1e-6)
    expected = d0 * bilinear_2x2_to_4x4(d1) * 1.5
    assert amap.shape == (1, 1, 4, 4) and amap.dtype == torch.float32
    np.testing.assert_allclose(amap[0, 0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_anomaly_map_blur_is_applied_last() -> None:
    torch.manual_seed(0)
    teacher = [torch.randn(2, c, 32 // r, 32 // r) for c, r in ((8, 4), (16, 8), (32, 16))]
    student = [torch.randn_like(t) for t in teacher]
    amap, scale_maps = am.anomaly_map(teacher, student, (32, 32), blur_sigma=0.0)
    assert amap.shape == (2, 1, 32, 32) and amap.dtype == torch.float32
    assert [m.shape[-1] for m in scale_maps] == [8, 4, 2]
    blurred, _ = am.anomaly_map(teacher, student, (32, 32), blur_sigma=1.0)
    torch.testing.assert_close(blurred, am.gaussian_blur(amap, 1.0))


def pyramid(size: int, batch: int = 2, seed: int = 0) -> tuple[list, list]:
    """Random strides-4/8/16 features with a local defect, like a trained student's maps."""
    torch.manual_seed(seed)
    teacher = [torch.randn(batch, c, size // r, size // r) for c, r in ((16, 4), (24, 8), (40, 16))]
    student = [t + 0.3 * torch.randn_like(t) for t in teacher]
    for t, s in zip(teacher, student, strict=True):
        n = t.shape[-1]
        s[0, :, n // 4 : n // 2, n // 2 : n // 2 + n // 8 + 1] = torch.randn(t.shape[1], 1, 1)
    return teacher, student


def test_feature_resolution_map_is_the_feature_grid_map_upsampled() -> None:
    teacher, student = pyramid(64)
    grid_map, _ = am.anomaly_map(teacher, student, (64, 64), 4.0, resolution="feature")
    assert grid_map.shape == (2, 1, 16, 16)
    # sigma 4 input pixels = 1 feature pixel at stride 4
    expected = am.gaussian_blur(
        am.combine_scales([am.scale_distance(t, s) for t, s in zip(teacher, student)], (16, 16)),
        1.0,
    )
    torch.testing.assert_close(grid_map, expected)
    full, score, _ = am.score_map(
        teacher, student, (64, 64), am.MapSettings(4.0, "topk", 0.01, "feature")
    )
    assert full.shape == (2, 1, 64, 64)
    torch.testing.assert_close(full, am.upsample(grid_map, (64, 64)))
    torch.testing.assert_close(score, am.image_score(grid_map, "topk", 0.01))


@pytest.mark.parametrize("reduction", ["max", "topk"])
def test_feature_resolution_agrees_with_input_resolution(reduction: str) -> None:
    """The fast path is a different discretisation of the same map: same defect, same ranking."""
    teacher, student = pyramid(256, batch=6, seed=1)
    for i in range(1, 6):  # defect-free images with rising noise: scores must keep their order
        for t, s in zip(teacher, student, strict=True):
            s[i] = t[i] + 0.1 * i * torch.randn_like(t[i])
    fast, fast_score, _ = am.score_map(
        teacher, student, (256, 256), am.MapSettings(4.0, reduction, 0.01, "feature")
    )
    slow, slow_score, _ = am.score_map(
        teacher, student, (256, 256), am.MapSettings(4.0, reduction, 0.01, "input")
    )
    assert fast.shape == slow.shape == (6, 1, 256, 256)
    # measured here: 5.8 % of the map's peak at most, 2.3 % on average; top-k scores within 2 %,
    # the max (one pixel, the most discretisation-sensitive) within 16 %
    assert float((fast - slow).abs().amax() / slow.amax()) < 0.08
    assert float((fast - slow).abs().mean() / slow.mean()) < 0.04
    rtol = 0.05 if reduction == "topk" else 0.2
    torch.testing.assert_close(fast_score, slow_score, rtol=rtol, atol=0.0)
    assert torch.equal(fast_score.argsort(), slow_score.argsort())


def test_unknown_map_resolution_is_refused() -> None:
    teacher, student = pyramid(64)
    with pytest.raises(ValueError, match="map resolution"):
        am.anomaly_map(teacher, student, (64, 64), 0.0, resolution="half")


@pytest.mark.parametrize(
    ("src", "dst"),
    [((16, 16), (64, 64)), ((64, 64), (256, 256)), ((5, 7), (32, 20)), ((1, 1), (4, 4))],
)
def test_upsample_equals_torch_bilinear(src: tuple[int, int], dst: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, *src)
    want = torch.nn.functional.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    got = am.upsample(x, dst)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# the constants are the point here (export/graph.py silences the same warnings)
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_upsample_exports_as_matmuls_of_constants(tmp_path) -> None:
    """No Resize (OpenVINO's is slow) and no op computing the weights: two MatMuls of constants."""
    onnx = pytest.importorskip("onnx")

    class Up(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return am.upsample(x, (256, 256))

    path = tmp_path / "up.onnx"
    torch.onnx.export(Up(), (torch.rand(1, 1, 64, 64),), str(path), dynamo=False, opset_version=17)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMul") == 2 and "Resize" not in ops
    assert set(ops) <= {"MatMul", "Constant", "Cast"}  # Cast: the float32 guarantee
