"""Calibration (DESIGN.md §4): thresholds from good images or labels, threshold -> 0.5."""

from __future__ import annotations

import numpy as np
import pytest

from stpm_edge.calibration import calibrate_from_good, calibrate_from_labels, normalized_scores

KEYS = {"image_threshold", "pixel_threshold", "score_min", "score_max", "source"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_from_good_threshold_never_rejects_a_validation_image(seed: int) -> None:
    scores = np.random.default_rng(seed).lognormal(-3.0, 0.4, size=7)
    cal = calibrate_from_good(scores)
    assert cal.keys() >= KEYS and cal["source"] == "val_good"
    assert cal["image_threshold"] >= scores.max()
    assert cal["score_min"] == pytest.approx(scores.min())
    assert cal["score_max"] > cal["image_threshold"] > cal["score_min"]
    assert (normalized_scores(scores, cal) < 0.5 + 1e-6).all()


def test_from_good_with_an_outlier_uses_the_max() -> None:
    scores = np.array([0.01, 0.011, 0.012, 0.0105, 5.0])
    assert calibrate_from_good(scores)["image_threshold"] >= 5.0


def test_normalized_threshold_is_one_half() -> None:
    for cal in (
        calibrate_from_good(np.array([0.1, 0.2, 0.15])),
        calibrate_from_labels(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.6, 0.9])),
    ):
        out = normalized_scores(np.array([cal["image_threshold"]]), cal)
        assert out.dtype == np.float32
        assert float(out[0]) == pytest.approx(0.5, abs=1e-6)
        low_high = normalized_scores(np.array([-1e9, 1e9]), cal)
        assert low_high.tolist() == [0.0, 1.0]


def test_from_labels_is_f1_optimal_on_a_hand_example() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.45, 0.9])
    cal = calibrate_from_labels(labels, scores)
    assert cal["source"] == "labelled" and cal.keys() >= KEYS
    # thresholds: 0.4 -> TP 4, FP 1 (0.45) -> F1 8/9; 0.5 -> TP 3, FP 0, FN 1 -> F1 6/7 < 8/9
    assert cal["image_threshold"] == pytest.approx(0.4)
    verdict = normalized_scores(scores, cal) >= 0.5
    tp = int((verdict & (labels == 1)).sum())
    fp = int((verdict & (labels == 0)).sum())
    assert (tp, fp) == (4, 1)
    assert cal["score_min"] == pytest.approx(0.1) and cal["score_max"] == pytest.approx(0.9)


def test_from_labels_pixel_threshold_from_masks() -> None:
    labels = np.array([0, 1])
    scores = np.array([0.2, 0.8])
    maps = np.zeros((2, 4, 4), np.float32)
    maps[1, :2, :2] = 0.7
    maps[1, 3, 3] = 0.3
    masks = np.zeros((2, 4, 4), bool)
    masks[1, :2, :2] = True
    cal = calibrate_from_labels(labels, scores, masks, maps)
    assert cal["pixel_threshold"] == pytest.approx(0.7)
