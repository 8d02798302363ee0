"""Evaluation on a labelled MVTec-layout test set: metrics, per-image CSV, overlays and curves.

``metrics.json`` holds the metrics of all test images and, under ``per_defect_type``, those of
the good images against each defect type alone; ``per_defect_type.md`` is the same as a table.

The same code evaluates the PyTorch model and any exported graph: a *predictor* maps a batch of
resized uint8 RGB images (B, S, S, 3) to (anomaly maps (B, S, S) float32, scores (B,) float32).
Metrics are computed at the model's resolution (masks resized with nearest neighbour).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stpm_edge.data.mvtec import Sample

logger = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Predictions:
    """Everything measured on a test set, in sample order."""

    samples: list[Sample]
    images: np.ndarray  # (N, S, S, 3) uint8 RGB, resized
    masks: np.ndarray  # (N, S, S) bool
    maps: np.ndarray  # (N, S, S) float32
    scores: np.ndarray  # (N,) float32

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def load_test_images(samples: list[Sample], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (images (N, S, S, 3) uint8 RGB, masks (N, S, S) bool), resized like training."""
    from stpm_edge.runtime.image import read_image, read_mask, resize_image, resize_mask

    images = np.stack([resize_image(read_image(s.path), image_size) for s in samples])
    masks = np.zeros((len(samples), image_size, image_size), dtype=bool)
    for i, s in enumerate(samples):
        if s.mask_path is not None:
            masks[i] = resize_mask(read_mask(s.mask_path), image_size)
    return images, masks


def predict(
    samples: list[Sample], predictor: Predictor, image_size: int, batch_size: int = 8
) -> Predictions:
    images, masks = load_test_images(samples, image_size)
    maps, scores = [], []
    for start in range(0, len(images), batch_size):
        m, s = predictor(images[start : start + batch_size])
        maps.append(np.asarray(m, dtype=np.float32).reshape(len(s), image_size, image_size))
        scores.append(np.asarray(s, dtype=np.float32).reshape(-1))
    return Predictions(samples, images, masks, np.concatenate(maps), np.concatenate(scores))


def torch_predictor(model, device: str = "cpu") -> Predictor:
    """Predictor of a PyTorch :class:`~stpm_edge.model.STPM` (normalisation as in training)."""
    import torch

    from stpm_edge.runtime.image import normalize

    mean, std = model.config.mean, model.config.std

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(normalize(images, mean, std)).to(device)
        amap, score = model.score_map(x)
        return amap[:, 0].cpu().numpy(), score.cpu().numpy()

    return run


def compute_metrics(pred: Predictions) -> dict:
    from stpm_edge.metrics import image_and_pixel_metrics, to_json_dict

    return to_json_dict(image_and_pixel_metrics(pred.labels, pred.scores, pred.masks, pred.maps))


def write_report(pred: Predictions, calibration: dict, out: Path, max_overlays: int = 12) -> dict:
    """Write ``metrics.json``, ``predictions.csv``, ``roc.png``, ``pro.png`` and ``overlays.png``."""
    from stpm_edge.calibration import normalized_scores

    out.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(pred)
    normalized = normalized_scores(pred.scores, calibration)
    verdicts = np.where(normalized >= 0.5, "NG", "OK")
    labels = pred.labels
    metrics["image_threshold"] = float(calibration["image_threshold"])
    metrics["calibration_source"] = calibration.get("source", "unknown")
    metrics["accuracy_at_threshold"] = float(np.mean((verdicts == "NG") == (labels == 1)))
    metrics["per_defect_type"] = per_type_metrics(pred)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "per_defect_type.md").write_text(per_type_table(metrics))
    _write_csv(out / "predictions.csv", pred, normalized, verdicts)
    _write_plots(pred, calibration, out, metrics, max_overlays)
    return metrics


def per_type_metrics(pred: Predictions) -> dict[str, dict]:
    """Good test images against each defect type alone (image AUROC, pixel AUROC, AUPRO)."""
    from stpm_edge.metrics import per_defect_type_metrics, to_json_dict

    types = [s.defect_type for s in pred.samples]
    rows = per_defect_type_metrics(pred.labels, pred.scores, types, pred.masks, pred.maps)
    return {name: to_json_dict(row) for name, row in rows.items()}


def per_type_table(metrics: dict) -> str:
    """Markdown table of ``metrics``: all defects, then one row per defect type (good vs it)."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731  None = undefined (NaN)
    lines = [
        "| defect type | good + defective images | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|",
    ]
    n_bad = metrics.get("num_defective", 0)
    rows = [("all", metrics.get("num_images", 0) - n_bad, n_bad, metrics)]
    rows += [
        (t, r["num_good"], r["num_defective"], r) for t, r in metrics["per_defect_type"].items()
    ]
    for name, good, bad, r in rows:
        cells = [fmt(r.get(k)) for k in ("image_auroc", "pixel_auroc", "aupro")]
        lines.append(f"| {name} | {good} + {bad} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, pred: Predictions, normalized: np.ndarray, verdicts: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "defect_type", "score", "score_normalized", "verdict"])
        for s, score, norm, verdict in zip(
            pred.samples, pred.scores, normalized, verdicts, strict=True
        ):
            writer.writerow(
                [str(s.path), s.label, s.defect_type, f"{score:.6g}", f"{norm:.4f}", verdict]
            )


def _write_plots(
    pred: Predictions, calibration: dict, out: Path, metrics: dict, max_overlays: int
) -> None:
    from stpm_edge.metrics import pro_curve, roc_curve
    from stpm_edge.plots import GridItem, plot_pro, plot_roc, save_overlay_grid

    if len(set(pred.labels.tolist())) == 2:
        fpr, tpr, _ = roc_curve(pred.labels, pred.scores)
        plot_roc(fpr, tpr, metrics["image_auroc"], out / "roc.png", title="image ROC")
    if pred.masks.any():
        fpr, pro, _ = pro_curve(pred.masks, pred.maps, num_thresholds=2000)
        plot_pro(fpr, pro, metrics["aupro"] or float("nan"), out / "pro.png")
    order = _overlay_sample(pred.labels, max_overlays)
    vmax = float(max(calibration["image_threshold"] * 2.0, 1e-12))
    items = [
        GridItem(
            pred.images[i],
            pred.maps[i],
            float(pred.scores[i]),
            pred.masks[i],
            f"{pred.samples[i].defect_type}/{pred.samples[i].path.name}",
        )
        for i in order
    ]
    save_overlay_grid(
        items, out / "overlays.png", vmin=0.0, vmax=vmax, threshold=calibration["image_threshold"]
    )


def _overlay_sample(labels: np.ndarray, count: int) -> list[int]:
    """A few good and many defective images, spread over the test set, deterministic."""
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    n_good = min(len(good), max(1, count // 4))
    n_bad = min(len(bad), count - n_good)
    pick = lambda idx, n: idx[np.linspace(0, len(idx) - 1, n).astype(int)].tolist() if n else []  # noqa: E731
    return pick(good, n_good) + pick(bad, n_bad)


@dataclass
class EvalOptions:
    """Settings of ``stpm-eval``; ``None`` map settings keep the checkpoint's."""

    device: str = "cpu"
    batch_size: int = 8
    blur_sigma: float | None = None
    score_reduction: str | None = None
    topk_fraction: float | None = None
    map_resolution: str | None = None
    skip_bad: bool = False
    save_calibrated: Path | None = None
    colour_map: bool = True  # False: the checkpoint's colour map switched off (ablation)
    score_baseline: bool = True  # False: the checkpoint's score baseline switched off (ablation)

    def map_overrides(self) -> dict:
        values = {
            "blur_sigma": self.blur_sigma,
            "score_reduction": self.score_reduction,
            "topk_fraction": self.topk_fraction,
            "map_resolution": self.map_resolution,
        }
        return {k: v for k, v in values.items() if v is not None}


def evaluate_checkpoint(
    ckpt: Path, data: str, category: str, out: Path, options: EvalOptions | None = None
) -> dict:
    """``stpm-eval``: evaluate a checkpoint on ``data/category/test``; returns the metrics.

    Map-setting overrides do not change training, so they can be compared without retraining;
    thresholds are then re-fitted by :func:`stpm_edge.calibration.recalibrate` (validation images,
    or the stored labelled images; manual thresholds are kept). ``save_calibrated`` writes a copy
    of the checkpoint whose thresholds are F1-optimal on these labelled images, with their paths
    and labels, so stpm-export can re-fit them to the exported precision.
    """
    from stpm_edge.checkpoint import load_checkpoint, model_from_payload
    from stpm_edge.data import MVTecCategory

    options = options or EvalOptions()
    payload = load_checkpoint(ckpt)
    model = model_from_payload(payload, str(ckpt)).to(options.device)
    calibration = payload["calibration"]
    colour_off = not options.colour_map and model.colour is not None
    baseline_off = not options.score_baseline and model.baseline is not None
    if colour_off:
        model.colour = None  # plain STPM; its thresholds are re-fitted below
    if baseline_off:
        model.baseline = None
    if options.map_overrides() or colour_off or baseline_off:
        model.config = type(model.config)(**{**model.config.to_dict(), **options.map_overrides()})
        _refit_posthoc(payload, model, options)
        calibration = _recalibrate(model, payload, options.device, options.batch_size)
    samples = MVTecCategory(data, category, skip_bad=options.skip_bad).test()
    pred = predict(
        samples, torch_predictor(model, options.device), model.config.image_size, options.batch_size
    )
    metrics = write_report(pred, calibration or _fallback_calibration(pred), out)
    from stpm_edge import colour_map, score_baseline

    metrics["colour_map"] = colour_map.describe(model.colour)
    metrics["score_baseline"] = score_baseline.describe(model.baseline)
    metrics["map_settings"] = {
        k: getattr(model.config, k)
        for k in ("blur_sigma", "score_reduction", "topk_fraction", "map_resolution")
    }
    if options.save_calibrated is not None:
        metrics["saved_calibrated_checkpoint"] = str(
            save_labelled_calibration(payload, model, pred, options.save_calibrated)
        )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.info(
        "%s/%s: image AUROC %.4f, pixel AUROC %.4f, AUPRO %.4f",
        data,
        category,
        metrics["image_auroc"],
        metrics["pixel_auroc"],
        metrics["aupro"] or float("nan"),
    )
    return metrics


def _refit_posthoc(payload: dict, model, options: EvalOptions) -> None:
    """The post-hoc parts refitted to the model's current map settings: the colour map's STPM
    scale (the colour statistics do not depend on them), then the score baseline, which is in the
    scored map's units."""
    from stpm_edge.colour_map import rescaled
    from stpm_edge.score_baseline import refitted

    if model.colour is not None:
        model.colour = rescaled(payload, model, options.device, options.batch_size)
    model.baseline = refitted(payload, model, options.device, options.batch_size)


def save_labelled_calibration(payload: dict, model, pred: Predictions, path: Path) -> Path:
    """A new checkpoint (never the input) with F1-optimal image and pixel thresholds."""
    from stpm_edge.calibration import calibrate_from_labels, labelled_record
    from stpm_edge.checkpoint import save_checkpoint
    from stpm_edge.errors import OutputExistsError, note

    path = Path(path)
    if path.exists():
        raise OutputExistsError(
            note(f"--save-calibrated {path} exists", "choose a new file name; nothing was written")
        )
    calibration = calibrate_from_labels(pred.labels, pred.scores, pred.masks, pred.maps)
    extra = {
        k: v
        for k, v in payload.items()
        if k not in ("format", "config", "teacher", "student", "calibration", "versions")
    }
    # the labelled images travel by path, so stpm-export can re-fit these thresholds to the
    # exported precision by re-scoring them (DESIGN.md §4)
    extra["labelled_images"] = labelled_record(
        [s.path for s in pred.samples], pred.labels.tolist(), [s.mask_path for s in pred.samples]
    )
    save_checkpoint(path, model, calibration, **extra)
    logger.info(
        "wrote %s with labelled thresholds (image %.4g, pixel %.4g)",
        path,
        calibration["image_threshold"],
        calibration["pixel_threshold"],
    )
    return path


def torch_scorer(model, device: str = "cpu", batch_size: int = 8):
    """A :data:`stpm_edge.calibration.Scorer` of the PyTorch model: paths -> (scores, maps)."""

    def score(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        samples = [Sample(path=p, label=0, defect_type="good", mask_path=None) for p in paths]
        pred = predict(samples, torch_predictor(model, device), model.config.image_size, batch_size)
        return pred.scores, pred.maps

    return score


def _recalibrate(model, payload: dict, device: str, batch_size: int) -> dict:
    """The checkpoint's thresholds re-fitted to other map settings (the calibration service)."""
    from stpm_edge.calibration import recalibrate

    return recalibrate(payload, torch_scorer(model, device, batch_size), "these map settings")


def _fallback_calibration(pred: Predictions) -> dict:
    from stpm_edge.calibration import calibrate_from_good, map_peaks

    logger.warning("checkpoint has no calibration: using the test set's good images")
    good = pred.labels == 0
    return calibrate_from_good(pred.scores[good], map_peaks(pred.maps[good]))
