"""PNG plots for the evaluation report: ROC and PRO curves, and an overlay grid.

Figures are drawn with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``),
never through ``pyplot``: no global backend switch, no display needed, safe in threads. The heat
map colouring is the runtime's (:func:`stpm_edge.runtime.visualize.heatmap_overlay`), so the
report and the camera view look the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stpm_edge.runtime.visualize import heatmap_overlay

__all__ = ["GridItem", "heatmap_overlay", "plot_pro", "plot_roc", "save_overlay_grid"]

_MAX_CURVE_POINTS = 4000  # a pixel ROC can have millions of points; a PNG needs a few thousand


@dataclass(frozen=True)
class GridItem:
    """One row of :func:`save_overlay_grid`.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        anomaly_map: (h, w) float raw map (resized to the image size for display).
        score: raw image score.
        mask: (H, W) bool ground truth, or None (good image / no mask).
        title: shown above the row's first panel, e.g. the file name.
    """

    image: np.ndarray
    anomaly_map: np.ndarray
    score: float
    mask: np.ndarray | None = None
    title: str = ""


def _new_figure(width: float, height: float):
    """A Figure attached to an Agg canvas (imports matplotlib lazily)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ``_MAX_CURVE_POINTS`` evenly spaced points of a curve, both ends kept."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size <= _MAX_CURVE_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, _MAX_CURVE_POINTS).round().astype(np.int64))
    return x[keep], y[keep]


def plot_roc(
    fpr: np.ndarray, tpr: np.ndarray, auc: float, path: str | Path, title: str = "ROC"
) -> Path:
    """Write a ROC curve PNG.

    Args:
        fpr, tpr: (K,) float, e.g. from :func:`stpm_edge.metrics.roc_curve`.
        auc: the area, shown in the legend.
        path: output PNG (parent folders are created; an existing file is replaced).
        title: figure title.

    Returns:
        ``path`` as a Path.
    """
    fig = _new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    x, y = _thin(fpr, tpr)
    ax.plot(x, y, lw=2, label=f"AUROC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="gray")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_pro(
    fpr: np.ndarray,
    pro: np.ndarray,
    aupro: float,
    path: str | Path,
    fpr_limit: float = 0.3,
    title: str = "PRO",
) -> Path:
    """Write a PRO-vs-FPR curve PNG with the integrated part (FPR <= ``fpr_limit``) shaded.

    Args:
        fpr, pro: (K,) float, e.g. from :func:`stpm_edge.metrics.pro_curve`.
        aupro: the normalised area, shown in the legend.
        path: output PNG (parent folders are created; an existing file is replaced).
        fpr_limit: the integration limit (drawn as a vertical line; the x axis shows up to
            twice the limit, at most 1).

    Returns:
        ``path`` as a Path.
    """
    fig = _new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    x, y = _thin(fpr, pro)
    ax.plot(x, y, lw=2, label=f"AU-PRO@{fpr_limit:g} = {aupro:.4f}")
    # Clipping x at the limit shades exactly the integrated area (points beyond collapse onto
    # the zero-width vertical line x = fpr_limit).
    ax.fill_between(np.minimum(x, fpr_limit), y, alpha=0.2)
    ax.axvline(fpr_limit, ls="--", lw=1, color="gray")
    ax.set(xlim=(0, min(1.0, 2 * fpr_limit)), ylim=(0, 1.01))
    ax.set(xlabel="false positive rate (normal pixels)", ylabel="per-region overlap")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def save_overlay_grid(
    items: Sequence[GridItem],
    path: str | Path,
    vmin: float,
    vmax: float,
    threshold: float | None = None,
    alpha: float = 0.5,
) -> Path:
    """Write a grid PNG, one row per item: image | image + mask contour | heat-map overlay.

    Args:
        items: rows to draw (keep it to a dozen or so; each row is about 2.5 inches high).
        path: output PNG (parent folders are created; an existing file is replaced).
        vmin, vmax: raw map values shown as coldest / hottest (e.g. calibration score_min/max).
        threshold: raw image threshold; when given, each row's title adds the OK/NG verdict.
        alpha: heat-map weight in the overlay.

    Returns:
        ``path`` as a Path.
    """
    if not items:
        raise ValueError("save_overlay_grid needs at least one item")  # caller bug, not user data
    fig = _new_figure(7.5, 2.5 * len(items))
    axes = fig.subplots(len(items), 3, squeeze=False)
    for row, item in zip(axes, items, strict=True):
        verdict = "" if threshold is None else (" NG" if item.score >= threshold else " OK")
        row[0].imshow(item.image)
        row[0].set_title(item.title, fontsize=8)
        row[1].imshow(item.image)
        if item.mask is not None and np.any(item.mask):
            row[1].contour(np.asarray(item.mask, dtype=float), levels=[0.5], colors="red")
        row[1].set_title("ground truth", fontsize=8)
        row[2].imshow(heatmap_overlay(item.image, item.anomaly_map, vmin, vmax, alpha))
        row[2].set_title(f"score {item.score:.4g}{verdict}", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)
