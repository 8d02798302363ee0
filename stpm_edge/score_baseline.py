"""The score baseline: the image score counts only what rises above good images at each position.

STPM's map has a fixed pattern on good images: positions where the student never quite matches
the teacher, whatever the image — the frame's border (the convolutions' zero padding), the edges of
an aligned part's components, a rendered part's specular rim. A good part lights up there in every
frame, so the image score (max or top-k mean of the map) of a good image can be as high as a
defect's elsewhere. The baseline is that pattern: the largest value each position of the scored
map (the STPM map, fused with the colour map when there is one) reached on the run's training
images, ``peak``. The image score is then the top-k mean (or max) of ``map - (peak - max(peak))``:
every position is lifted by how far its training peak lies below the highest one, so only what
rises above the pattern counts. The constant ``max(peak)`` changes no ranking but keeps scores
positive (the map is >= 0, the stored ``values = peak - max(peak)`` are <= 0): the validation
calibration fits a log-normal to the good images' scores, and scores of ``map - peak`` sit around
0 (a negative score, clipped for the log, put one threshold at 7e28).

* The training images, not the validation images: the validation images stay held out for what
  must not have seen them (the thresholds, the colour map's scales). The student was trained on
  these images, so their maps are low where it could learn them; what stays high there is the
  pattern it could not learn.
* Only the score. The output map is not changed: subtracting the baseline from it as well moved
  pixel AUROC 0.870 -> 0.847 and AU-PRO 0.739 -> 0.732 (benchmark seed 0, seven categories; washer
  and gear lost 0.05-0.06 AU-PRO where their defects sit on the pattern), while the score alone took
  every category's image AUROC up (mean 0.812 -> 0.840). A scratch comparison also tried the mean,
  the 90th and 95th percentile, mean + 2-3 std and a blurred or dilated max per position, and the
  validation images instead of the training ones; the max over training images scored best.
* Fitted post hoc, like the colour map (no retraining: ``stpm-baseline`` adds it to any
  checkpoint), and refitted whenever the scored map changes (a new colour map, a tuned student,
  other map settings in ``stpm-eval``): it is in the scored map's units.

In the exported graph it is one float32 constant ``baseline.values`` (1, 1, h, w) on the scoring
grid and one Sub before the score's TopK, outside every INT8/FP16 region.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from stpm_edge.backbones import get_backbone_spec
from stpm_edge.errors import CheckpointError, DataError, note

logger = logging.getLogger(__name__)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

PAYLOAD_KEY = "score_baseline"
_REFIT = "refit it: stpm-baseline CKPT --out NEW.ckpt (or --off to drop it)"


class ScoreBaseline(nn.Module):
    """The fitted baseline; its buffer becomes the graph's ``baseline.values`` constant."""

    def __init__(self, values: torch.Tensor, images: int) -> None:
        super().__init__()
        grid = tuple(values.shape[-2:])
        self.register_buffer("values", values.detach().float().reshape(1, 1, *grid).clone())
        self.images = int(images)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.values.shape[-2]), int(self.values.shape[-1])

    def to_payload(self) -> dict[str, Any]:
        return {"values": self.values[0, 0].detach().cpu().clone(), "images": self.images}


def scoring_grid(config: Any) -> tuple[int, int]:
    """The (h, w) grid a model of ``config`` scores its map on (``anomaly_map.map_grid``)."""
    if config.map_resolution == "input":
        return config.image_size, config.image_size
    stride = get_backbone_spec(config.backbone).reductions[0]
    return config.image_size // stride, config.image_size // stride


def baseline_from_payload(
    payload: dict[str, Any], config: Any, source: str
) -> ScoreBaseline | None:
    """The checkpoint's score baseline for a model of ``config``, or None when it has none."""
    entry = payload.get(PAYLOAD_KEY)
    if not entry:
        return None
    try:
        values = torch.as_tensor(entry["values"], dtype=torch.float32)
        images = int(entry["images"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            note(f"{source}: malformed {PAYLOAD_KEY!r} entry ({exc!r})", _REFIT)
        ) from exc
    expected = scoring_grid(config)
    fits = tuple(values.shape) == expected and bool(torch.isfinite(values).all())
    if not fits or float(values.max()) > 0:
        raise CheckpointError(
            note(
                f"{source}: {PAYLOAD_KEY!r} of shape {tuple(values.shape)} does not fit the "
                f"model's scoring grid {expected} (or is not finite, or rises above 0)",
                _REFIT,
            )
        )
    return ScoreBaseline(values, images)


def describe(baseline: ScoreBaseline | None) -> dict[str, Any]:
    """What the ONNX metadata and reports say about it (``stpm.score_baseline``)."""
    if baseline is None:
        return {"mode": "off"}
    values = baseline.values
    return {
        "mode": "train_max",
        "grid": list(baseline.grid),
        "images": baseline.images,
        "mean": float(values.mean()),
        "min": float(values.min()),
    }


def values_from_peak(peak: ArrayT) -> ArrayT:
    """The stored baseline of a per-position training ``peak`` (torch or numpy): ``peak -
    max(peak)``, <= 0 (the module docstring says why). PyTorch's fit and the exported graph's
    refit (``export.graph_baseline``) both take it from here."""
    return peak - peak.max()


@torch.no_grad()
def fit_score_baseline(
    model: Any, train_images: np.ndarray, device: str | torch.device = "cpu", batch_size: int = 8
) -> ScoreBaseline:
    """The per-position max of ``model``'s scored grid map (with its colour map, without any
    baseline) over ``train_images``, uint8 RGB (N, S, S, 3) at the model's size, less its own
    largest value (the module docstring says why)."""
    from stpm_edge.runtime.image import normalize

    if len(train_images) == 0:
        raise ValueError("the score baseline needs at least one training image")
    cfg, peak = model.config, None
    for start in range(0, len(train_images), batch_size):
        x = torch.from_numpy(normalize(train_images[start : start + batch_size], cfg.mean, cfg.std))
        batch_peak = model.scored_grid_map(x.to(device)).amax(dim=0, keepdim=True).cpu()
        peak = batch_peak if peak is None else torch.maximum(peak, batch_peak)
    baseline = ScoreBaseline(values_from_peak(peak), len(train_images))
    logger.info(
        "score baseline fitted on %d training images: the scored map's peak %.4g on average, "
        "%.4g at most",
        len(train_images),
        float(peak.mean()),
        float(peak.max()),
    )
    return baseline.to(device)


def fit_for_checkpoint(
    payload: dict[str, Any], model: Any, device: str = "cpu", batch_size: int = 8
) -> ScoreBaseline:
    """A score baseline for a trained checkpoint, from its training images (its recorded data and
    split) and ``model``'s current map (colour map and map settings as they are now)."""
    from stpm_edge.colour_map import good_images
    from stpm_edge.tune import original_train

    try:
        samples = original_train(payload)
    except DataError as exc:
        missing = str(exc).split("\n")[0]
        raise DataError(
            note(
                f"{missing}: the score baseline is fitted on it",
                "run where the training data lives, or without the baseline "
                "(stpm-eval --no-score-baseline, stpm-baseline --off)",
            )
        ) from exc
    train = good_images([s.path for s in samples], model.config.image_size)
    return fit_score_baseline(model, train, device, batch_size)


def refitted(
    payload: dict[str, Any], model: Any, device: str = "cpu", batch_size: int = 8
) -> ScoreBaseline | None:
    """``model``'s baseline refitted to its current map, or None when it has none: what every
    step that changes the scored map (colour map, student, map settings) calls afterwards."""
    if getattr(model, "baseline", None) is None:
        return None
    model.baseline = None  # fitted on the map without one
    return fit_for_checkpoint(payload, model, device, batch_size)


def write_with_score_baseline(
    checkpoint: Any,
    out: Any,
    on: bool = True,
    device: str = "cpu",
    batch_size: int = 8,
    force: bool = False,
) -> dict[str, Any]:
    """``stpm-baseline``: a new checkpoint with the score baseline fitted to its map (``on``) or
    removed, and thresholds re-calibrated on the new scores."""
    from stpm_edge.posthoc import rewrite_checkpoint

    def change(payload: dict[str, Any], model: Any) -> None:
        model.baseline = None
        if on:
            model.baseline = fit_for_checkpoint(payload, model, device, batch_size)

    what = f"the score baseline ({'on' if on else 'off'})"
    return rewrite_checkpoint(checkpoint, out, change, what, device, batch_size, force)
