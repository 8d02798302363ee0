"""Learning from the operator: fine-tune a trained student on confirmed false rejects.

``stpm-tune RUN/best.ckpt --extra-good REVIEW/good --out RUN/tuned.ckpt`` continues training the
student of a calibrated checkpoint on its original good training images plus the frames the
operator marked "good" on the live page (``stpm-camera --http``), re-calibrates through the one
calibration service, and writes a NEW checkpoint. Nothing existing is overwritten: the input
checkpoint is only read, an existing ``--out`` is refused unless ``--force``, and ``--out`` may
never be the input checkpoint itself.

The schedule is short on purpose (defaults: 3 epochs, SGD at a tenth of the training rate,
momentum and weight decay as trained): the student already matches the teacher on the normal
parts, only the new appearance has to be learnt, and a long schedule would drift away from the
validated model. The marked frames are few next to the training set, so each epoch repeats them
until they make up about ``extra_share`` of the epoch's images (default 25 %); without that a
handful of frames is drowned by hundreds of training images.

Calibration after tuning follows the checkpoint's ``source`` (``stpm_edge.calibration``):
``val_good`` is re-computed on the same held-out validation images (not on the marked frames,
which are now training images and would bias the threshold low); ``labelled`` is re-fitted on the
stored labelled images; ``manual`` is KEPT as set, with a warning and ``"threshold_kept"`` in the
report, because a threshold someone chose by hand is never silently replaced.

The report (``OUT.tune.json`` next to the new checkpoint, and printed) has the marked frames'
scores and verdicts before vs after, and the labelled test set's image/pixel AUROC before vs
after when a test set is known (``--data``/``--category``, else the checkpoint's own training
data when it has a ``test`` folder).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import ConfigError, DataError, OutputExistsError, note

logger = logging.getLogger(__name__)

DROPPED_KEYS = ("format", "config", "teacher", "student", "calibration", "versions")


@dataclass
class TuneConfig:
    """Settings of ``stpm-tune`` (the CLI flags, typed)."""

    checkpoint: str
    extra_good: list[str]
    out: str
    epochs: int = 3
    lr_factor: float = 0.1
    extra_share: float = 0.25
    batch_size: int | None = None  # None: the training batch size
    seed: int = 0
    device: str = "cpu"
    data: str | None = None  # labelled test set for before/after (MVTec layout)
    category: str | None = None
    force: bool = False
    progress: bool = False


# -- checks -------------------------------------------------------------------------------------
def check_output(cfg: TuneConfig) -> Path:
    """The new checkpoint's path; refuses the input itself and an existing file without force."""
    out, src = Path(cfg.out), Path(cfg.checkpoint)
    if out.suffix != ".ckpt":
        raise ConfigError(note(f"--out {out}: expected a .ckpt file name", "e.g. RUN/tuned.ckpt"))
    if out.resolve() == src.resolve():
        raise OutputExistsError(
            note(
                f"--out {out} is the checkpoint being tuned",
                "tuning always writes a new checkpoint; choose another --out",
            )
        )
    if out.exists() and not cfg.force:
        raise OutputExistsError(
            note(f"--out {out} exists", "pass --force to replace it, or choose another --out")
        )
    return out


def marked_images(folders: list[str]) -> list[Path]:
    """The image files directly in each ``--extra-good`` folder (sorted, de-duplicated)."""
    from stpm_edge.runtime.image import list_images

    found: list[Path] = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(
                note(
                    f"--extra-good {folder} is not a folder",
                    "pass the review folder's good/ (stpm-camera --http writes NG_DIR/../review/good)",
                )
            )
        found += list_images(folder)
    unique = sorted(set(p.resolve() for p in found))
    if not unique:
        raise DataError(
            note(f"no images in --extra-good {', '.join(folders)}", "mark frames as good first")
        )
    return unique


# -- data -----------------------------------------------------------------------------------------
def original_train(payload: dict[str, Any]) -> list:
    """The training samples of the run that made the checkpoint (its recorded data and split).

    The validation half is not needed here: re-calibration reads the checkpoint's ``val_paths``.
    """
    from stpm_edge.data import load_training_source, split_train_val

    train_cfg = payload.get("train_config") or {}
    data = train_cfg.get("data")
    if not data or not Path(data).exists():
        raise DataError(
            note(
                f"the training data of this checkpoint is not here ({data or 'not recorded'})",
                "tune where the training data lives (tuning on the marked frames alone would "
                "forget the normal parts)",
            )
        )
    samples = load_training_source(data, train_cfg.get("category")).train_good()
    train, _ = split_train_val(
        samples, float(train_cfg.get("val_fraction", 0.2)), int(train_cfg.get("seed", 0))
    )
    if train_cfg.get("max_train_images"):
        train = train[: int(train_cfg["max_train_images"])]
    return train


def repeats_for(n_train: int, n_extra: int, share: float) -> int:
    """How often each marked frame is repeated so they are about ``share`` of an epoch."""
    if not 0.0 < share < 1.0:
        raise ConfigError(note(f"--extra-share {share}", "expected a value in (0, 1), e.g. 0.25"))
    wanted = share * n_train / (1.0 - share)
    return max(1, round(wanted / max(n_extra, 1)))


# -- scoring ----------------------------------------------------------------------------------
def verdicts_of(scores: np.ndarray, calibration: dict[str, Any]) -> list[str]:
    from stpm_edge.calibration import normalized_scores

    return ["NG" if v >= 0.5 else "OK" for v in normalized_scores(scores, calibration)]


def score_paths(model, paths: list[Path], device: str) -> np.ndarray:
    from stpm_edge.evaluate import torch_scorer

    scores, _ = torch_scorer(model, device)(paths)
    return np.asarray(scores, dtype=np.float64)


def labelled_metrics(model, data: str, category: str, device: str) -> dict[str, Any]:
    from stpm_edge.data import MVTecCategory
    from stpm_edge.evaluate import compute_metrics, predict, torch_predictor

    samples = MVTecCategory(data, category).test()
    pred = predict(samples, torch_predictor(model, device), model.config.image_size)
    metrics = compute_metrics(pred)
    return {k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "num_images")}


def labelled_test_set(cfg: TuneConfig, payload: dict[str, Any]) -> tuple[str, str] | None:
    """The labelled test set for the before/after comparison, if one is known."""
    if cfg.data and cfg.category:
        return cfg.data, cfg.category
    train_cfg = payload.get("train_config") or {}
    data, category = train_cfg.get("data"), train_cfg.get("category")
    if data and category and (Path(data) / category / "test").is_dir():
        return data, category
    return None


# -- the tuning -------------------------------------------------------------------------------
def _fine_tune(model, payload: dict[str, Any], cfg: TuneConfig, samples: list) -> dict[str, float]:
    import torch

    from stpm_edge.data.torch_dataset import ImageDataset
    from stpm_edge.host_memory import apply_host_memory
    from stpm_edge.mixed_precision import resolve_autocast
    from stpm_edge.train import TrainConfig, resolve_device, train_epoch

    known = set(TrainConfig.__dataclass_fields__)
    trained = {k: v for k, v in (payload.get("train_config") or {}).items() if k in known}
    tcfg = TrainConfig(**trained)
    tcfg.epochs, tcfg.seed, tcfg.progress = cfg.epochs, cfg.seed, cfg.progress
    tcfg.batch_size = cfg.batch_size or tcfg.batch_size
    device = resolve_device(cfg.device)
    host_memory = apply_host_memory(tcfg.host_memory)  # the training's own setting, as --amp
    model.to(device)
    mc = model.config
    dataset = ImageDataset(samples, mc.image_size, mc.mean, mc.std, cache=True)
    lr = tcfg.lr * cfg.lr_factor
    optimizer = torch.optim.SGD(
        model.student.parameters(), lr=lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay
    )
    autocast = resolve_autocast(tcfg.amp, device)
    scaler = autocast.grad_scaler()
    torch.manual_seed(cfg.seed)
    losses = []
    for epoch in range(cfg.epochs):
        loss, _ = train_epoch(model, optimizer, scaler, dataset, tcfg, epoch, device, autocast)
        losses.append(loss)
        logger.info("tune epoch %d/%d: train loss %.4f", epoch + 1, cfg.epochs, loss)
    model.eval()
    return {"lr": lr, "train_loss_per_epoch": losses, "host_memory": host_memory}


def _calibrate(model, payload: dict[str, Any], device: str, path: str) -> dict[str, Any]:
    """The new calibration by the checkpoint's source (module doc: manual is kept)."""
    from stpm_edge.calibration import recalibrate, with_defaults
    from stpm_edge.evaluate import torch_scorer

    if not payload.get("calibration"):
        raise DataError(
            note(
                f"{path} has no calibration",
                "tune the calibrated RUN/best.ckpt written at the end of stpm-train",
            )
        )
    source = with_defaults(payload["calibration"])["source"]
    if source == "manual":
        logger.warning(
            "the checkpoint's thresholds were set by hand: kept as set in the tuned checkpoint "
            "(check the verdicts in the report; set a new one with stpm-export --threshold)"
        )
    return recalibrate(payload, torch_scorer(model, device), "the tuned student")


def _refit_posthoc(model, payload: dict[str, Any], known: list, device: str) -> None:
    """The student moved: the colour map's STPM scale is re-measured, and the score baseline is
    refitted on every good image the student now knows (its training images and the marked
    frames), so a marked frame's own pattern does not count against it."""
    from stpm_edge.colour_map import good_images, rescaled
    from stpm_edge.score_baseline import fit_score_baseline

    if model.colour is not None:
        model.colour = rescaled(payload, model, device)
    if model.baseline is not None:
        model.baseline = None  # fitted on the map without one
        images = good_images(known, model.config.image_size)
        model.baseline = fit_score_baseline(model, images, device)


def tune(cfg: TuneConfig) -> dict[str, Any]:
    """Fine-tune, re-calibrate, write ``cfg.out`` and ``OUT.tune.json``; returns the report."""
    from stpm_edge.checkpoint import load_checkpoint, model_from_payload, save_checkpoint
    from stpm_edge.data.mvtec import Sample

    if cfg.epochs < 1:
        raise ConfigError(note(f"--epochs {cfg.epochs}", "expected at least 1"))
    out = check_output(cfg)
    payload = load_checkpoint(cfg.checkpoint)
    extra = marked_images(cfg.extra_good)
    train = original_train(payload)
    repeats = repeats_for(len(train), len(extra), cfg.extra_share)
    extra_samples = [Sample(path=p, label=0, defect_type="good", mask_path=None) for p in extra]
    started = time.perf_counter()
    model = model_from_payload(payload, cfg.checkpoint).to(cfg.device)
    model.eval()
    old_cal = payload["calibration"]
    before_scores = score_paths(model, extra, cfg.device)
    test = labelled_test_set(cfg, payload)
    before_test = labelled_metrics(model, *test, cfg.device) if test else None
    schedule = _fine_tune(model, payload, cfg, train + extra_samples * repeats)
    _refit_posthoc(model, payload, [s.path for s in train] + list(extra), cfg.device)
    new_cal = _calibrate(model, payload, cfg.device, cfg.checkpoint)
    after_scores = score_paths(model, extra, cfg.device)
    after_test = labelled_metrics(model, *test, cfg.device) if test else None
    kept = {k: v for k, v in payload.items() if k not in DROPPED_KEYS}
    kept["tuned_from"] = {
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "extra_good": [str(p) for p in extra],
        "epochs": cfg.epochs,
        "lr": schedule["lr"],
        "repeats": repeats,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, new_cal, **kept)
    report = {
        "checkpoint": str(out),
        "tuned_from": str(cfg.checkpoint),
        "config": asdict(cfg),
        "train_images": len(train),
        "marked_images": len(extra),
        "repeats_per_marked_image": repeats,
        "schedule": schedule,
        "seconds": round(time.perf_counter() - started, 1),
        "calibration_before": old_cal,
        "calibration_after": new_cal,
        "threshold_kept": new_cal.get("source") == "manual",
        "marked": [
            {
                "path": str(p),
                "score_before": float(b),
                "verdict_before": vb,
                "score_after": float(a),
                "verdict_after": va,
            }
            for p, b, a, vb, va in zip(
                extra,
                before_scores,
                after_scores,
                verdicts_of(before_scores, old_cal),
                verdicts_of(after_scores, new_cal),
                strict=True,
            )
        ],
        "test_set": {"data": test[0], "category": test[1]} if test else None,
        "test_before": before_test,
        "test_after": after_test,
    }
    out.with_name(out.name + ".tune.json").write_text(json.dumps(report, indent=2))
    return report


def summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: marked frames OK before/after, test AUROC before/after."""
    marked = report["marked"]
    ok_before = sum(m["verdict_before"] == "OK" for m in marked)
    ok_after = sum(m["verdict_after"] == "OK" for m in marked)
    lines = [
        f"tuned checkpoint: {report['checkpoint']}",
        f"marked frames judged OK: {ok_before}/{len(marked)} before, {ok_after}/{len(marked)} after",
    ]
    if report["test_before"] and report["test_after"]:
        b, a = report["test_before"]["image_auroc"], report["test_after"]["image_auroc"]
        lines.append(f"labelled test set image AUROC: {b:.4f} before, {a:.4f} after")
    if report["threshold_kept"]:
        lines.append("manual threshold kept as set: check the verdicts above")
    lines.append(f"report: {report['checkpoint']}.tune.json")
    return "\n".join(lines)
