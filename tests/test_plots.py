"""Tests for stpm_edge.plots and stpm_edge.runtime.visualize (overlay, regions, PNG writers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stpm_edge import metrics, plots
from stpm_edge.errors import DataError
from stpm_edge.runtime import visualize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_bytes: int = 2000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    assert cv2.imread(str(path)) is not None


def _two_blobs() -> np.ndarray:
    """(40, 60) float32 map: a 5x4 blob (area 20) and an 8x10 blob (area 80), background 0.1."""
    m = np.full((40, 60), 0.1, dtype=np.float32)
    m[2:6, 3:8] = 0.9  # x=3, y=2, w=5, h=4
    m[20:30, 40:48] = 0.7  # x=40, y=20, w=8, h=10
    m[35, 55] = 0.95  # a single hot pixel, below min_area
    return m


# ---------------------------------------------------------------------------------------------
# runtime.visualize


def test_find_regions_two_blobs() -> None:
    regions = visualize.find_regions(_two_blobs(), threshold=0.5, min_area=4)
    assert regions == [(40, 20, 8, 10, 80), (3, 2, 5, 4, 20)]  # largest first
    with_noise = visualize.find_regions(_two_blobs(), threshold=0.5, min_area=1)
    assert (55, 35, 1, 1, 1) in with_noise and len(with_noise) == 3
    assert visualize.find_regions(_two_blobs(), threshold=0.8, min_area=4) == [(3, 2, 5, 4, 20)]


def test_find_regions_diagonal_pixels_are_one_region() -> None:
    m = np.zeros((10, 10), dtype=np.float32)
    m[[2, 3, 4], [2, 3, 4]] = 1.0
    assert visualize.find_regions(m, 0.5, min_area=1) == [(2, 2, 3, 3, 3)]


def test_scale_regions_to_frame_pixels() -> None:
    scaled = visualize.scale_regions([(3, 2, 5, 4, 20)], sx=2.0, sy=3.0, dx=100, dy=10)
    assert scaled == [(106, 16, 10, 12, 120)]


def test_draw_regions_draws_on_a_copy() -> None:
    bgr = np.zeros((40, 60, 3), dtype=np.uint8)
    out = visualize.draw_regions(bgr, [(3, 2, 5, 4, 20)], color=(0, 0, 255), thickness=1)
    assert not bgr.any()  # input untouched
    assert tuple(out[2, 3]) == (0, 0, 255) and tuple(out[5, 7]) == (0, 0, 255)  # corners
    assert not out[3:5, 4:7].any()  # inside the box stays empty
    assert not out[10:, 10:].any()


def test_heatmap_overlay_colours_and_blending() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    hot = np.full((16, 24), 5.0, dtype=np.float32)
    assert np.array_equal(visualize.heatmap_overlay(rgb, hot, 0.0, 1.0, alpha=0.0), rgb)
    full_rgb = visualize.heatmap_overlay(rgb, hot, 0.0, 1.0, alpha=1.0)
    full_bgr = visualize.heatmap_overlay(rgb[..., ::-1], hot, 0.0, 1.0, 1.0, color_order="BGR")
    jet_top = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_JET)[0, 0]  # BGR
    assert np.array_equal(full_rgb[0, 0], jet_top[::-1])  # hottest colour, RGB order
    assert np.array_equal(full_bgr, full_rgb[..., ::-1])
    half = visualize.heatmap_overlay(rgb, hot, 0.0, 1.0, alpha=0.5).astype(int)
    np.testing.assert_allclose(half, (rgb.astype(int) + full_rgb.astype(int)) / 2, atol=1)


def test_heatmap_overlay_resizes_map_to_image() -> None:
    rgb = np.zeros((64, 96, 3), dtype=np.uint8)
    small = np.zeros((8, 12), dtype=np.float32)
    small[:, 6:] = 1.0  # right half hot
    out = visualize.heatmap_overlay(rgb, small[None], 0.0, 1.0, alpha=1.0)
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    assert out[32, 90, 0] > 100 and out[32, 5, 2] > 100  # red right, blue left (RGB)


def test_normalize_map_and_errors() -> None:
    m = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    assert visualize.normalize_map(m, 0.0, 1.0).tolist() == [[0, 0, 128, 255, 255]]
    with pytest.raises(DataError, match="vmax > vmin"):
        visualize.normalize_map(m, 1.0, 1.0)
    with pytest.raises(DataError, match=r"\(H, W, 3\) uint8"):
        visualize.heatmap_overlay(np.zeros((4, 4), np.uint8), m, 0.0, 1.0)


def test_visualize_is_torch_and_matplotlib_free() -> None:
    code = (
        "import sys, stpm_edge.runtime.visualize; "
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------------------------
# plots


def test_plot_roc_and_pro_write_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32), dtype=bool)
    masks[1, 4:12, 4:12] = True
    masks[3, 20:30, 2:5] = True
    maps = (rng.random(masks.shape) + masks).astype(np.float32)
    fpr, tpr, _ = metrics.roc_curve(masks, maps)  # > 4000 points: exercises thinning
    roc_png = plots.plot_roc(fpr, tpr, metrics.auroc(masks, maps), tmp_path / "sub" / "roc.png")
    _assert_png(roc_png)
    pfpr, pro, _ = metrics.pro_curve(masks, maps)
    pro_png = plots.plot_pro(pfpr, pro, metrics.aupro(masks, maps), tmp_path / "pro.png")
    _assert_png(pro_png)


def test_save_overlay_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    items = []
    for i in range(4):
        mask = np.zeros((48, 48), dtype=bool)
        if i:
            mask[10:20, 8 * i : 8 * i + 8] = True
        items.append(
            plots.GridItem(
                image=rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
                anomaly_map=rng.random((12, 12)).astype(np.float32),
                score=float(i),
                mask=mask if i else None,
                title=f"img_{i}.png",
            )
        )
    path = plots.save_overlay_grid(items, tmp_path / "grid.png", 0.0, 1.0, threshold=1.0)
    _assert_png(path, min_bytes=10_000)
    height, width = cv2.imread(str(path)).shape[:2]
    assert height > width  # four rows (one per item), three columns


def test_plots_reexports_runtime_overlay() -> None:
    assert plots.heatmap_overlay is visualize.heatmap_overlay
