"""Tests for stpm_edge.metrics: against scikit-learn, brute force and hand-computed curves."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from stpm_edge import metrics
from stpm_edge.errors import DataError


def _tied_data(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and scores quantised to a few levels, so many scores tie across classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = (rng.integers(0, 12, n) + 3 * labels).astype(np.float32) / 7.0
    return labels, scores


# ---------------------------------------------------------------------------------------------
# ROC / AUROC


@pytest.mark.parametrize("seed", range(5))
def test_roc_curve_matches_sklearn_with_ties(seed: int) -> None:
    labels, scores = _tied_data(seed)
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr, sk_thr)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn(seed: int) -> None:
    labels, scores = _tied_data(seed)
    assert metrics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    rng = np.random.default_rng(100 + seed)  # continuous scores, no ties
    cont = rng.normal(size=labels.size) + labels
    assert metrics.auroc(labels, cont) == pytest.approx(roc_auc_score(labels, cont), abs=1e-12)


def test_auroc_hand_computed() -> None:
    # Pairs (neg, pos): 0.1<0.35, 0.1<0.8, 0.4>0.35, 0.4<0.8 -> 3 of 4 ordered right.
    assert metrics.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # A tie between a negative and a positive counts one half.
    assert metrics.auroc([0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(3.5 / 4)
    assert metrics.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.auroc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(1.0)


def test_roc_curve_hand_computed_tie_is_one_step() -> None:
    fpr, tpr, thr = metrics.roc_curve([0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.5, 0.2])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])


def test_auroc_one_class_is_nan_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stpm_edge.metrics"):
        assert math.isnan(metrics.auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert "only one class" in caplog.text


def test_auroc_rejects_bad_inputs() -> None:
    with pytest.raises(DataError, match="non-finite"):
        metrics.auroc([0, 1], [0.1, np.nan])
    with pytest.raises(DataError, match="3 elements but the scores have 2"):
        metrics.auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="other than 0 and 1"):
        metrics.auroc([0, 2], [0.1, 0.2])


# ---------------------------------------------------------------------------------------------
# F1-max


def _f1_brute(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    best, best_t = -1.0, math.nan
    for t in np.unique(scores)[::-1]:  # highest threshold first, keeps the first maximum
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        fp = np.sum(pred & (labels == 0))
        fn = np.sum(~pred & (labels == 1))
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best:
            best, best_t = f1, float(t)
    return best, best_t


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_brute_force(seed: int) -> None:
    labels, scores = _tied_data(seed, n=60)
    f1, thr = metrics.f1_max(labels, scores)
    ref_f1, ref_thr = _f1_brute(labels, scores)
    assert f1 == pytest.approx(ref_f1)
    assert thr == pytest.approx(ref_thr)


def test_f1_max_hand_computed() -> None:
    # t=0.9: F1 2/3; t=0.7: 1/2; t=0.6: TP 2, FP 1 -> 4/5; t=0.1: 4/6.
    f1, thr = metrics.f1_max([0, 1, 1, 0], [0.1, 0.9, 0.6, 0.7])
    assert f1 == pytest.approx(0.8)
    assert thr == pytest.approx(0.6)


def test_f1_max_without_positives_is_nan() -> None:
    f1, thr = metrics.f1_max([0, 0], [0.1, 0.2])
    assert math.isnan(f1) and math.isnan(thr)


# ---------------------------------------------------------------------------------------------
# PRO / AU-PRO


def _aupro_brute(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Threshold-by-threshold AU-PRO with per-image 2-D labelling (independent of the sweep)."""
    regions_img = []
    for i, mask in enumerate(masks):
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions_img += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        xs.append(np.sum(hit & normal) / normal.sum())
        ys.append(np.mean([np.sum(hit[i] & r) / r.sum() for i, r in regions_img]))
    xs, ys = np.array(xs), np.array(ys)
    k = np.searchsorted(xs, fpr_limit, side="right")
    x, y = list(xs[:k]), list(ys[:k])
    if k < xs.size and x[-1] < fpr_limit:
        y.append(np.interp(fpr_limit, [xs[k - 1], xs[k]], [ys[k - 1], ys[k]]))
        x.append(fpr_limit)
    return float(np.trapezoid(y, x)) / fpr_limit


def _stack(mask: list[list[int]], values: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([mask], dtype=bool), np.array([values], dtype=np.float32)


def test_pro_curve_hand_computed_one_region() -> None:
    # Region = top-left 2x2 block, values 0.9 0.8 0.3 0.1; normal pixels: 0.7, 0.5 and ten 0s.
    masks, maps = _stack(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0.9, 0.8, 0.7, 0.5], [0.3, 0.1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    )
    fpr, pro, thr = metrics.pro_curve(masks, maps)
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1, 0.0], rtol=1e-6)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 12, 2 / 12, 2 / 12, 2 / 12, 1])
    np.testing.assert_allclose(pro, [0, 0.25, 0.5, 0.5, 0.5, 0.75, 1, 1])
    # Area to 0.3: PRO 0.5 over FPR [0, 1/6], then PRO 1 over [1/6, 0.3].
    expected = (0.5 / 6 + (0.3 - 1 / 6)) / 0.3
    assert metrics.aupro(masks, maps) == pytest.approx(expected)


def test_aupro_interpolates_at_fpr_limit() -> None:
    # Region pixels 1.0 and 0.5; the 8 normal pixels tie at 0.5: the segment
    # (FPR 0, PRO 0.5) -> (FPR 1, PRO 1) is crossed at once and cut at the limit.
    masks, maps = _stack([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], [[1, 0.5] + [0.5] * 3, [0.5] * 5])
    pro_at_03 = 0.5 + 0.5 * 0.3
    assert metrics.aupro(masks, maps, 0.3) == pytest.approx(0.3 * (0.5 + pro_at_03) / 2 / 0.3)
    assert metrics.aupro(masks, maps, 1.0) == pytest.approx(0.75)
    assert metrics.aupro(masks, maps, 0.1) == pytest.approx((0.5 + 0.55) / 2)


def test_aupro_averages_regions_not_pixels() -> None:
    # A 1-pixel region fully detected before any false positive, a 3x3 region detected last:
    # PRO = mean(1, 0) = 0.5 (a pixel-weighted overlap would be 1/10).
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = True
    mask[3:6, 3:6] = True
    values = np.full((6, 6), 0.5, dtype=np.float32)
    values[0, 0], values[3:6, 3:6] = 1.0, 0.0
    fpr, pro, _ = metrics.pro_curve(mask[None], values[None])
    assert pro[1] == pytest.approx(0.5) and fpr[1] == 0.0
    assert metrics.aupro(mask[None], values[None]) == pytest.approx(0.5)


def test_aupro_regions_do_not_connect_across_images() -> None:
    # Image 0: 1-pixel region at (1, 1); image 1: a 3x3 region around (1, 1). Two regions,
    # so detecting only image 0's gives PRO 0.5 (one merged region would give 0.1).
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 1, 1] = True
    masks[1, 0:3, 0:3] = True
    maps = np.full((2, 5, 5), 0.5, dtype=np.float32)
    maps[0, 1, 1], maps[1, 0:3, 0:3] = 1.0, 0.0
    assert metrics.aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_uses_8_connectivity() -> None:
    # A 2x2 block plus a pixel touching it diagonally: ONE 5-pixel region (8-connectivity).
    # Only the diagonal pixel is detected first -> PRO 1/5 (two regions would give 1/2).
    mask = np.zeros((5, 5), dtype=bool)
    mask[0:2, 0:2] = True
    mask[2, 2] = True
    values = np.full((5, 5), 0.5, dtype=np.float32)
    values[mask] = 0.0
    values[2, 2] = 1.0
    assert metrics.aupro(mask[None], values[None]) == pytest.approx(0.2)


def test_aupro_perfect_and_constant_maps() -> None:
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, 2:5, 2:6] = True
    masks[2, 6:8, 0:1] = True
    assert metrics.aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    constant = np.full(masks.shape, 0.7, dtype=np.float32)
    # One step from (0, 0) to (1, 1): the area up to L is L^2 / 2, normalised L / 2.
    for limit in (0.3, 0.5, 1.0):
        assert metrics.aupro(masks, constant, limit) == pytest.approx(limit / 2)
    assert metrics.aupro(masks, 1.0 - masks.astype(np.float32)) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 12), dtype=bool)
    masks[0, 1:4, 1:3] = True
    masks[0, 6:11, 5:10] = True
    masks[1, 4, 4] = True
    maps = (rng.integers(0, 9, masks.shape) + 4 * masks).astype(np.float32)  # many ties
    for limit in (0.05, 0.3, 1.0):
        expected = _aupro_brute(masks, maps, limit)
        assert metrics.aupro(masks, maps, limit) == pytest.approx(expected, abs=1e-12)


def test_pro_curve_num_thresholds_thins_exact_points() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((2, 16, 16)) > 0.8
    maps = rng.random((2, 16, 16)).astype(np.float32)
    fpr, pro, thr = metrics.pro_curve(masks, maps)
    fpr_t, pro_t, thr_t = metrics.pro_curve(masks, maps, num_thresholds=50)
    assert fpr_t.size <= 50 and fpr_t[0] == 0 and fpr_t[-1] == 1
    idx = np.searchsorted(-thr, -thr_t)  # every kept point is a point of the exact curve
    np.testing.assert_array_equal(fpr[idx], fpr_t)
    np.testing.assert_array_equal(pro[idx], pro_t)


def test_aupro_undefined_and_bad_inputs(caplog: pytest.LogCaptureFixture) -> None:
    maps = np.zeros((1, 4, 4), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="stpm_edge.metrics"):
        assert math.isnan(metrics.aupro(np.zeros((1, 4, 4), bool), maps))
    assert "no defect region" in caplog.text
    with pytest.raises(DataError, match="do not match"):
        metrics.aupro(np.zeros((1, 4, 5), bool), maps)
    with pytest.raises(DataError, match="fpr_limit"):
        metrics.aupro(np.ones((1, 4, 4), bool), maps, fpr_limit=0.0)


# ---------------------------------------------------------------------------------------------
# everything at once


def _synthetic_split(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n, size = 8, 32
    labels = np.array([0, 1] * (n // 2))
    masks = np.zeros((n, size, size), dtype=bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, size - 8, 2)
        masks[i, y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = True
    maps = (rng.random((n, 1, size, size)) + 0.8 * masks[:, None]).astype(np.float32)
    scores = maps.reshape(n, -1).max(axis=1)
    return labels, scores, masks, maps


def test_image_and_pixel_metrics_agree_with_single_metrics() -> None:
    labels, scores, masks, maps = _synthetic_split(0)
    m = metrics.image_and_pixel_metrics(labels, scores, masks, maps)
    assert m["num_images"] == 8 and m["num_defective"] == 4
    assert m["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert m["aupro"] == pytest.approx(_aupro_brute(masks, maps[:, 0], 0.3))
    assert (m["image_f1_max"], m["image_f1_threshold"]) == pytest.approx(_f1_brute(labels, scores))
    assert (m["pixel_f1_max"], m["pixel_f1_threshold"]) == pytest.approx(
        metrics.f1_max(masks, maps)
    )
    assert 0.5 < m["pixel_auroc"] <= 1.0


def test_image_and_pixel_metrics_without_masks_and_json() -> None:
    labels, scores, _, _ = _synthetic_split(1)
    m = metrics.image_and_pixel_metrics(labels, scores)
    assert math.isnan(m["pixel_auroc"]) and math.isnan(m["aupro"])
    assert not math.isnan(m["image_auroc"])
    decoded = json.loads(json.dumps(metrics.to_json_dict(m), allow_nan=False))
    assert decoded["pixel_auroc"] is None and decoded["num_images"] == 8


def test_image_and_pixel_metrics_count_mismatch() -> None:
    labels, scores, masks, maps = _synthetic_split(2)
    with pytest.raises(DataError, match="7 masks for 8 image scores"):
        metrics.image_and_pixel_metrics(labels, scores, masks[:7], maps[:7])


def test_per_defect_type_metrics_use_good_images_and_one_type_only() -> None:
    """A type the model sees perfectly scores 1.0 although another type is missed: the numbers
    are computed on the good images plus that type, each against scikit-learn / brute force."""
    labels, scores, masks, maps = _synthetic_split(3)
    types = np.array(["good"] * 8, dtype=object)
    bad = np.flatnonzero(labels)
    types[bad[::2]], types[bad[1::2]] = "stain", "scratch"
    scores = scores.copy()
    scores[types == "stain"] = scores.max() + 1.0  # seen: above every good image
    scores[types == "scratch"] = scores[labels == 0].min() - 1.0  # missed: below every good one
    rows = metrics.per_defect_type_metrics(labels, scores, types, masks, maps)
    assert list(rows) == ["scratch", "stain"]
    assert rows["stain"]["image_auroc"] == 1.0 and rows["scratch"]["image_auroc"] == 0.0
    for name, row in rows.items():
        keep = (labels == 0) | (types == name)
        assert row["num_good"] == int((labels == 0).sum())
        assert row["num_defective"] == int((types == name).sum())
        ref = roc_auc_score(masks[keep].ravel(), maps[keep].ravel())
        assert row["pixel_auroc"] == pytest.approx(ref)
        assert row["aupro"] == pytest.approx(_aupro_brute(masks[keep], maps[keep][:, 0], 0.3))
    no_maps = metrics.per_defect_type_metrics(labels, scores, types)
    assert math.isnan(no_maps["stain"]["pixel_auroc"]) and no_maps["stain"]["image_auroc"] == 1.0
    with pytest.raises(DataError, match="7 defect types for 8 scores"):
        metrics.per_defect_type_metrics(labels, scores, types[:7])
