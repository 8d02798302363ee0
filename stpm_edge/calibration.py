"""Thresholds and score normalisation (DESIGN.md §4), from good images or labelled ones.

From good validation images only, the image threshold is a 3-sigma bound in the log domain: the map
is a product of three per-scale distances, so its log-max is a sum and far closer to Gaussian than
the raw score; ``exp(mean + 3 std)`` of the log-scores is a bound that is stable with few images.
The pixel threshold is then the image threshold itself, so defect regions exist exactly when the
verdict is NG (for the default max reduction). With labelled defects, both thresholds are
F1-optimal instead.
"""

from __future__ import annotations

import numpy as np

LOG_SIGMAS = 3.0


def calibrate_from_good(scores: np.ndarray) -> dict[str, float | str]:
    """Calibration from raw scores of good images (B,) float."""
    scores = np.asarray(scores, dtype=np.float64)
    logs = np.log(np.clip(scores, 1e-30, None))
    threshold = float(np.exp(logs.mean() + LOG_SIGMAS * logs.std()))
    threshold = max(threshold, float(scores.max()))  # never reject a validation image
    low = float(scores.min())
    return {
        "image_threshold": threshold,
        "pixel_threshold": threshold,
        "score_min": low,
        "score_max": 2.0 * threshold - low,  # keeps the threshold at normalised 0.5
        "source": "val_good",
        "num_images": int(scores.size),
    }


def calibrate_from_labels(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
) -> dict[str, float | str]:
    """F1-optimal thresholds from labelled images (and pixel masks when given)."""
    from stpm_edge.metrics import f1_max

    _, image_threshold = f1_max(labels, scores)
    result: dict[str, float | str] = {
        "image_threshold": float(image_threshold),
        "pixel_threshold": float(image_threshold),
        "score_min": float(np.min(scores)),
        "score_max": float(np.max(scores)),
        "source": "labelled",
        "num_images": int(len(scores)),
    }
    if masks is not None and maps is not None and masks.any():
        _, pixel_threshold = f1_max(masks.reshape(-1).astype(np.uint8), maps.reshape(-1))
        result["pixel_threshold"] = float(pixel_threshold)
    return result


def normalized_scores(scores: np.ndarray, calibration: dict) -> np.ndarray:
    """Normalised scores for reports, through the same function the exported graph uses."""
    import torch

    from stpm_edge.anomaly_map import calibration_scale, normalize_score

    normalized = normalize_score(
        torch.as_tensor(np.asarray(scores, dtype=np.float32)),
        calibration["image_threshold"],
        calibration_scale(calibration),
    )
    return normalized.numpy()
