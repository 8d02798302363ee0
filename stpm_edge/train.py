"""The training loop: SGD on the student, a validation criterion for checkpoint selection, resume.

Determinism: the student is initialised from ``seed`` and every epoch shuffles with its own
generator seeded from ``(seed, epoch)``, so a run resumed from ``last.ckpt`` draws exactly the
batches the uninterrupted run would have drawn and ends with the same weights.

The recipe knobs (issue 10), each recorded in ``train_config`` and ``train_summary.json``:

- length: ``epochs`` whole passes, or ``steps`` SGD steps (then ``ceil(steps / steps_per_epoch)``
  epochs, the last one possibly partial: the first batches of that epoch's shuffle). Every step's
  learning rate is a function of the global step only (``lr_schedule``: constant or cosine to 0),
  so resuming at an epoch boundary stays exact.
- ``loss_scale``: ``paper`` (``0.5 * ||t̂ - ŝ||²``) or ``official`` (the STFPM code's, twice that).
  The logged train and validation losses are in the paper's scale whatever the setting.
- ``val_criterion``: ``loss`` (validation loss) or ``map_mean`` (the official code's: mean of the
  anomaly map over the validation images); lower is better for both. Only the chosen one is
  computed (``val_loss`` or ``val_map_mean`` in the log and checkpoints): one validation pass per
  epoch, so recipes cost the same.
- ``augment``: ``none``, ``texture`` or ``object``, and ``augment_jpeg``: the share of images seen
  as JPEGs (``stpm_edge.data.augment``). With augmentation the teacher sees a new image every
  step, so its features are not cached.
"""

from __future__ import annotations

import itertools
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
from stpm_edge.choices import (
    COLOUR_MODES,
    DEFAULT_COLOUR_GATE_JPEG,
    DEFAULT_COLOUR_MODE,
    GATE_JPEG_FIX,
    HOST_MEMORY_CHOICES,
    check_gate_jpeg,
)
from stpm_edge.colour_map import SIZE_MULTIPLE as COLOUR_SIZE_MULTIPLE
from stpm_edge.colour_map import check_image_size, fit_for_checkpoint, grids
from stpm_edge.data.augment import AUGMENTATIONS, augments, make_augment
from stpm_edge.errors import ConfigError, note
from stpm_edge.host_memory import apply_host_memory
from stpm_edge.mixed_precision import Autocast, normalise_amp, resolve_autocast
from stpm_edge.model import STPM, ModelConfig
from stpm_edge.outputs import prepare_output_dir
from stpm_edge.run_checkpoints import RunCheckpoints
from stpm_edge.score_baseline import fit_for_checkpoint as fit_baseline

logger = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine")
COLOUR_CHOICES = ("auto", "off", *COLOUR_MODES)
LOSS_SCALES = {"paper": 1.0, "official": 2.0}  # factor on the paper's loss
VAL_CRITERIA = ("loss", "map_mean")


def _share(value: object, flag: str) -> float:
    """``value`` as a probability in [0, 1], else a :class:`ConfigError` naming ``flag``."""
    try:
        share = None if isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        share = None
    if share is None or not 0.0 <= share <= 1.0:
        raise ConfigError(
            note(
                f"{flag} {value!r} is not a share of the images",
                "give a probability from 0 (off) to 1 (every image)",
            )
        )
    return share


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
    steps: int | None = None  # SGD steps; when set, the run's length (``epochs`` is derived)
    batch_size: int = 32
    lr: float = 0.4
    lr_schedule: str = "constant"
    loss_scale: str = "paper"
    val_criterion: str = "loss"
    augment: str = "none"
    augment_jpeg: float = 0.0  # share of training images seen as JPEGs (stpm_edge.data.augment)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # stpm_edge.mixed_precision (older checkpoints hold a bool: normalise_amp)
    host_memory: str = "retain"  # stpm_edge.host_memory: reuse freed activations (same numbers)
    workers: int = 0
    blur_sigma: float = 4.0  # ablation in README: +0.009 pixel AUROC on the demo set
    score_reduction: str = "topk"  # mean of the top 1 % pixels: +0.09 image AUROC vs max
    topk_fraction: float = 0.01
    map_resolution: str = "feature"  # 1/16 of the map tail's work; README "Speed" has the figures
    # fitted after training on the same split (stpm_edge.colour_map); "auto" = local where the
    # image size allows it (colour_mode). Benchmark, seeds 0-2, mean image AUROC: plain 0.769,
    # aligned 0.809, local 0.828 with its gate also set on JPEG copies of the validation images
    # (colour_gate_jpeg; 0.845 without them, but then every JPEG copy of a good photo texture
    # fired it: README, "Colour map").
    colour_map: str = "auto"
    colour_gate_jpeg: int = DEFAULT_COLOUR_GATE_JPEG
    # fitted after the colour map on the training images (stpm_edge.score_baseline). Benchmark,
    # seed 0, scratch: mean image AUROC 0.812 -> 0.840, every category up; the map is unchanged.
    score_baseline: bool = True
    max_train_images: int | None = None
    skip_bad: bool = False
    resume: bool = False
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.amp = normalise_amp(self.amp)
        for flag, value, choices in (
            ("--lr-schedule", self.lr_schedule, LR_SCHEDULES),
            ("--loss-scale", self.loss_scale, tuple(LOSS_SCALES)),
            ("--val-criterion", self.val_criterion, VAL_CRITERIA),
            ("--augment", self.augment, AUGMENTATIONS),
            ("--colour-map", self.colour_map, COLOUR_CHOICES),
            ("--host-memory", self.host_memory, HOST_MEMORY_CHOICES),
        ):
            if value not in choices:
                raise ConfigError(
                    note(f"{flag} {value!r} is unknown", f"use one of: {', '.join(choices)}")
                )
        self.augment_jpeg = _share(self.augment_jpeg, "--augment-jpeg")
        try:
            self.colour_gate_jpeg = check_gate_jpeg(self.colour_gate_jpeg)
        except ValueError as exc:
            raise ConfigError(note(str(exc), GATE_JPEG_FIX)) from exc
        if self.colour_map in COLOUR_MODES:
            check_image_size(self.image_size)  # before training, not after
        if self.steps is not None and (isinstance(self.steps, bool) or self.steps < 1):
            raise ConfigError(
                note(
                    f"--steps {self.steps} is not a number of SGD steps",
                    "give --steps N with N >= 1, or --epochs N instead",
                )
            )

    def colour_mode(self) -> str | None:
        """The colour map this run fits, or ``None``: ``auto`` is ``local`` when the image size
        grids (a multiple of 64), else off, since the user did not ask for it explicitly."""
        if self.colour_map == "auto":
            return DEFAULT_COLOUR_MODE if grids(self.image_size) else None
        return None if self.colour_map == "off" else self.colour_map

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
        """Defaults < YAML file < explicit overrides (``None`` means "not given").

        ``epochs`` and ``steps`` are two ways of saying one thing: a flag for one replaces the
        file's other, and both from the same source is a :class:`ConfigError`.
        """
        values: dict[str, Any] = {}
        if yaml_path:
            values.update(read_yaml_config(Path(yaml_path), {f.name for f in fields(cls)}))
        given = {k: v for k, v in overrides.items() if v is not None}
        for flag, other in (("epochs", "steps"), ("steps", "epochs")):
            if flag in given and other not in given:
                values.pop(other, None)
        values.update(given)
        if values.get("epochs") is not None and values.get("steps") is not None:
            raise ConfigError(
                note(
                    f"both --epochs {values['epochs']} and --steps {values['steps']} given",
                    "give one: --steps N counts SGD steps, --epochs N whole passes over the "
                    "training images",
                )
            )
        return cls(**values)

    def effective(self, schedule: Schedule) -> dict[str, Any]:
        """The settings as ``config.yaml`` records them: ``--config`` of that file repeats the
        run (with ``steps`` set, ``epochs`` is derived and left out)."""
        values = asdict(self)
        if self.steps is not None:
            del values["epochs"]
        return values


@dataclass(frozen=True)
class Schedule:
    """The run's length in SGD steps: every epoch is a full pass except perhaps the last."""

    steps_per_epoch: int
    total_steps: int
    batch_size: int
    num_images: int
    lr_schedule: str = "constant"

    @classmethod
    def of(cls, cfg: TrainConfig, num_images: int) -> Schedule:
        per_epoch = max(1, math.ceil(num_images / cfg.batch_size))  # drop_last=False
        total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
        return cls(per_epoch, total, cfg.batch_size, num_images, cfg.lr_schedule)

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def steps_in(self, epoch: int) -> int:
        """SGD steps of 0-based ``epoch``: a full pass, or the first batches of the last epoch."""
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))

    def steps_before(self, epoch: int) -> int:
        return sum(self.steps_in(e) for e in range(epoch))

    def images_before(self, epoch: int) -> int:
        """Training images seen (with repeats) by the end of ``epoch - 1``."""
        return sum(
            self.num_images
            if self.steps_in(e) == self.steps_per_epoch
            else self.steps_in(e) * self.batch_size
            for e in range(epoch)
        )

    def lr_factor(self, step: int) -> float:
        """Share of the base learning rate at 0-based global ``step``: 1, or cosine from 1 to 0."""
        if self.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * step / self.total_steps))
        return 1.0


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


def train_val_datasets(cfg: TrainConfig, model_cfg: ModelConfig):
    """The recipe's (training, validation) image datasets: its data's good training images split
    by ``cfg.val_fraction`` and ``cfg.seed`` (what ``train`` and the training benchmarks read)."""
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
def validation_loss(
    model: STPM,
    dataset,
    cfg: TrainConfig,
    device: torch.device,
    cache: TeacherFeatureCache | None = None,
) -> float:
    """Mean loss over ``dataset`` (paper scale); ``cache`` keeps the teacher's features of these
    images from one epoch to the next (they are never augmented)."""
    model.eval()
    total, count = 0.0, 0
    for batch in _epoch_loader(dataset, cfg, 0, shuffle=False):
        x = batch["image"].to(device)
        teacher_feats = cache.get(model, x, batch["index"]) if cache is not None else None
        total += float(model.loss(x, teacher_feats)) * len(x)
        count += len(x)
    return total / max(count, 1)


@torch.no_grad()
def validation_map_mean(model: STPM, dataset, cfg: TrainConfig, device: torch.device) -> float:
    """Mean value of the model's anomaly map (``score_map``) over ``dataset``: the official
    STFPM code's checkpoint criterion, lower is better."""
    model.eval()
    total, count = 0.0, 0
    for batch in _epoch_loader(dataset, cfg, 0, shuffle=False):
        amap, _ = model.score_map(batch["image"].to(device))
        total += float(amap.double().mean(dim=(1, 2, 3)).sum())
        count += len(amap)
    return total / max(count, 1)


def _validate(
    model: STPM, dataset, cfg: TrainConfig, device: torch.device, cache: TeacherFeatureCache
) -> dict[str, float]:
    """The criterion's value, ``{"val_loss": ...}`` or ``{"val_map_mean": ...}``: one pass over
    the validation images per epoch whatever the criterion, so recipes cost the same."""
    if cfg.val_criterion == "map_mean":
        return {"val_map_mean": validation_map_mean(model, dataset, cfg, device)}
    return {"val_loss": validation_loss(model, dataset, cfg, device, cache)}


def _criterion_key(cfg: TrainConfig) -> str:
    return "val_loss" if cfg.val_criterion == "loss" else "val_map_mean"


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
    host_memory = apply_host_memory(cfg.host_memory)
    model_cfg = cfg.model_config()
    torch.manual_seed(cfg.seed)
    model = STPM(model_cfg).to(device)
    optimizer = torch.optim.SGD(
        model.student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    autocast = resolve_autocast(cfg.amp, device)
    scaler = autocast.grad_scaler()
    train_set, val_set = train_val_datasets(cfg, model_cfg)
    schedule = Schedule.of(cfg, len(train_set))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.effective(schedule), sort_keys=False))
    start_epoch, best = 0, math.inf
    if cfg.resume and (out / "last.ckpt").exists():
        start_epoch, best = _restore(out / "last.ckpt", model, optimizer, cfg)
        logger.info("resumed %s at epoch %d", out / "last.ckpt", start_epoch)
    logger.info(
        "training %s on %d images (%d for validation), %d SGD steps = %d epochs of %d steps "
        "(lr %s, loss %s, best by %s, augment %s), device %s, autocast %s, host memory %s",
        cfg.backbone,
        len(train_set),
        len(val_set),
        schedule.total_steps,
        schedule.epochs,
        schedule.steps_per_epoch,
        cfg.lr_schedule,
        cfg.loss_scale,
        cfg.val_criterion,
        cfg.augment,
        device,
        autocast.name,
        host_memory,
    )
    cache = teacher_cache(cfg, model, len(train_set))
    val_cache = TeacherFeatureCache(model, len(val_set))
    checkpoints = RunCheckpoints(out)
    for epoch in range(start_epoch, schedule.epochs):
        train_loss, ips = train_epoch(
            model, optimizer, scaler, train_set, cfg, epoch, device, autocast, cache, schedule
        )
        val = _validate(model, val_set, cfg, device, val_cache)
        improved = val[_criterion_key(cfg)] < best
        best = min(best, val[_criterion_key(cfg)])
        fields_ = {
            "epoch": epoch,
            **val,
            "val_criterion": cfg.val_criterion,
            "best_val": best,
            "steps_done": schedule.steps_before(epoch + 1),
            "images_seen": schedule.images_before(epoch + 1),
            "train_config": asdict(cfg),
        }
        if improved:
            checkpoints.improved(model, fields_)
        checkpoints.epoch_done(model, optimizer, fields_, final=epoch + 1 == schedule.epochs)
        _log_epoch(out, epoch, train_loss, val, ips, improved, schedule)
    best_ckpt = _calibrate_best(out, val_set, cfg, device)
    _write_summary(out, cfg, schedule, cache, autocast, host_memory)
    return best_ckpt


def teacher_cache(cfg: TrainConfig, model: STPM, num_images: int) -> TeacherFeatureCache | None:
    """The teacher-feature cache, or ``None`` with augmentation: an augmented image is a new image
    every epoch, so a cached feature would belong to another picture."""
    if augments(cfg.augment, cfg.augment_jpeg):
        return None
    return TeacherFeatureCache(model, num_images)


def _write_summary(
    out: Path,
    cfg: TrainConfig,
    schedule: Schedule,
    cache: TeacherFeatureCache | None,
    autocast: Autocast,
    host_memory: str,
) -> None:
    """``train_summary.json``: the recipe as run, its length and the chosen epoch (1-based)."""
    best = load_checkpoint(out / "best.ckpt")
    summary = {
        "steps_done": schedule.total_steps,
        "epochs": schedule.epochs,
        "steps_per_epoch": schedule.steps_per_epoch,
        "images_seen": schedule.images_before(schedule.epochs),
        "train_images": schedule.num_images,
        "batch_size": schedule.batch_size,
        "lr": cfg.lr,
        "lr_schedule": cfg.lr_schedule,
        "loss_scale": cfg.loss_scale,
        "val_criterion": cfg.val_criterion,
        "augment": cfg.augment,
        "augment_jpeg": cfg.augment_jpeg,
        "autocast": autocast.name,  # what --amp resolved to on this device
        "host_memory": host_memory,  # what --host-memory resolved to in this process
        "teacher_cache": bool(cache is not None and cache.enabled),
        "best_epoch": int(best["epoch"]) + 1,
        "best_val": float(best.get("best_val", best.get("best_val_loss", math.nan))),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info(
        "done: %d SGD steps, %d epochs, %d images seen; best epoch %d (%s %.4g)",
        summary["steps_done"],
        summary["epochs"],
        summary["images_seen"],
        summary["best_epoch"],
        cfg.val_criterion,
        summary["best_val"],
    )


class TeacherFeatureCache:
    """Teacher features per training image, computed once: the teacher is frozen and, without
    augmentation, sees the same images every epoch, so later epochs skip it (``images_per_s`` in
    ``train_log.jsonl`` shows the gain). Disabled when the features would not fit ``budget_mb``;
    never built with augmentation (:func:`teacher_cache`)."""

    def __init__(self, model: STPM, num_images: int, budget_mb: float = 2048.0) -> None:
        from stpm_edge.backbones import get_backbone_spec

        spec, size = get_backbone_spec(model.config.backbone), model.config.image_size
        floats_per_image = sum(s.num_chs * (size // s.reduction) ** 2 for s in spec.stages)
        self.enabled = num_images * floats_per_image * 4 / 2**20 <= budget_mb
        self._store: dict[int, list[torch.Tensor]] = {}
        self._layout = torch.contiguous_format

    def get(self, model: STPM, x: torch.Tensor, indices: torch.Tensor) -> list[torch.Tensor]:
        """Teacher features of the batch ``x`` whose dataset indices are ``indices``, in the
        memory layout the teacher gives: the loss's channel sums round differently over NCHW and
        NHWC memory, and a resumed run (fresh features) must match an uninterrupted one (cached)."""
        keys = [int(i) for i in indices]
        if self.enabled and all(k in self._store for k in keys):
            levels = len(self._store[keys[0]])
            return [
                torch.stack([self._store[k][level] for k in keys]).contiguous(
                    memory_format=self._layout
                )
                for level in range(levels)
            ]
        with torch.no_grad():
            feats = model.teacher(x)
        if feats[0].is_contiguous(memory_format=torch.channels_last):
            self._layout = torch.channels_last
        if self.enabled:
            for row, key in enumerate(keys):
                self._store[key] = [f[row].detach().clone() for f in feats]
        return feats


def train_epoch(
    model, optimizer, scaler, dataset, cfg, epoch, device, autocast, cache=None, schedule=None
) -> tuple[float, float]:
    """One epoch: (mean train loss in the paper's scale, images per second).

    With ``schedule`` (``train``) the epoch has ``schedule.steps_in(epoch)`` steps and every
    step's learning rate is ``cfg.lr`` times the schedule's factor at the global step; without it
    (``stpm-tune``) the epoch is a full pass at the optimizer's own learning rate.
    """
    from tqdm import tqdm

    augment = make_augment(
        cfg.augment, cfg.seed, model.config.mean, model.config.std, cfg.augment_jpeg
    )
    assert augment is None or cache is None, "augmented images must not use cached features"
    scale = LOSS_SCALES[cfg.loss_scale]
    model.train()
    loader = _epoch_loader(dataset, cfg, epoch, shuffle=True)
    steps = schedule.steps_in(epoch) if schedule is not None else len(loader)
    first_step = schedule.steps_before(epoch) if schedule is not None else 0
    epochs = schedule.epochs if schedule is not None else cfg.epochs
    bar = tqdm(
        itertools.islice(loader, steps),
        total=steps,
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="batch",
        disable=not cfg.progress,
        leave=False,
    )
    total, count, start = 0.0, 0, time.perf_counter()
    for step, batch in enumerate(bar, start=first_step):
        if schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * schedule.lr_factor(step)
        x = batch["image"].to(device, non_blocking=True)
        if augment is not None:
            x = augment(x, batch["index"], epoch)
        # cached teacher features are computed once, in float32 (mixed_precision's doc)
        teacher_feats = cache.get(model, x, batch["index"]) if cache is not None else None
        with autocast.context():
            loss = model.loss(x, teacher_feats, scale)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) / scale * len(x)
        count += len(x)
        ips = count / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{ips:.1f}")
    return total / max(count, 1), count / max(time.perf_counter() - start, 1e-9)


def _log_epoch(
    out: Path,
    epoch: int,
    train_loss: float,
    val: dict[str, float],
    ips: float,
    improved: bool,
    schedule: Schedule,
) -> None:
    last_step = schedule.steps_before(epoch + 1) - 1
    record = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        **val,
        "images_per_s": ips,
        "best": improved,
        "steps": last_step + 1,
        "images_seen": schedule.images_before(epoch + 1),
        "lr_factor": schedule.lr_factor(last_step),  # of the epoch's last step
    }
    with open(out / "train_log.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    ((key, value),) = val.items()
    logger.info(
        "epoch %d/%d (%d steps): train loss %.4f, %s %.4g, %.1f img/s%s",
        epoch + 1,
        schedule.epochs,
        last_step + 1,
        train_loss,
        key.replace("_", " "),
        value,
        ips,
        " (best)" if improved else "",
    )


def _restore(
    path: Path, model: STPM, optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> tuple[int, float]:
    """Load ``last.ckpt``: (next epoch, best criterion value so far)."""
    payload = load_checkpoint(path)
    recorded = payload.get("val_criterion", "loss")  # checkpoints before the option: loss
    if recorded != cfg.val_criterion:
        raise ConfigError(
            note(
                f"{path} was trained with --val-criterion {recorded}, not {cfg.val_criterion}",
                f"resume with --val-criterion {recorded}, or start a new run with --force",
            )
        )
    model.student.load_state_dict(payload["student"])
    optimizer.load_state_dict(payload["optimizer"])
    best = payload.get("best_val", payload.get("best_val_loss"))
    return int(payload["epoch"]) + 1, float(best)


def _calibrate_best(out: Path, val_set, cfg: TrainConfig, device: torch.device) -> Path:
    from stpm_edge.checkpoint import model_from_payload

    best = out / "best.ckpt"
    payload = load_checkpoint(best)
    model = model_from_payload(payload, str(best)).to(device)
    extra = {
        k: v
        for k, v in payload.items()
        if k not in ("format", "config", "teacher", "student", "calibration", "versions")
    }
    # the held-out images travel by path, so an exported FP16/INT8 graph can be re-calibrated on them
    extra["val_paths"] = [str(Path(s.path).resolve()) for s in val_set.samples]
    mode = cfg.colour_mode()
    if mode is not None:  # post hoc: the run's training split, scaled on its validation
        model.colour = fit_for_checkpoint(
            {**payload, **extra}, model, mode, device, gate_jpeg=cfg.colour_gate_jpeg
        )
    elif cfg.colour_map == "auto":
        logger.info(
            "colour map off: --image-size %d is not a multiple of %d (it needs one)",
            cfg.image_size,
            COLOUR_SIZE_MULTIPLE,
        )
    if cfg.score_baseline:  # on the map as scored, colour map included
        model.baseline = fit_baseline(
            {**payload, **extra}, model, device, batch_size=cfg.batch_size
        )
    calibration = calibrate_from_good(*scores_of(model, val_set, cfg, device))
    save_checkpoint(best, model, calibration, **extra)
    logger.info(
        "calibrated on %d validation images: image threshold %.4g",
        len(val_set),
        calibration["image_threshold"],
    )
    return best
