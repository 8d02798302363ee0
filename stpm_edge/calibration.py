"""The one calibration service (DESIGN.md §4), numpy only: train, eval and export all use it.

A calibration is a dict ``{"image_threshold", "pixel_threshold", "score_min", "score_max",
"source", "num_images"}`` in raw score units; ``source`` says where the thresholds come from:

- ``"val_good"``: statistics of the good validation images (``stpm-train``). Image threshold: a
  3-sigma bound in the log domain of the scores (the map is a product of three per-scale
  distances, so its log is a sum and far closer to Gaussian than the raw score), at least the
  highest validation score. Pixel threshold: the same bound over each validation map's peak
  pixel, so no good validation image shows a defect region. With the ``max`` score the two are
  equal; with the default top-k mean score the pixel threshold is higher (a top-k mean is below
  the peak), which keeps regions off frames judged OK.
- ``"labelled"``: F1-optimal on labelled images (``stpm-eval --save-calibrated``); the pixel
  threshold is F1-optimal on the masks' pixels (else the good images' peak bound, as above).
- ``"manual"``: set by hand (``stpm-export --threshold``), never replaced.

:func:`recalibrate` re-expresses a checkpoint's calibration for a model whose raw scores differ
(an FP16/INT8 graph, other map settings) by re-scoring the same images: the validation images for
``val_good``, the stored labelled images for ``labelled``. ``manual`` is kept as set (raw scores
shift a little with precision: the user's number stays the user's number, with a warning). When
the images are gone, the checkpoint's thresholds are kept and a warning says so.

Degenerate cases never write a NaN or a zero range (:func:`check_calibration` guards every writer):
no defective label -> :class:`DataError`; one validation image -> its score times
``SINGLE_IMAGE_FACTOR`` with a warning (no spread can be measured from one image); fewer than
``MIN_VALIDATION_IMAGES`` -> a warning; a zero score range -> ``threshold * [0.5, 1.5]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import ConfigError, DataError, note

logger = logging.getLogger(__name__)

SOURCES = ("val_good", "labelled", "manual")
LOG_SIGMAS = 3.0
MIN_VALIDATION_IMAGES = 5
SINGLE_IMAGE_FACTOR = 2.0  # one validation image: threshold = 2 x its score (a stated guess)
MIN_RELATIVE_RANGE = 1e-6  # a score range below this share of the threshold counts as zero

Calibration = dict[str, Any]
# paths -> (raw scores (N,), anomaly maps (N, H, W)) of the model being calibrated
Scorer = Callable[[list[Path]], tuple[np.ndarray, np.ndarray]]


# -- checks -----------------------------------------------------------------------------------
def calibration_scale(calibration: Mapping[str, Any]) -> float:
    """``score_max - score_min``, the normalisation range (guarded: never zero in a graph)."""
    return max(float(calibration["score_max"]) - float(calibration["score_min"]), 1e-12)


def check_calibration(calibration: Mapping[str, Any], where: str = "calibration") -> Calibration:
    """Return ``calibration`` if every value is usable; :class:`DataError` naming ``where`` if not.

    Thresholds must be finite and > 0 (raw scores are >= 0, so 0 would reject everything), the
    range ``score_max - score_min`` finite and > 0, ``source`` one of :data:`SOURCES`.
    """
    problems = []
    for key in ("image_threshold", "pixel_threshold", "score_min", "score_max"):
        value = calibration.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{key}={value!r} is not a finite number")
    if not problems:
        for key in ("image_threshold", "pixel_threshold"):
            if calibration[key] <= 0:
                problems.append(f"{key}={calibration[key]!r} is not > 0")
        if not calibration["score_max"] - calibration["score_min"] > 0:
            problems.append("score_max - score_min is not > 0")
    if calibration.get("source") not in SOURCES:
        problems.append(f"source={calibration.get('source')!r} is not one of {SOURCES}")
    if problems:
        raise DataError(
            note(
                f"{where}: refusing to write an unusable calibration: {'; '.join(problems)}",
                "nothing was written; check the images it was computed from (all identical or "
                "unreadable?) or set the threshold by hand (stpm-export --threshold VALUE)",
            )
        )
    return dict(calibration)


def with_defaults(calibration: Mapping[str, Any]) -> Calibration:
    """A checkpoint's calibration with the keys older versions did not write."""
    out = dict(calibration)
    out.setdefault("source", "val_good")
    if "pixel_threshold" not in out and "image_threshold" in out:
        out["pixel_threshold"] = out["image_threshold"]
    return out


# -- the three sources ------------------------------------------------------------------------
def map_peaks(maps: np.ndarray) -> np.ndarray:
    """(N, ...) anomaly maps -> (N,) the highest pixel of each."""
    maps = np.asarray(maps)
    return maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)


def _log_bound(values: np.ndarray, what: str) -> float:
    """``exp(mean + 3 std)`` of the logs, at least ``max(values)``; one value: value x factor."""
    if values.size == 1:
        logger.warning(
            "only 1 %s: no spread can be measured, threshold = %.1f x its score (a guess); "
            "add validation images (--val-fraction) for a measured threshold",
            what,
            SINGLE_IMAGE_FACTOR,
        )
        return float(values[0]) * SINGLE_IMAGE_FACTOR
    logs = np.log(np.clip(values, 1e-30, None))
    return max(float(np.exp(logs.mean() + LOG_SIGMAS * logs.std())), float(values.max()))


def _range(threshold: float, low: float, high: float) -> tuple[float, float]:
    """(score_min, score_max), never a zero range: ``threshold * [0.5, 1.5]`` as the fallback."""
    if high - low > MIN_RELATIVE_RANGE * abs(threshold):
        return low, high
    logger.warning(
        "all calibration scores are equal (%.4g): normalisation range set to threshold x "
        "[0.5, 1.5]",
        threshold,
    )
    return 0.5 * threshold, 1.5 * threshold


def calibrate_from_good(scores: np.ndarray, peaks: np.ndarray | None = None) -> Calibration:
    """``val_good`` calibration from the raw scores (N,) of good images and their maps' peaks (N,).

    Without ``peaks`` the pixel threshold is the image threshold (right for the ``max`` score).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise DataError(
            note("no validation images to calibrate on", "the training source needs good images")
        )
    if not np.isfinite(scores).all():
        raise DataError(note("non-finite validation scores", "this is a bug: please report it"))
    if scores.size < MIN_VALIDATION_IMAGES:
        logger.warning(
            "calibrating on %d validation images (< %d): the threshold is a rough estimate",
            scores.size,
            MIN_VALIDATION_IMAGES,
        )
    threshold = _log_bound(scores, "validation image")
    pixel = threshold
    if peaks is not None:
        pixel = _log_bound(np.asarray(peaks, dtype=np.float64).reshape(-1), "validation map")
    low = float(scores.min())
    score_min, score_max = _range(threshold, low, 2.0 * threshold - low)  # threshold -> 0.5
    return check_calibration(
        {
            "image_threshold": threshold,
            "pixel_threshold": pixel,
            "score_min": score_min,
            "score_max": score_max,
            "source": "val_good",
            "num_images": int(scores.size),
        },
        "validation calibration",
    )


def calibrate_from_labels(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
) -> Calibration:
    """``labelled`` calibration: F1-optimal image threshold (and pixel threshold from masks).

    Raises:
        DataError: no defective image among the labels (F1 is undefined without one).
    """
    from stpm_edge.metrics import f1_max

    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (labels == 1).any():
        raise DataError(
            note(
                "labelled calibration needs defective images, and these labels have none",
                "evaluate on a test set with defect folders, or keep the validation "
                "calibration (run stpm-eval without --save-calibrated)",
            )
        )
    if not (labels == 0).any():
        logger.warning("labelled calibration without good images: every image counts as NG")
    _, threshold = f1_max(labels, scores)
    pixel = float(threshold)
    if masks is not None and maps is not None and np.asarray(masks).any():
        _, pixel = f1_max(
            np.asarray(masks).reshape(-1).astype(np.uint8), np.asarray(maps).reshape(-1)
        )
    elif maps is not None and (labels == 0).any():
        pixel = _log_bound(map_peaks(np.asarray(maps)[labels == 0]), "good labelled map")
    score_min, score_max = _range(float(threshold), float(scores.min()), float(scores.max()))
    return check_calibration(
        {
            "image_threshold": float(threshold),
            "pixel_threshold": float(pixel),
            "score_min": score_min,
            "score_max": score_max,
            "source": "labelled",
            "num_images": int(scores.size),
        },
        "labelled calibration",
    )


def calibrate_manual(
    image_threshold: float,
    pixel_threshold: float | None = None,
    base: Mapping[str, Any] | None = None,
) -> Calibration:
    """``manual`` calibration: the given threshold(s), the normalisation range of ``base``.

    Without ``pixel_threshold``, ``base``'s pixel/image ratio is kept (equal without ``base``).
    """
    for flag, value in (("--threshold", image_threshold), ("--pixel-threshold", pixel_threshold)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(
                note(f"{flag} {value}: must be a finite number > 0", "raw score units")
            )
    base = with_defaults(base) if base else None
    if pixel_threshold is None:
        ratio = base["pixel_threshold"] / base["image_threshold"] if base else 1.0
        pixel_threshold = image_threshold * ratio
    half = (calibration_scale(base) if base else image_threshold) / 2.0
    return check_calibration(
        {
            "image_threshold": float(image_threshold),
            "pixel_threshold": float(pixel_threshold),
            "score_min": float(image_threshold) - half,
            "score_max": float(image_threshold) + half,
            "source": "manual",
            "num_images": 0,
        },
        "manual calibration",
    )


def normalized_scores(scores: np.ndarray, calibration: Mapping[str, Any]) -> np.ndarray:
    """``clip((s - threshold) / scale + 0.5, 0, 1)`` in float32, the exported graph's arithmetic."""
    s = np.asarray(scores, dtype=np.float32)
    threshold = np.float32(calibration["image_threshold"])
    scale = np.float32(calibration_scale(calibration))
    return np.clip((s - threshold) / scale + np.float32(0.5), 0.0, 1.0).astype(np.float32)


# -- labelled images travel with the checkpoint -------------------------------------------------
def labelled_record(
    paths: Sequence[str | Path], labels: Sequence[int], mask_paths: Sequence[str | Path | None]
) -> dict[str, list]:
    """What ``stpm-eval --save-calibrated`` stores as ``payload["labelled_images"]``."""
    return {
        "paths": [str(Path(p).resolve()) for p in paths],
        "labels": [int(v) for v in labels],
        "mask_paths": [None if m is None else str(Path(m).resolve()) for m in mask_paths],
    }


def _labelled_masks(record: Mapping[str, list], size: tuple[int, int]) -> np.ndarray:
    from stpm_edge.runtime.image import read_mask, resize_mask

    masks = np.zeros((len(record["paths"]), *size), dtype=bool)
    for i, mask_path in enumerate(record.get("mask_paths") or []):
        if mask_path is not None:
            masks[i] = resize_mask(read_mask(mask_path), size)
    return masks


def _missing(paths: Sequence[str | None]) -> list[str]:
    return [p for p in paths if p is not None and not Path(p).is_file()]


def recalibrate(
    payload: Mapping[str, Any], scorer: Scorer, what: str = "this model"
) -> Calibration:
    """The checkpoint's calibration re-expressed for ``what`` (module doc), by its ``source``.

    Args:
        payload: the checkpoint dict (``calibration``, ``val_paths``, ``labelled_images``).
        scorer: runs the model being calibrated on image paths.
        what: how log lines name the model (e.g. "the int8 graph").
    """
    calibration = with_defaults(payload.get("calibration") or {})
    source = calibration["source"]
    if source == "manual":
        logger.warning(
            "manual thresholds kept as set (image %.4g): raw scores of %s may differ slightly "
            "from the model they were chosen on; check the verdicts",
            calibration["image_threshold"],
            what,
        )
        return check_calibration(calibration, "manual calibration")
    if source == "labelled":
        record = payload.get("labelled_images") or {}
        paths = list(record.get("paths") or [])
        missing = _missing(paths + list(record.get("mask_paths") or []))
        if not paths or missing:
            logger.warning(
                "labelled images of this checkpoint not found (%s): keeping its labelled "
                "thresholds as they are (image %.4g), NOT re-fitted to %s",
                missing[0] if missing else "none stored",
                calibration["image_threshold"],
                what,
            )
            return check_calibration(calibration, "labelled calibration")
        scores, maps = scorer([Path(p) for p in paths])
        masks = _labelled_masks(record, tuple(np.asarray(maps).shape[1:3]))
        result = calibrate_from_labels(np.asarray(record["labels"]), scores, masks, maps)
        logger.info(
            "labelled thresholds re-fitted to %s on %d images: image %.4g (was %.4g)",
            what,
            len(paths),
            result["image_threshold"],
            calibration["image_threshold"],
        )
        return result
    paths = list(payload.get("val_paths") or [])
    missing = _missing(paths)
    if not paths or missing:
        logger.warning(
            "validation images of this checkpoint not found (%s): keeping its thresholds "
            "(re-export on the training machine for thresholds fitted to %s)",
            missing[0] if missing else "none stored",
            what,
        )
        return check_calibration(calibration, "checkpoint calibration")
    scores, maps = scorer([Path(p) for p in paths])
    result = calibrate_from_good(scores, map_peaks(maps))
    logger.info(
        "re-calibrated %s on %d validation images: image threshold %.4g",
        what,
        len(paths),
        result["image_threshold"],
    )
    return result
