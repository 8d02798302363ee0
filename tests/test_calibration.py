"""Calibration (DESIGN.md §4): thresholds from good images or labels, threshold -> 0.5."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stpm_edge.calibration import (
    SINGLE_IMAGE_FACTOR,
    calibrate_from_good,
    calibrate_from_labels,
    calibrate_manual,
    calibration_scale,
    check_calibration,
    map_peaks,
    normalized_scores,
    recalibrate,
    with_defaults,
)
from stpm_edge.errors import ConfigError, DataError

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


# -- degenerate inputs: never a NaN or zero-range calibration ---------------------------------
def test_no_defective_label_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="needs defective images"):
        calibrate_from_labels(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]))


def test_one_validation_image_uses_the_documented_factor(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        cal = calibrate_from_good(np.array([0.2]))
    assert cal["image_threshold"] == pytest.approx(0.2 * SINGLE_IMAGE_FACTOR)
    assert calibration_scale(cal) > 0.1  # not the old silent 1e-12
    assert "only 1 validation image" in caplog.text


def test_tiny_validation_set_is_warned(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        calibrate_from_good(np.array([0.1, 0.12, 0.11]))
    assert "3 validation images" in caplog.text


def test_equal_scores_get_a_nonzero_range(caplog) -> None:
    cal = calibrate_from_labels(np.array([0, 1, 1]), np.array([0.3, 0.3, 0.3]))
    assert cal["score_max"] - cal["score_min"] == pytest.approx(0.3)
    assert normalized_scores(np.array([0.3]), cal)[0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "bad",
    [
        {"image_threshold": float("nan")},
        {"pixel_threshold": float("inf")},
        {"score_max": 0.1},  # max == min: zero range
        {"image_threshold": 0.0},
        {"source": "guessed"},
    ],
)
def test_no_unusable_calibration_can_be_written(tmp_path, bad: dict) -> None:
    from stpm_edge.checkpoint import save_checkpoint

    good = {"image_threshold": 0.2, "pixel_threshold": 0.3, "score_min": 0.1, "score_max": 0.3}
    cal = {**good, "source": "val_good", **bad}
    with pytest.raises(DataError, match="refusing to write an unusable calibration"):
        check_calibration(cal)
    model = type("M", (), {})()  # never reached: the check runs before anything is built
    with pytest.raises(DataError, match="refusing"):
        save_checkpoint(tmp_path / "x.ckpt", model, cal)
    assert not list(tmp_path.iterdir())


def test_old_checkpoint_calibration_gets_defaults() -> None:
    old = {"image_threshold": 0.2, "score_min": 0.1, "score_max": 0.3}
    cal = with_defaults(old)
    assert cal["source"] == "val_good" and cal["pixel_threshold"] == 0.2
    assert check_calibration(cal)


# -- pixel threshold follows the score reduction ----------------------------------------------
def test_pixel_threshold_comes_from_map_peaks_not_the_topk_score() -> None:
    rng = np.random.default_rng(0)
    maps = rng.lognormal(-4.0, 0.5, size=(8, 16, 16))
    topk = np.sort(maps.reshape(8, -1), axis=1)[:, -3:].mean(axis=1)  # a top-k mean score
    cal = calibrate_from_good(topk, map_peaks(maps))
    # no good validation pixel reaches the pixel threshold: no regions on frames judged OK
    assert maps.max() <= cal["pixel_threshold"]
    assert cal["pixel_threshold"] > cal["image_threshold"]
    # with the max reduction the peaks are the scores: both thresholds coincide
    peaks = map_peaks(maps)
    same = calibrate_from_good(peaks, peaks)
    assert same["pixel_threshold"] == same["image_threshold"]


def test_labelled_without_masks_takes_pixel_threshold_from_good_maps() -> None:
    maps = np.full((4, 4, 4), 0.01)
    maps[2:, 0, 0] = 0.5
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.01, 0.01, 0.3, 0.4])
    cal = calibrate_from_labels(labels, scores, masks=None, maps=maps)
    assert cal["pixel_threshold"] >= 0.01 and cal["pixel_threshold"] < 0.5


# -- manual ----------------------------------------------------------------------------------
def test_manual_keeps_the_number_and_the_base_range() -> None:
    base = {"image_threshold": 0.2, "pixel_threshold": 0.4, "score_min": 0.1, "score_max": 0.3}
    cal = calibrate_manual(0.05, base=base)
    assert cal["source"] == "manual" and cal["image_threshold"] == 0.05
    assert cal["pixel_threshold"] == pytest.approx(0.1)  # base's pixel/image ratio 2
    assert calibration_scale(cal) == pytest.approx(0.2)
    assert normalized_scores(np.array([0.05]), cal)[0] == pytest.approx(0.5)
    assert calibrate_manual(0.05, 0.07, base=base)["pixel_threshold"] == 0.07
    with pytest.raises(ConfigError, match="--threshold nan"):
        calibrate_manual(float("nan"))


def test_recalibrate_keeps_manual_and_refits_by_source() -> None:
    calls: list[list] = []

    def scorer(paths):
        calls.append(paths)
        return np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), np.ones((6, 2, 2))

    manual = calibrate_manual(0.05)
    assert recalibrate({"calibration": manual}, scorer) == manual and not calls
    # val_good whose images are gone: kept, and the scorer is never called
    kept = calibrate_from_good(np.array([0.1, 0.2, 0.15, 0.12, 0.11]))
    payload = {"calibration": kept, "val_paths": ["/nonexistent/a.png"]}
    assert recalibrate(payload, scorer) == kept and not calls
