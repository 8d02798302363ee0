"""The colour statistics map's maths (stpm_edge.colour_map), on synthetic images: no model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stpm_edge import colour_map as cm
from stpm_edge.errors import CheckpointError, ConfigError

SIZE = 128  # stride 4, window 8 px


def texture(rng: np.random.Generator, n: int, size: int = SIZE) -> torch.Tensor:
    """(n, 3, S, S) float RGB in (0, 1): a brownish texture with per-image gain jitter."""
    base = np.array([0.55, 0.4, 0.3], np.float32).reshape(1, 3, 1, 1)
    grain = rng.normal(0.0, 0.08, (n, 1, size, size)).astype(np.float32)  # luminance texture
    tint = rng.normal(0.0, 0.01, (n, 3, size, size)).astype(np.float32)
    gain = rng.uniform(0.9, 1.1, (n, 1, 1, 1)).astype(np.float32)
    return torch.from_numpy(np.clip((base * (1 + grain) + tint) * gain, 0.01, 1.0))


def fitted(mode: str = "texture", n: int = 24, seed: int = 0) -> cm.ColourMap:
    cells = cm.cell_colours(texture(np.random.default_rng(seed), n), cm.cell_window(SIZE))
    return cm.ColourMap(cm.statistics(cells, mode), SIZE, [0.5] * 3, [0.5] * 3)


def region_cells(top: int, left: int, side: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Masks over the grid: cells whose window lies inside the region / fully outside it."""
    stride = size // cm.GRID
    half = cm.WINDOW * stride / 2
    centres = (np.arange(cm.GRID) + 0.5) * stride  # window [c - half, c + half)
    rows_in = (centres - half >= top) & (centres + half <= top + side)
    cols_in = (centres - half >= left) & (centres + half <= left + side)
    rows_out = (centres + half <= top) | (centres - half >= top + side)
    cols_out = (centres + half <= left) | (centres - half >= left + side)
    inside = rows_in[:, None] & cols_in[None, :]
    outside = rows_out[:, None] | cols_out[None, :]
    return inside, outside


@pytest.mark.parametrize(
    ("gains", "what"),
    [((1.12, 0.94, 0.94), "colour"), ((0.85, 0.85, 0.85), "intensity")],
)
def test_a_uniform_shift_of_a_region_raises_the_map_there_and_nowhere_else(gains, what) -> None:
    colour = fitted()
    image = texture(np.random.default_rng(99), 1)
    stained = image.clone()
    top, left, side = 30, 30, 64  # a quarter of the frame
    stained[:, :, top : top + side, left : left + side] *= torch.tensor(gains).view(1, 3, 1, 1)
    before, after = colour(image)[0, 0].numpy(), colour(stained)[0, 0].numpy()
    inside, outside = region_cells(top, left, side)
    assert inside.sum() >= 16 and outside.sum() > 500
    # there: far above anything the good image shows
    assert after[inside].min() > 5 * before.max(), what
    # nowhere else: the cells are relative to the image's median cell, which a stain this size
    # hardly moves (relative to the mean cell, the rest of the frame would move by 14-21 %)
    rise = after[inside].mean() - before[inside].mean()
    assert np.abs(after - before)[outside].max() < 0.02 * rise, what


def test_a_global_gain_and_white_balance_change_nothing() -> None:
    """Lighting and camera settings scale channels over the whole frame: the cells are relative
    to the image's median cell, so the map is invariant (up to float rounding)."""
    colour = fitted()
    image = texture(np.random.default_rng(5), 2)
    balanced = image * torch.tensor([0.8, 1.1, 1.25]).view(1, 3, 1, 1)
    np.testing.assert_allclose(
        colour(balanced).numpy(), colour(image).numpy(), rtol=2e-3, atol=2e-3
    )


def test_texture_statistics_are_the_mean_and_regularised_inverse_covariance() -> None:
    rng = np.random.default_rng(1)
    true_cov = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]]) * 1e-3
    vectors = rng.multivariate_normal([1.0, 0.9, 1.1], true_cov, size=(10, 8, 8))
    cells = torch.from_numpy(vectors).permute(0, 3, 1, 2)  # (N, 3, g, g)
    mean, precision = cm.fit_statistics(cells, "texture")
    assert mean.shape == (3, 1, 1) and precision.shape == (3, 3, 1, 1)
    flat = vectors.reshape(-1, 3)
    cov = np.cov(flat.T, bias=True)
    ridge = cm.RIDGE * np.trace(cov) / 3
    np.testing.assert_allclose(mean[:, 0, 0].numpy(), flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(
        precision[:, :, 0, 0].numpy(), np.linalg.inv(cov + ridge * np.eye(3)), rtol=1e-4
    )
    # and the map is that Mahalanobis distance
    d = cells - mean.unsqueeze(0).double()
    expected = np.einsum(
        "nihw,ij,njhw->nhw", d.numpy(), precision[:, :, 0, 0].double().numpy(), d.numpy()
    )
    got = cm.mahalanobis(cells.float(), mean[None], precision[None])[:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_aligned_statistics_are_per_position() -> None:
    """A cell that is always red in the good images is normal there and abnormal elsewhere."""
    rng = np.random.default_rng(2)
    cells = torch.from_numpy(1.0 + rng.normal(0, 0.01, (20, 3, cm.GRID, cm.GRID)))
    cells[:, :, 3, 4] += torch.tensor([0.3, -0.15, -0.15]).view(1, 3).double()
    mean, precision = cm.fit_statistics(cells, "aligned")
    assert mean.shape == (3, cm.GRID, cm.GRID) and precision.shape == (3, 3, cm.GRID, cm.GRID)
    np.testing.assert_allclose(mean.numpy(), cells.mean(0).numpy(), rtol=1e-5)
    probe = torch.ones(1, 3, cm.GRID, cm.GRID)
    probe[:, :, 3, 4] = torch.tensor([1.3, 0.85, 0.85])
    probe[:, :, 10, 10] = torch.tensor([1.3, 0.85, 0.85])
    dist = cm.mahalanobis(probe, mean[None], precision[None])[0, 0]
    assert dist[3, 4] < 10 and dist[10, 10] > 100 * dist[3, 4]
    # texture statistics cannot tell the two cells apart
    t_mean, t_precision = cm.fit_statistics(cells, "texture")
    t_dist = cm.mahalanobis(probe, t_mean[None], t_precision[None])[0, 0]
    assert t_dist[3, 4] == pytest.approx(float(t_dist[10, 10]), rel=1e-6)


def test_fusion_adds_the_colour_maps_excess_over_its_good_scale() -> None:
    colour = fitted()
    stats = colour.stats
    scaled = cm.ColourMap(
        cm.ColourStats(stats.mode, stats.mean, stats.precision, 0.5, 4.0),
        SIZE,
        [0.5] * 3,
        [0.5] * 3,
    )
    stpm = torch.rand(2, 1, 64, 64)
    low = 8.0 * torch.rand(2, 1, cm.GRID, cm.GRID)  # half of it below the scale, half above
    excess = torch.clamp(low / 4.0 - 1.0, min=0.0)
    up = torch.nn.functional.interpolate(
        excess, size=(64, 64), mode="bilinear", align_corners=False
    )
    fused = scaled.fuse(stpm, low)
    np.testing.assert_allclose(fused.numpy(), (stpm / 0.5 + up).numpy(), rtol=1e-6)
    # a colour map within its good scale changes nothing
    assert torch.equal(scaled.fuse(stpm, torch.full_like(low, 3.9)), stpm / 0.5)


def test_normalised_input_gives_the_same_map_as_rgb() -> None:
    colour = fitted()
    rgb = texture(np.random.default_rng(3), 2)
    x = (rgb - 0.5) / 0.5  # the model's input normalisation
    np.testing.assert_allclose(
        colour(colour.rgb_from_normalised(x)).numpy(), colour(rgb).numpy(), rtol=1e-4, atol=1e-4
    )


def test_payload_round_trip_and_malformed_entries() -> None:
    colour = fitted("aligned")
    entry = colour.stats.to_payload()
    back = cm.ColourStats.from_payload(entry)
    assert back.mode == "aligned" and torch.equal(back.precision, colour.stats.precision)
    with pytest.raises(CheckpointError, match="malformed"):
        cm.ColourStats.from_payload({"mode": "texture"})
    with pytest.raises(CheckpointError, match="not readable here"):
        cm.ColourStats.from_payload({**entry, "mode": "texture"})  # aligned shapes, texture mode
    with pytest.raises(ConfigError, match="divisible by"):
        cm.cell_window(224)
    with pytest.raises(ConfigError, match="unknown"):
        cm.fit_statistics(torch.ones(3, 3, 2, 2), "per-pixel")


@pytest.mark.parametrize("size", [64, 128, 256])
def test_cells_are_the_box_mean_of_one_window(size: int) -> None:
    """The two poolings equal one window-wide depthwise box convolution at the cell stride."""
    rgb = texture(np.random.default_rng(3), 2, size)
    window = cm.cell_window(size)
    stride = window // cm.WINDOW
    padded = F.pad(rgb, ((window - stride) // 2,) * 4, mode="reflect")
    box = torch.full((3, 1, window, window), 1.0 / window**2)
    want = F.conv2d(padded, box, stride=stride, groups=3)
    want = want / cm.median_cell(want)
    got = cm.cell_colours(rgb, window)
    assert got.shape == (2, 3, cm.GRID, cm.GRID)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_local_distance_is_the_nearest_whitened_candidate() -> None:
    """The MatMul + ReduceMin form equals the brute-force minimum over every candidate."""
    colour = fitted("local", n=6)
    cells = cm.cell_colours(texture(np.random.default_rng(5), 2), cm.cell_window(SIZE))
    got = colour.distance(cells)
    w, candidates = colour.stats.whiten[:, :, 0, 0], colour.stats.candidates  # W, (K, 3, g, g)
    z = torch.einsum("ij,bjhw->bihw", w, cells - colour.stats.centre)
    brute = ((z.unsqueeze(1) - candidates.unsqueeze(0)) ** 2).sum(2).amin(1, keepdim=True)
    assert candidates.shape[0] == 6 * (2 * cm.RADIUS + 1) ** 2
    torch.testing.assert_close(got, brute, rtol=1e-4, atol=1e-4)


def test_local_names_are_refused_in_other_modes() -> None:
    """``candidates`` / ``whiten`` name local mode's tensors; on a mean and covariance they would
    hand a caller the wrong thing, so they do not exist there."""
    aligned = fitted("aligned", n=4).stats
    for name in ("candidates", "whiten"):
        with pytest.raises(AttributeError, match=f"{name} is local mode's"):
            getattr(aligned, name)


def test_local_mode_tolerates_a_shift_of_radius_cells_and_no_more() -> None:
    """A colour seen in training RADIUS cells away scores 0; one seen only further away does not
    (the pose jitter the mode forgives, and no more)."""
    g, r = cm.GRID, cm.RADIUS
    good = torch.full((2, 3, g, g), 1.0) + 0.01 * torch.randn(2, 3, g, g)
    good[:, 0, 10, 10] = 1.5  # a red spot at (10, 10) in training
    colour = cm.ColourMap(cm.statistics(good, "local"), SIZE, [0.5] * 3, [0.5] * 3)
    probe = good[:1].clone()
    probe[:, :, 10, 10] = good[0, :, 10, 11]
    probe[:, :, 10, 10 + r] = good[0, :, 10, 10]  # the spot, shifted by RADIUS cells
    probe[:, :, 20, 20] = good[0, :, 10, 10]  # the spot, far from where it was seen
    d = colour.distance(probe)[0, 0]
    assert d[10, 10 + r] < 1e-3 and d[20, 20] > 100.0 * d[10, 10 + r] + 1.0


def test_local_payload_round_trip_and_wrong_shapes() -> None:
    entry = fitted("local", n=4).stats.to_payload()
    back = cm.ColourStats.from_payload(entry)
    assert back.mode == "local" and torch.equal(back.mean, torch.as_tensor(entry["mean"]))
    for broken in ({"precision": torch.eye(3).view(3, 3, 1, 1)[:2]}, {"centre": None}):
        with pytest.raises(CheckpointError, match="not readable here"):
            cm.ColourStats.from_payload({**entry, **broken})
