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
# plots: the PNG is read back and the drawn content is checked at the pixels where it must be

C0_BGR = (180, 119, 31)  # matplotlib's first line colour #1f77b4, in OpenCV's BGR order


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The Figure objects the plot functions save, in order (to map data to pixel positions)."""
    seen: list = []
    save = plots._save

    def keep(fig, path):
        seen.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return seen


def _read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    bgr = cv2.imread(str(path))
    assert bgr is not None
    return bgr


def _pixel(bgr: np.ndarray, ax, x: float, y: float) -> np.ndarray:
    """The PNG pixel (BGR, int) under data point (x, y) of ``ax`` (display y grows upwards)."""
    px, py = ax.transData.transform((x, y))
    return bgr[int(round(bgr.shape[0] - py)), int(round(px))].astype(int)


def _gray_count(bgr: np.ndarray, ax, points: list[tuple[float, float]]) -> int:
    """How many of ``points`` are drawn in a dark neutral gray (dashed lines: not all of them)."""
    pixels = [_pixel(bgr, ax, x, y) for x, y in points]
    return sum(int(c.max() < 200 and c.max() - c.min() < 10) for c in pixels)


def _near(colour: np.ndarray, expected: tuple[int, int, int], tol: int = 40) -> bool:
    return bool(np.abs(colour - np.array(expected)).max() <= tol)


def test_plot_roc_draws_the_curve_where_the_data_is(tmp_path: Path, figures: list) -> None:
    fpr, tpr = np.array([0.0, 0.1, 1.0]), np.array([0.0, 0.9, 1.0])  # a knee at (0.1, 0.9)
    path = plots.plot_roc(fpr, tpr, 0.9, tmp_path / "sub" / "roc.png", title="brick")
    bgr = _read_png(path)
    assert bgr.shape == (450, 450, 3)  # 4.5 in at 100 dpi
    ax = figures[0].axes[0]
    assert ax.get_title() == "brick"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["AUROC = 0.9000"]
    assert _near(_pixel(bgr, ax, 0.1, 0.9), C0_BGR)  # the knee
    assert _near(_pixel(bgr, ax, 0.55, 0.95), C0_BGR)  # on the segment to (1, 1)
    assert _near(_pixel(bgr, ax, 0.05, 0.45), C0_BGR)  # on the segment from (0, 0)
    assert _gray_count(bgr, ax, [(t, t) for t in np.linspace(0.3, 0.8, 21)]) >= 5  # chance line
    assert (_pixel(bgr, ax, 0.7, 0.3) >= 250).all()  # below both lines: background


def test_plot_roc_thins_long_curves_keeping_the_ends(tmp_path: Path, figures: list) -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32), dtype=bool)
    masks[1, 4:12, 4:12] = True
    masks[3, 20:30, 2:5] = True
    maps = (rng.random(masks.shape) + masks).astype(np.float32)
    fpr, tpr, _ = metrics.roc_curve(masks, maps)
    assert fpr.size > 4000
    plots.plot_roc(fpr, tpr, metrics.auroc(masks, maps), tmp_path / "roc.png")
    x, y = figures[0].axes[0].get_lines()[0].get_data()
    assert len(x) == 4000 and (x[0], y[0], x[-1], y[-1]) == (fpr[0], tpr[0], fpr[-1], tpr[-1])
    assert np.all(np.diff(x) >= 0) and set(zip(x, y)) <= set(zip(fpr, tpr))  # real points only


def test_plot_pro_shades_only_the_integrated_part(tmp_path: Path, figures: list) -> None:
    fpr, pro = np.array([0.0, 0.2, 0.6, 1.0]), np.array([0.0, 0.8, 1.0, 1.0])
    path = plots.plot_pro(fpr, pro, 0.5678, tmp_path / "pro.png", fpr_limit=0.3)
    bgr = _read_png(path)
    ax = figures[0].axes[0]
    assert ax.get_xlim() == (0.0, 0.6)  # twice the limit
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["AU-PRO@0.3 = 0.5678"]
    assert _near(_pixel(bgr, ax, 0.1, 0.4), C0_BGR)  # on the curve
    shaded, outside = _pixel(bgr, ax, 0.2, 0.3), _pixel(bgr, ax, 0.45, 0.3)
    assert (outside >= 250).all()  # beyond the limit: not shaded
    assert _near(shaded, (235, 228, 210), tol=12)  # C0 at alpha 0.2 over white
    above = _pixel(bgr, ax, 0.05, 0.9)  # above the curve, inside the limit: not shaded
    assert (above >= 250).all()
    assert _gray_count(bgr, ax, [(0.3, y) for y in np.linspace(0.5, 0.95, 21)]) >= 5  # the limit


def test_save_overlay_grid_rows_panels_and_verdicts(tmp_path: Path, figures: list) -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]  # one solid RGB image per row
    hot = np.full((12, 12), 0.8, dtype=np.float32)
    items = []
    for i, colour in enumerate(colours):
        mask = np.zeros((48, 48), dtype=bool)
        mask[10:20, 10:30] = i > 0
        items.append(
            plots.GridItem(
                image=np.full((48, 48, 3), colour, dtype=np.uint8),
                anomaly_map=hot * i,
                score=float(i),
                mask=mask if i else None,
                title=f"img_{i}.png",
            )
        )
    path = plots.save_overlay_grid(items, tmp_path / "grid.png", 0.0, 1.0, threshold=1.0)
    bgr = _read_png(path)
    assert bgr.shape == (750, 750, 3)  # 7.5 in wide, 2.5 in per row
    fig = figures[0]
    assert len(fig.axes) == 9
    for row, (item, colour) in enumerate(zip(items, colours, strict=True)):
        image_ax, truth_ax, overlay_ax = fig.axes[3 * row : 3 * row + 3]
        assert image_ax.get_title() == item.title
        verdict = "NG" if item.score >= 1.0 else "OK"
        assert overlay_ax.get_title() == f"score {item.score:.4g} {verdict}"
        assert (len(truth_ax.collections) > 0) == (item.mask is not None)  # the mask contour
        expected_overlay = visualize.heatmap_overlay(item.image, item.anomaly_map, 0.0, 1.0, 0.5)
        for ax, rgb in ((image_ax, colour), (overlay_ax, tuple(expected_overlay[24, 24]))):
            got = _pixel(bgr, ax, 24, 24)  # the panel's centre (imshow: data = image pixels)
            assert _near(got, rgb[::-1], tol=3), (row, ax.get_title(), got, rgb)
