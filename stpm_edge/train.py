"""The training loop: SGD on the student, validation loss for checkpoint selection, resume.

Determinism: the student is initialised from ``seed`` and every epoch shuffles with its own
generator seeded from ``(seed, epoch)``, so a run resumed from ``last.ckpt`` draws exactly the
batches the uninterrupted run would have drawn and ends with the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from stpm_edge.calibration import calibrate_from_good
from stpm_edge.checkpoint import load_checkpoint, save_checkpoint
from stpm_edge.errors import ConfigError, note
from stpm_edge.model import STPM, ModelConfig
from stpm_edge.outputs import prepare_output_dir

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every training setting; the defaults are the paper's recipe."""

    data: str = ""
    category: str | None = None
    out: str = "runs/stpm"
    backbone: str = "efficientnet_lite0"
    image_size: int = 256
    teacher_weights: str = "pretrained"
    epochs: int = 100
    batch_size: int = 32
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    workers: int = 0
    blur_sigma: float = 4.0  # ablation in README: +0.009 pixel AUROC on the demo set
    score_reduction: str = "topk"  # mean of the top 1 % pixels: +0.09 image AUROC vs max
    topk_fraction: float = 0.01
    map_resolution: str = "feature"  # 1/16 of the map tail's work; README "Speed" has the figures
    max_train_images: int | None = None
    skip_bad: bool = False
    resume: bool = False
    force: bool = False
    progress: bool = True

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            backbone=self.backbone,
            image_size=self.image_size,
            teacher_weights=self.teacher_weights,
            blur_sigma=self.blur_sigma,
            score_reduction=self.score_reduction,
            topk_fraction=self.topk_fraction,
            map_resolution=self.map_resolution,
        )

    @classmethod
    def from_sources(cls, yaml_path: str | None = None, **overrides: Any) -> TrainConfig:
        """Defaults < YAML file < explicit overrides (``None`` means "not given")."""
        values: dict[str, Any] = {}
        if yaml_path:
            values.update(read_yaml_config(Path(yaml_path), {f.name for f in fields(cls)}))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def read_yaml_config(path: Path, known: set[str]) -> dict[str, Any]:
    """A YAML mapping of TrainConfig fields (dashes or underscores), checked against ``known``."""
    if not path.is_file():
        raise ConfigError(
            note(f"config file not found: {path}", "pass an existing YAML file to --config")
        )
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(
            note(f"config file {path} is not valid YAML", str(exc).splitlines()[0])
        ) from exc
    if not isinstance(loaded, dict):
        raise ConfigError(
            note(f"config file {path} must hold a mapping", f"got {type(loaded).__name__}")
        )
    values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            note(
                f"config file {path} has unknown keys: {', '.join(unknown)}",
                f"known keys: {', '.join(sorted(known))}",
            )
        )
    return values


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            note(
                f"--device {name} asked for, but CUDA is not available", "use --device cpu or auto"
            )
        )
    return torch.device(name)


def _loaders(cfg: TrainConfig, model_cfg: ModelConfig):
    from stpm_edge.data import load_training_source, split_train_val
    from stpm_edge.data.torch_dataset import ImageDataset

    samples = load_training_source(cfg.data, cfg.category, skip_bad=cfg.skip_bad).train_good()
    train, val = split_train_val(samples, cfg.val_fraction, cfg.seed)
    if cfg.max_train_images:
        train = train[: cfg.max_train_images]
    make = lambda s: ImageDataset(
        s, model_cfg.image_size, model_cfg.mean, model_cfg.std, cache=True
    )  # noqa: E731
    return make(train), make(val)


def _epoch_loader(dataset, cfg: TrainConfig, epoch: int, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=cfg.workers,
        drop_last=False,
    )


@torch.no_grad()
def validation_loss(model: STPM, dataset, cfg: TrainConfig, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in _epoch_loader(dataset, cfg, 0, shuffle=False):
        x = batch["image"].to(device)
        total += float(model.loss(x)) * len(x)
        count += len(x)
    return total / max(count, 1)


@torch.no_grad()
def scores_of(
    model: STPM, dataset, cfg: TrainConfig, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores (N,) and anomaly-map peaks (N,) of ``dataset``, in order."""
    model.eval()
    scores, peaks = [], []
    for batch in _epoch_loader(dataset, cfg, 0, shuffle=False):
        amap, score = model.score_map(batch["image"].to(device))
        scores.append(score.cpu().numpy())
        peaks.append(amap.flatten(1).amax(dim=1).cpu().numpy())
    return np.concatenate(scores), np.concatenate(peaks)


def _prepare_out_dir(cfg: TrainConfig) -> Path:
    return prepare_output_dir(
        cfg.out,
        cfg.resume or cfg.force,
        "pass --resume to continue the run, --force to overwrite, or another --out",
    )


def train(cfg: TrainConfig) -> Path:
    """Train STPM as configured; returns the path of ``best.ckpt`` (calibrated)."""
    out = _prepare_out_dir(cfg)
    device = resolve_device(cfg.device)
    model_cfg = cfg.model_config()
    torch.manual_seed(cfg.seed)
    model = STPM(model_cfg).to(device)
    optimizer = torch.optim.SGD(
        model.student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    train_set, val_set = _loaders(cfg, model_cfg)
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    start_epoch, best_loss = 0, math.inf
    if cfg.resume and (out / "last.ckpt").exists():
        start_epoch, best_loss = _restore(out / "last.ckpt", model, optimizer)
        logger.info("resumed %s at epoch %d", out / "last.ckpt", start_epoch)
    logger.info(
        "training %s on %d images (%d for validation), %d epochs, device %s",
        cfg.backbone,
        len(train_set),
        len(val_set),
        cfg.epochs,
        device,
    )
    cache = TeacherFeatureCache(model, len(train_set))
    for epoch in range(start_epoch, cfg.epochs):
        train_loss, ips = _train_epoch(
            model, optimizer, scaler, train_set, cfg, epoch, device, use_amp, cache
        )
        val_loss = validation_loss(model, val_set, cfg, device)
        improved = val_loss < best_loss
        best_loss = min(best_loss, val_loss)
        fields_ = {
            "epoch": epoch,
            "val_loss": val_loss,
            "best_val_loss": best_loss,
            "train_config": asdict(cfg),
        }
        if improved:
            save_checkpoint(out / "best.ckpt", model, None, **fields_)
        save_checkpoint(out / "last.ckpt", model, None, optimizer=optimizer.state_dict(), **fields_)
        _log_epoch(out, epoch, train_loss, val_loss, ips, improved)
    return _calibrate_best(out, val_set, cfg, device)


class TeacherFeatureCache:
    """Teacher features per training image, computed once: the teacher is frozen and training uses
    no augmentation, so later epochs skip the teacher (``images_per_s`` in ``train_log.jsonl``
    shows the gain). Disabled when the features would not fit ``budget_mb``."""

    def __init__(self, model: STPM, num_images: int, budget_mb: float = 2048.0) -> None:
        from stpm_edge.backbones import get_backbone_spec

        spec, size = get_backbone_spec(model.config.backbone), model.config.image_size
        floats_per_image = sum(s.num_chs * (size // s.reduction) ** 2 for s in spec.stages)
        self.enabled = num_images * floats_per_image * 4 / 2**20 <= budget_mb
        self._store: dict[int, list[torch.Tensor]] = {}

    def get(self, model: STPM, x: torch.Tensor, indices: torch.Tensor) -> list[torch.Tensor]:
        """Teacher features of the batch ``x`` whose dataset indices are ``indices``."""
        keys = [int(i) for i in indices]
        if self.enabled and all(k in self._store for k in keys):
            levels = len(self._store[keys[0]])
            return [torch.stack([self._store[k][level] for k in keys]) for level in range(levels)]
        with torch.no_grad():
            feats = model.teacher(x)
        if self.enabled:
            for row, key in enumerate(keys):
                self._store[key] = [f[row].detach().clone() for f in feats]
        return feats


def _train_epoch(
    model, optimizer, scaler, dataset, cfg, epoch, device, use_amp, cache=None
) -> tuple[float, float]:
    from tqdm import tqdm

    model.train()
    loader = _epoch_loader(dataset, cfg, epoch, shuffle=True)
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        disable=not cfg.progress,
        leave=False,
    )
    total, count, start = 0.0, 0, time.perf_counter()
    for batch in bar:
        x = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            teacher_feats = cache.get(model, x, batch["index"]) if cache is not None else None
            loss = model.loss(x, teacher_feats)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(x)
        count += len(x)
        ips = count / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{ips:.1f}")
    return total / max(count, 1), count / max(time.perf_counter() - start, 1e-9)


def _log_epoch(
    out: Path, epoch: int, train_loss: float, val_loss: float, ips: float, improved: bool
) -> None:
    record = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "images_per_s": ips,
        "best": improved,
    }
    with open(out / "train_log.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    logger.info(
        "epoch %d: train loss %.4f, val loss %.4f, %.1f img/s%s",
        epoch + 1,
        train_loss,
        val_loss,
        ips,
        " (best)" if improved else "",
    )


def _restore(path: Path, model: STPM, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    payload = load_checkpoint(path)
    model.student.load_state_dict(payload["student"])
    optimizer.load_state_dict(payload["optimizer"])
    return int(payload["epoch"]) + 1, float(payload["best_val_loss"])


def _calibrate_best(out: Path, val_set, cfg: TrainConfig, device: torch.device) -> Path:
    from stpm_edge.checkpoint import model_from_payload

    best = out / "best.ckpt"
    payload = load_checkpoint(best)
    model = model_from_payload(payload, str(best)).to(device)
    calibration = calibrate_from_good(*scores_of(model, val_set, cfg, device))
    extra = {
        k: v
        for k, v in payload.items()
        if k not in ("format", "config", "teacher", "student", "calibration", "versions")
    }
    # the held-out images travel by path, so an exported FP16/INT8 graph can be re-calibrated on them
    extra["val_paths"] = [str(Path(s.path).resolve()) for s in val_set.samples]
    save_checkpoint(best, model, calibration, **extra)
    logger.info(
        "calibrated on %d validation images: image threshold %.4g",
        len(val_set),
        calibration["image_threshold"],
    )
    return best
