"""Evaluation metrics: ROC / AUROC, F1-max and the standard MVTec AD AU-PRO, in pure numpy.

Every metric is exact and comes from one *descending sweep*: sort the scores once, cut the sorted
list at the ends of each run of tied scores (one run = one threshold, predicted positive iff
``score >= threshold``), and read counts off cumulative sums at those cuts. Ties therefore form one
step of the curve, and areas use the trapezoid rule, as scikit-learn does. A pixel-level sweep over
100 images of 256x256 (6.5M values) takes about a second and a few hundred MB.

Undefined metrics (one class only, no defect region, no normal pixel) are ``float("nan")`` with a
logged warning, not an exception: a category whose test split has no defects still gets its other
numbers. :func:`to_json_dict` turns those NaNs into ``null`` for ``metrics.json``.

AU-PRO follows the MVTec AD definition (Bergmann et al., IJCV 2021): the regions are the
8-connected components of each ground-truth mask; PRO(t) is the mean over *all regions of all
images* of the fraction of the region with ``map >= t``; FPR(t) is the fraction of normal pixels
(mask 0, all images) with ``map >= t``. The PRO-vs-FPR curve is integrated from FPR 0 to
``fpr_limit`` (the PRO at exactly ``fpr_limit`` interpolated) and divided by ``fpr_limit``.

Example::

    m = image_and_pixel_metrics(labels, scores, masks, maps)
    json.dump(to_json_dict(m), f)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import ndimage

from stpm_edge.errors import DataError, note

logger = logging.getLogger(__name__)

__all__ = [
    "aupro",
    "auroc",
    "f1_max",
    "image_and_pixel_metrics",
    "per_defect_type_metrics",
    "pro_curve",
    "roc_curve",
    "to_json_dict",
]

# 8-connectivity inside one image, no connection between images of a (N, H, W) stack.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


# ---------------------------------------------------------------------------------------------
# input checks


def _as_scores(scores: Any, name: str) -> np.ndarray:
    """Flatten scores to a 1-D floating array (float32 kept, to save memory); reject NaN/inf."""
    s = np.asarray(scores)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    s = s.reshape(-1)
    if s.size and not np.isfinite(s).all():
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise DataError(
            note(
                f"{name} holds {bad} non-finite value(s) (NaN or inf)",
                "expected finite scores; an fp16 graph that overflows gives inf: "
                "evaluate the fp32 model or fix the graph's casts",
            )
        )
    return s


def _as_labels(labels: Any, size: int, name: str) -> np.ndarray:
    """Flatten 0/1 (or bool) labels to a 1-D bool array of ``size`` elements."""
    y = np.asarray(labels)
    if y.size != size:
        raise DataError(
            note(
                f"{name} has {y.size} elements but the scores have {size}",
                "expected one label per score (same number of images / pixels)",
            )
        )
    y = y.reshape(-1)
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise DataError(
                note(
                    f"{name} holds values other than 0 and 1",
                    f"expected 0 = good, 1 = anomalous; got values {np.unique(y)[:5].tolist()}",
                )
            )
        y = y.astype(bool)
    return y


def _as_map_stack(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check ``masks`` (N, H, W) and ``maps`` (N, H, W) or (N, 1, H, W); return both (N, H, W).

    Returns masks as bool and maps as a floating array (float32 stays float32).
    """
    m = np.asarray(maps)
    if m.ndim == 4 and m.shape[1] == 1:  # the graph's (N, 1, H, W) anomaly_map output
        m = m[:, 0]
    g = np.asarray(masks)
    if g.ndim == 4 and g.shape[1] == 1:
        g = g[:, 0]
    if m.ndim != 3 or g.shape != m.shape:
        raise DataError(
            note(
                f"masks {g.shape} and anomaly maps {m.shape} do not match",
                "expected both (N, H, W) (maps may be (N, 1, H, W)); resize the maps to the "
                "mask size, or the masks to the map size, before evaluating",
            )
        )
    if m.size == 0:
        raise DataError(note("no anomaly map pixels to evaluate", f"got maps of shape {m.shape}"))
    if not np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float32)
    return g.astype(bool, copy=False), m


# ---------------------------------------------------------------------------------------------
# the shared sweep


def _sweep(
    scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Counts at every distinct threshold, highest first.

    Args:
        scores: (n,) float, finite.
        positive: (n,) bool.
        weights: optional (n,) float per-element weight to accumulate (used for PRO).

    Returns:
        ``thresholds`` (K,) float64 distinct scores, descending; ``tp`` and ``fp`` (K,) int64
        numbers of positives / negatives with ``score >= threshold``; ``cum_weights`` (K,) float64
        sum of ``weights`` over elements with ``score >= threshold`` (None without weights).
    """
    # Order inside a tie group is irrelevant (only group ends are read), so the faster
    # unstable sort is fine.
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    # Last index of each run of equal scores: a tie group is crossed all at once.
    ends = np.flatnonzero(sorted_scores[:-1] != sorted_scores[1:])
    ends = np.append(ends, sorted_scores.size - 1)
    tp = np.cumsum(positive[order], dtype=np.int64)[ends]
    fp = (ends + 1) - tp
    cum_w = None
    if weights is not None:
        cum_w = np.cumsum(weights[order], dtype=np.float64)[ends]
    return sorted_scores[ends].astype(np.float64), tp, fp, cum_w


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the polyline (x, y) for ``x`` in [0, limit].

    ``x`` is non-decreasing with ``x[0] == 0``; when ``limit`` falls strictly between two points
    the curve is cut there, with ``y`` interpolated linearly.
    """
    k = int(np.searchsorted(x, limit, side="right"))  # x[:k] <= limit, k >= 1
    xs, ys = x[:k], y[:k]
    if k < x.size and xs[-1] < limit:
        x0, y0, x1, y1 = x[k - 1], y[k - 1], x[k], y[k]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.append(xs, limit), np.append(ys, y_limit)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)


def _roc_from_counts(
    thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with the (0, 0) point at threshold +inf prepended (sklearn's form)."""
    fpr = np.concatenate([[0.0], fp / fp[-1]]) if fp[-1] else np.full(fp.size + 1, np.nan)
    tpr = np.concatenate([[0.0], tp / tp[-1]]) if tp[-1] else np.full(tp.size + 1, np.nan)
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def _f1_from_counts(thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> tuple[float, float]:
    """Best F1 and its threshold; ties between thresholds go to the highest threshold."""
    num_pos = tp[-1]
    # F1 = 2TP / (2TP + FP + FN) with FN = P - TP; the denominator is > 0 when P > 0.
    f1 = 2.0 * tp / (tp + fp + num_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


# ---------------------------------------------------------------------------------------------
# ROC, AUROC, F1


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with one point per distinct score (like sklearn's ``drop_intermediate=False``).

    Args:
        labels: (n,) or any shape, 0/1 or bool; 1 = anomalous (positive).
        scores: same number of elements, float; higher = more anomalous.

    Returns:
        ``fpr``, ``tpr``, ``thresholds``: (K + 1,) float64 each, K = number of distinct scores.
        Point i counts ``score >= thresholds[i]`` as positive; the first point is (0, 0) at
        threshold +inf. A rate whose class is absent is all NaN (with a warning).
    """
    s = _as_scores(scores, "scores")
    y = _as_labels(labels, s.size, "labels")
    if s.size == 0:
        raise DataError(note("cannot compute a ROC curve of no scores", "got empty arrays"))
    thresholds, tp, fp, _ = _sweep(s, y)
    if tp[-1] == 0 or fp[-1] == 0:
        logger.warning("ROC curve: only one class in the labels; its undefined rate is NaN")
    return _roc_from_counts(thresholds, tp, fp)


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (trapezoid, ties exact; equals ``sklearn.roc_auc_score``).

    Args:
        labels: 0/1 or bool, any shape; 1 = anomalous.
        scores: float, same number of elements.

    Returns:
        The AUROC in [0, 1], or NaN (with a warning) when only one class is present.
    """
    s = _as_scores(scores, "scores")
    y = _as_labels(labels, s.size, "labels")
    if s.size == 0 or y.all() or not y.any():
        logger.warning("AUROC undefined: the labels hold only one class; returning NaN")
        return math.nan
    fpr, tpr, _ = _roc_from_counts(*_sweep(s, y)[:3])
    return _area_up_to(fpr, tpr, 1.0)


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """Maximum F1 over all thresholds (predicted anomalous iff ``score >= threshold``).

    Args:
        labels: 0/1 or bool, any shape; 1 = anomalous.
        scores: float, same number of elements.

    Returns:
        ``(best_f1, best_threshold)``, the threshold being one of the scores (the highest one when
        several reach the same F1). ``(nan, nan)`` with a warning when there is no positive.
    """
    s = _as_scores(scores, "scores")
    y = _as_labels(labels, s.size, "labels")
    if not y.any():
        logger.warning("F1-max undefined: no anomalous (positive) label; returning NaN")
        return math.nan, math.nan
    return _f1_from_counts(*_sweep(s, y)[:3])


# ---------------------------------------------------------------------------------------------
# AU-PRO


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel PRO weights for a (N, H, W) bool stack.

    A pixel of region r gets ``1 / (R * |r|)`` (R = number of regions in all images), a normal
    pixel 0: so the sum of weights over ``map >= t`` is exactly the mean per-region overlap
    PRO(t). Returns the (N*H*W,) float64 weights and R.
    """
    regions, num_regions = ndimage.label(masks, structure=_REGION_STRUCTURE)
    if num_regions == 0:
        return np.zeros(masks.size), 0
    sizes = np.bincount(regions.reshape(-1))
    per_region = np.zeros(sizes.size)
    per_region[1:] = 1.0 / (num_regions * sizes[1:])
    return per_region[regions.reshape(-1)], num_regions


def _pro_sweep(
    masks: np.ndarray, maps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One sweep over all pixels of (N, H, W) masks (bool) and maps (float).

    Returns ``thresholds``, ``tp``, ``fp``, ``fpr``, ``pro`` ((K + 1,) each, the first point at
    threshold +inf) and the number of regions R. ``fpr`` is NaN without normal pixels.
    """
    weights, num_regions = _region_weights(masks)
    thresholds, tp, fp, cum_w = _sweep(maps.reshape(-1), masks.reshape(-1), weights)
    thresholds = np.concatenate([[np.inf], thresholds])
    fpr = np.concatenate([[0.0], fp / fp[-1]]) if fp[-1] else np.full(fp.size + 1, np.nan)
    # The float sum of weights can end at 1 +- 1e-12: clip to the valid range.
    pro = np.clip(np.concatenate([[0.0], cum_w]), 0.0, 1.0)
    tp, fp = np.concatenate([[0], tp]), np.concatenate([[0], fp])
    return thresholds, tp, fp, fpr, pro, num_regions


def _thin(num_points: int, max_points: int | None) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spaced points of a curve, both ends kept."""
    if max_points is None or num_points <= max_points:
        return np.arange(num_points)
    return np.unique(np.linspace(0, num_points - 1, max(max_points, 2)).round().astype(np.int64))


def _aupro_from_curve(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Area under PRO(FPR) on [0, fpr_limit], divided by fpr_limit (1.0 = perfect)."""
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _check_pro_inputs(fp_total: int, num_regions: int) -> bool:
    """Warn and return False when AU-PRO is undefined."""
    if num_regions == 0:
        logger.warning("AU-PRO undefined: the masks hold no defect region; returning NaN")
        return False
    if fp_total == 0:
        logger.warning("AU-PRO undefined: the masks hold no normal pixel; returning NaN")
        return False
    return True


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise DataError(
            note(f"fpr_limit={fpr_limit} is out of range", "expected 0 < fpr_limit <= 1 (e.g. 0.3)")
        )


def pro_curve(
    masks: Any, anomaly_maps: Any, num_thresholds: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact PRO-vs-FPR curve (MVTec AD definition, see the module docstring).

    Args:
        masks: (N, H, W) bool ground truth (or 0/1; (N, 1, H, W) accepted).
        anomaly_maps: (N, H, W) or (N, 1, H, W) float, same H, W as the masks.
        num_thresholds: None keeps one point per distinct map value (exact, up to N*H*W points);
            an int returns at most that many points, evenly spaced along the exact curve (for
            plots and JSON: the points are exact, only fewer of them).

    Returns:
        ``fpr``, ``pro``, ``thresholds``: (K,) float64 each, fpr non-decreasing, first point
        (0, 0) at threshold +inf. All-NaN ``pro`` (with a warning) when there is no region.
    """
    g, m = _as_map_stack(masks, anomaly_maps)
    m = _as_scores(m, "anomaly_maps")
    thresholds, _, fp, fpr, pro, num_regions = _pro_sweep(g, m)
    if not _check_pro_inputs(int(fp[-1]), num_regions):
        pro = np.full_like(pro, np.nan)
    keep = _thin(fpr.size, num_thresholds)
    return fpr[keep], pro[keep], thresholds[keep]


def aupro(masks: Any, anomaly_maps: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (standard MVTec AD AU-PRO).

    Args:
        masks: (N, H, W) bool ground truth (or 0/1; (N, 1, H, W) accepted).
        anomaly_maps: (N, H, W) or (N, 1, H, W) float, same H, W as the masks.
        fpr_limit: upper FPR bound of the integral, in (0, 1]; 0.3 is the MVTec convention.

    Returns:
        AU-PRO in [0, 1] (1 = perfect; a constant map gives ``fpr_limit / 2``), or NaN with a
        warning when the masks hold no defect region or no normal pixel.
    """
    _check_fpr_limit(fpr_limit)
    g, m = _as_map_stack(masks, anomaly_maps)
    m = _as_scores(m, "anomaly_maps")
    _, _, fp, fpr, pro, num_regions = _pro_sweep(g, m)
    if not _check_pro_inputs(int(fp[-1]), num_regions):
        return math.nan
    return _aupro_from_curve(fpr, pro, fpr_limit)


# ---------------------------------------------------------------------------------------------
# everything at once


_PIXEL_KEYS = ("pixel_auroc", "aupro", "pixel_f1_max", "pixel_f1_threshold")


def _pixel_metrics(masks: Any, maps: Any, fpr_limit: float) -> dict[str, float]:
    """pixel_auroc, aupro and pixel F1 from ONE sweep over all pixels (exact, no subsampling)."""
    g, m = _as_map_stack(masks, maps)
    m = _as_scores(m, "anomaly_maps")
    thresholds, tp, fp, fpr, pro, num_regions = _pro_sweep(g, m)
    out = dict.fromkeys(_PIXEL_KEYS, math.nan)
    if tp[-1] > 0:  # F1 needs defect pixels only
        out["pixel_f1_max"], out["pixel_f1_threshold"] = _f1_from_counts(
            thresholds[1:], tp[1:], fp[1:]
        )
    if tp[-1] == 0 or fp[-1] == 0:
        logger.warning("pixel AUROC / AU-PRO undefined: the masks hold only one class; NaN")
        return out
    out["pixel_auroc"] = _area_up_to(fpr, tp / tp[-1], 1.0)
    if _check_pro_inputs(int(fp[-1]), num_regions):
        out["aupro"] = _aupro_from_curve(fpr, pro, fpr_limit)
    return out


def image_and_pixel_metrics(
    labels: Any,
    scores: Any,
    masks: Any | None = None,
    maps: Any | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float | int]:
    """All evaluation numbers of one test split.

    Args:
        labels: (N,) 0/1 or bool image labels, 1 = anomalous.
        scores: (N,) float image scores (raw units).
        masks: (N, H, W) bool ground-truth masks (all False for good images), or None.
        maps: (N, H, W) or (N, 1, H, W) float anomaly maps at the mask size, or None.
        fpr_limit: AU-PRO integration limit.

    Returns:
        ``image_auroc``, ``pixel_auroc``, ``aupro``, ``image_f1_max``, ``image_f1_threshold``,
        ``pixel_f1_max``, ``pixel_f1_threshold`` (floats, NaN when undefined or when masks/maps
        are None), ``num_images``, ``num_defective`` (ints). The pixel metrics are exact over all
        pixels (one sort of N*H*W values, about 1 s for 6.5M): no subsampling.
    """
    _check_fpr_limit(fpr_limit)
    s = _as_scores(scores, "scores")
    y = _as_labels(labels, s.size, "labels")
    out: dict[str, float | int] = {"image_auroc": auroc(y, s)}
    pixel = dict.fromkeys(_PIXEL_KEYS, math.nan)
    if masks is not None and maps is not None:
        if len(masks) != s.size:
            raise DataError(
                note(
                    f"{len(masks)} masks for {s.size} image scores",
                    "expected one mask and one map per test image",
                )
            )
        pixel = _pixel_metrics(masks, maps, fpr_limit)
    out["pixel_auroc"], out["aupro"] = pixel["pixel_auroc"], pixel["aupro"]
    out["image_f1_max"], out["image_f1_threshold"] = f1_max(y, s)
    out["pixel_f1_max"] = pixel["pixel_f1_max"]
    out["pixel_f1_threshold"] = pixel["pixel_f1_threshold"]
    out["num_images"], out["num_defective"] = int(s.size), int(y.sum())
    return out


def per_defect_type_metrics(
    labels: Any,
    scores: Any,
    defect_types: Any,
    masks: Any | None = None,
    maps: Any | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, dict[str, float | int]]:
    """The good images against each defect type alone: which kinds of defect a model misses.

    Args:
        labels, scores, masks, maps, fpr_limit: as :func:`image_and_pixel_metrics`.
        defect_types: (N,) the defect type name of each image (any name for good images).

    Returns:
        ``{type: {"image_auroc", "pixel_auroc", "aupro", "num_good", "num_defective"}}`` for each
        type of the defective images, sorted by name; every number is computed on the good
        images plus that type's images only (pixel numbers NaN when masks/maps are None).
    """
    s = _as_scores(scores, "scores")
    y = _as_labels(labels, s.size, "labels")
    types = np.asarray(defect_types, dtype=object).reshape(-1)
    if types.size != s.size:
        raise DataError(note(f"{types.size} defect types for {s.size} scores", "one per image"))
    out: dict[str, dict[str, float | int]] = {}
    for name in sorted(set(types[y == 1].tolist())):
        keep = (y == 0) | ((y == 1) & (types == name))
        row: dict[str, float | int] = {"image_auroc": auroc(y[keep], s[keep])}
        pixel = dict.fromkeys(_PIXEL_KEYS, math.nan)
        if masks is not None and maps is not None:
            pixel = _pixel_metrics(np.asarray(masks)[keep], np.asarray(maps)[keep], fpr_limit)
        row["pixel_auroc"], row["aupro"] = pixel["pixel_auroc"], pixel["aupro"]
        row["num_good"], row["num_defective"] = int((y[keep] == 0).sum()), int(y[keep].sum())
        out[name] = row
    return out


def to_json_dict(metrics: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``metrics`` safe for ``json.dump``: NaN/inf become None, numpy scalars Python."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out
