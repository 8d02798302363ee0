"""The training-recipe knobs of issue 10: --steps, --lr-schedule, --loss-scale, --val-criterion,
--augment. Tiny runs (32 px, 8 training images = two batches of 4 per epoch, random teacher)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import stpm_edge.data.augment as aug
import stpm_edge.run_checkpoints as run_checkpoints
import stpm_edge.train as train_mod
from stpm_edge.checkpoint import load_checkpoint
from stpm_edge.cli.train import main as train_main
from stpm_edge.errors import ConfigError
from stpm_edge.model import STPM, ModelConfig
from stpm_edge.train import Schedule, TrainConfig, train


def tiny(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        data=str(data),
        category="brick",
        out=str(out),
        image_size=32,
        batch_size=4,
        max_train_images=8,
        teacher_weights="random",
        device="cpu",
        seed=3,
        progress=False,
    )
    return TrainConfig(**{**values, **overrides})


class CountingSGD(torch.optim.SGD):
    """SGD that records the learning rate of every step it takes."""

    lrs: list[float] = []

    def step(self, closure=None):
        CountingSGD.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.fixture
def counting_sgd(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    CountingSGD.lrs = []
    monkeypatch.setattr(torch.optim, "SGD", CountingSGD)
    return CountingSGD.lrs


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def students_equal(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a)["student"], load_checkpoint(b)["student"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- schedule ------------------------------------------------------------------------------------
def test_steps_takes_exactly_n_sgd_steps_with_a_partial_last_epoch(
    demo_data, tmp_path: Path, counting_sgd: list[float]
) -> None:
    out = tmp_path / "run"
    train(tiny(demo_data.root, out, steps=3, lr=0.4, lr_schedule="cosine"))
    assert len(counting_sgd) == 3  # 2 steps per epoch: one full epoch, then one step
    # cosine over 3 steps: lr * 0.5 * (1 + cos(pi * i / 3))
    assert counting_sgd == pytest.approx([0.4, 0.3, 0.1])
    last = load_checkpoint(out / "last.ckpt")
    assert (last["epoch"], last["steps_done"], last["images_seen"]) == (1, 3, 12)
    assert [(r["epoch"], r["steps"], r["images_seen"]) for r in log_records(out)] == [
        (1, 2, 8),
        (2, 3, 12),
    ]
    summary = json.loads((out / "train_summary.json").read_text())
    assert {k: summary[k] for k in ("steps_done", "epochs", "steps_per_epoch", "images_seen")} == {
        "steps_done": 3,
        "epochs": 2,
        "steps_per_epoch": 2,
        "images_seen": 12,
    }
    assert summary["lr_schedule"] == "cosine" and summary["teacher_cache"] is True
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["steps"] == 3 and "epochs" not in saved  # re-feedable with --config
    assert TrainConfig.from_sources(str(out / "config.yaml")).steps == 3


def test_epochs_keep_todays_constant_full_passes(
    demo_data, tmp_path: Path, counting_sgd: list[float]
) -> None:
    train(tiny(demo_data.root, tmp_path / "run", epochs=2, lr=0.3))
    assert counting_sgd == [0.3] * 4


def test_cosine_factors() -> None:
    s = Schedule(steps_per_epoch=2, total_steps=4, batch_size=4, num_images=8, lr_schedule="cosine")
    assert [s.lr_factor(i) for i in range(4)] == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    )
    constant = Schedule(2, 4, 4, 8, "constant")
    assert [constant.lr_factor(i) for i in range(4)] == [1.0] * 4
    odd = Schedule(steps_per_epoch=3, total_steps=7, batch_size=4, num_images=10)
    assert (odd.epochs, [odd.steps_in(e) for e in range(3)]) == (3, [3, 3, 1])
    assert odd.images_before(3) == 10 + 10 + 4


class Interrupted(Exception):
    pass


def test_resume_mid_run_with_steps_matches_the_uninterrupted_run(
    demo_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cosine + texture augmentation: the learning rate and the draws must depend on the global
    # step and (seed, epoch) only, not on what the process did before
    recipe = dict(steps=5, lr_schedule="cosine", augment="texture")
    full = tmp_path / "full"
    train(tiny(demo_data.root, full, **recipe))

    log_epoch = train_mod._log_epoch

    def stop_after_first_epoch(out, epoch, *args) -> None:
        log_epoch(out, epoch, *args)
        raise Interrupted  # killed right after last.ckpt of epoch 1 was written

    part = tmp_path / "part"
    with monkeypatch.context() as m:
        m.setattr(train_mod, "_log_epoch", stop_after_first_epoch)
        m.setattr(run_checkpoints, "EVERY_S", 0.0)  # epochs as long as the write interval
        with pytest.raises(Interrupted):
            train(tiny(demo_data.root, part, **recipe))
    assert load_checkpoint(part / "last.ckpt")["steps_done"] == 2
    train(tiny(demo_data.root, part, resume=True, **recipe))
    assert load_checkpoint(part / "last.ckpt")["steps_done"] == 5
    assert students_equal(full / "last.ckpt", part / "last.ckpt")
    assert [r["steps"] for r in log_records(part)] == [2, 4, 5]


def test_steps_and_epochs_are_exclusive(demo_data, tmp_path: Path, capsys) -> None:
    args = ["--data", str(demo_data.root), "--category", "brick", "--out", str(tmp_path / "o")]
    assert train_main([*args, "--epochs", "2", "--steps", "10"]) == 2
    err = capsys.readouterr().err
    assert "both --epochs 2 and --steps 10" in err and "Note:" in err
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"epochs": 3, "steps": 10}))
    with pytest.raises(ConfigError, match="both --epochs"):
        TrainConfig.from_sources(str(both))
    one = tmp_path / "steps.yaml"
    one.write_text(yaml.safe_dump({"steps": 10}))
    assert TrainConfig.from_sources(str(one), epochs=4).steps is None  # the flag wins
    assert TrainConfig.from_sources(str(both), steps=7).steps == 7


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("lr_schedule", "linear", "--lr-schedule"),
        ("loss_scale", "anomalib", "--loss-scale"),
        ("val_criterion", "auroc", "--val-criterion"),
        ("augment", "flip", "--augment"),
        ("augment_jpeg", 1.5, "--augment-jpeg"),
        ("steps", 0, "--steps"),
    ],
)
def test_bad_values_name_the_flag(field: str, value, flag: str, capsys) -> None:
    with pytest.raises(ConfigError, match=f"{flag} .*\n  Note: "):
        TrainConfig(**{field: value})
    assert train_main([flag, str(value), "--data", "x"]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Note:" in err and "Traceback" not in err


# -- loss scale ----------------------------------------------------------------------------------
def test_official_loss_is_twice_the_paper_loss_on_the_same_batch() -> None:
    torch.manual_seed(0)
    model = STPM(ModelConfig(image_size=32, teacher_weights="random"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        paper = model.loss(x, scale=train_mod.LOSS_SCALES["paper"])
        official = model.loss(x, scale=train_mod.LOSS_SCALES["official"])
    assert float(paper) > 0
    assert float(official) == pytest.approx(2 * float(paper), rel=1e-6)


def test_official_loss_at_half_the_lr_takes_the_paper_step(demo_data, tmp_path: Path) -> None:
    """Without weight decay, SGD on 2 x loss at lr / 2 is SGD on the loss at lr: the scale
    reaches the gradient (and nothing else differs)."""
    common = dict(steps=2, weight_decay=0.0)
    train(tiny(demo_data.root, tmp_path / "paper", lr=0.4, **common))
    train(tiny(demo_data.root, tmp_path / "off", lr=0.2, loss_scale="official", **common))
    a = load_checkpoint(tmp_path / "paper" / "last.ckpt")
    b = load_checkpoint(tmp_path / "off" / "last.ckpt")
    for key, value in a["student"].items():
        assert torch.allclose(value.float(), b["student"][key].float(), atol=1e-6), key
    assert b["train_config"]["loss_scale"] == "official"
    # the logged losses are in the paper's scale whatever the setting
    la, lb = log_records(tmp_path / "paper"), log_records(tmp_path / "off")
    assert lb[0]["train_loss"] == pytest.approx(la[0]["train_loss"], rel=1e-5)
    assert lb[0]["val_loss"] == pytest.approx(la[0]["val_loss"], rel=1e-5)
    # and differs from an official run at the same lr (the guard against "scale ignored")
    train(tiny(demo_data.root, tmp_path / "off4", lr=0.4, loss_scale="official", **common))
    c = load_checkpoint(tmp_path / "off4" / "last.ckpt")["student"]
    assert any(not torch.allclose(a["student"][k].float(), c[k].float()) for k in c)


# -- validation criterion ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("criterion", "best_epoch", "flags"),
    [("map_mean", 1, [True, True, False]), ("loss", 2, [True, True, True])],
)
def test_val_criterion_picks_the_epoch_with_the_lowest_value(
    demo_data,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    criterion: str,
    best_epoch: int,
    flags: list[bool],
) -> None:
    # scripted values: the validation loss falls every epoch, the map mean is lowest at epoch 2
    losses, map_means = iter([0.3, 0.2, 0.1]), iter([0.5, 0.1, 0.4])
    monkeypatch.setattr(train_mod, "validation_loss", lambda *a: next(losses))
    monkeypatch.setattr(train_mod, "validation_map_mean", lambda *a: next(map_means))
    out = tmp_path / "run"
    train(tiny(demo_data.root, out, epochs=3, val_criterion=criterion))
    best = load_checkpoint(out / "best.ckpt")
    assert best["epoch"] == best_epoch and best["val_criterion"] == criterion
    assert [r["best"] for r in log_records(out)] == flags
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["best_epoch"] == best_epoch + 1
    assert summary["best_val"] == {"map_mean": 0.1, "loss": 0.1}[criterion]


def test_recorded_map_mean_is_the_mean_of_the_models_maps(demo_data, tmp_path: Path) -> None:
    """best.ckpt's val_map_mean, recomputed: the saved model's score_map on its validation
    images (read with the runtime's image module), averaged over pixels and images."""
    from stpm_edge.checkpoint import model_from_payload
    from stpm_edge.runtime.image import normalize, read_image, resize_image

    out = tmp_path / "run"
    train(tiny(demo_data.root, out, epochs=1, val_criterion="map_mean"))
    payload = load_checkpoint(out / "best.ckpt")
    model, cfg = model_from_payload(payload), payload["config"]
    images = [resize_image(read_image(p), cfg["image_size"]) for p in payload["val_paths"]]
    x = torch.from_numpy(np.stack([normalize(rgb, cfg["mean"], cfg["std"]) for rgb in images]))
    amap, _ = model.score_map(x)
    assert len(images) >= 2
    assert payload["val_map_mean"] == pytest.approx(float(amap.double().mean()), rel=1e-5)
    assert payload["best_val"] == payload["val_map_mean"]
    assert "val_loss" not in payload  # one validation pass per epoch: the criterion's
    assert set(log_records(out)[0]) >= {"val_map_mean", "train_loss", "steps", "images_seen"}


def test_resume_refuses_another_criterion(demo_data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny(demo_data.root, out, epochs=1))
    with pytest.raises(ConfigError, match="--val-criterion loss"):
        train(tiny(demo_data.root, out, epochs=2, resume=True, val_criterion="map_mean"))


# -- augmentation --------------------------------------------------------------------------------
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # EfficientNet-Lite0's: normalised range [-1, 1]


def batch(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.arange(n)


@pytest.mark.parametrize("kind", ["texture", "object"])
def test_augmentation_is_a_function_of_seed_epoch_and_image(kind: str) -> None:
    x, idx = batch()
    a = aug.Augment(kind, seed=1, mean=MEAN, std=STD)
    first = a(x, idx, epoch=2)
    assert torch.equal(first, aug.Augment(kind, 1, MEAN, STD)(x, idx, 2))  # a fresh process
    assert torch.equal(first[3:5], a(x[3:5], idx[3:5], 2))  # batch composition is irrelevant
    assert not torch.equal(first, a(x, idx, 3))
    assert not torch.equal(first, aug.Augment(kind, 2, MEAN, STD)(x, idx, 2))
    assert aug.make_augment("none", 1, MEAN, STD) is None


def test_jpeg_augmentation_is_a_round_trip_after_the_kinds_own_draws() -> None:
    """--augment-jpeg P: with P = 1 every image is the JPEG round trip (quality 70-95) of what the
    kind made of it, the kind's own draws unchanged; P = 0 with kind none is no augmentation."""
    from stpm_edge.runtime.image import jpeg_round_trip

    x, idx = batch(4, 64)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    textured = aug.Augment("texture", 3, MEAN, STD)(x, idx, 1)
    both = aug.Augment("texture", 3, MEAN, STD, jpeg=1.0)(x, idx, 1)
    assert both.shape == x.shape and not torch.equal(both, textured)
    pixels = ((textured * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    qualities = [jpeg_round_trip(pixels.permute(0, 2, 3, 1).numpy(), q) for q in range(70, 96)]
    for k, image in enumerate(both):
        got = ((image * std + mean) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert any(np.array_equal(got, q[k]) for q in qualities)  # one quality of the range
    alone = aug.make_augment("none", 3, MEAN, STD, jpeg=1.0)
    assert alone is not None and torch.equal(alone(x, idx, 1), alone(x, idx, 1))
    assert aug.make_augment("none", 3, MEAN, STD, jpeg=0.0) is None
    many, many_idx = batch(16, 32)
    half = aug.Augment("none", 3, MEAN, STD, jpeg=0.5)(many, many_idx, 1)
    kept = sum(torch.equal(a, b) for a, b in zip(half, many, strict=True))
    assert 0 < kept < 16  # seeded draws: some images as they are, some as JPEGs
    with pytest.raises(ConfigError, match="--augment-jpeg 'high' is not a share"):
        TrainConfig(augment_jpeg="high")  # a config file's value


def test_texture_flips_and_turns_change_the_tensor_but_not_its_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aug, "TEXTURE_MIN_CROP", 1.0)  # flips and 90-degree turns only
    x, idx = batch(8)
    out = aug.Augment("texture", 0, MEAN, STD)(x, idx, 0)
    changed = 0
    for image, result in zip(x, out, strict=True):
        variants = [
            torch.rot90(f, k, dims=(-2, -1)) for f in (image, image.flip(-1)) for k in range(4)
        ]
        assert any(torch.equal(result, v) for v in variants)  # a flip/turn of the image itself
        changed += not torch.equal(result, image)
    assert changed >= 4  # 15 of 16 draws move pixels


def test_texture_crop_resize_stays_in_range() -> None:
    x, idx = batch(8)
    out = aug.Augment("texture", 0, MEAN, STD)(x, idx, 0)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= x.min() and out.max() <= x.max()
    assert not torch.equal(out, x)


def test_object_mode_is_small_photometric_jitter_and_a_tiny_shift() -> None:
    size = 64
    limit = max(1, round(size * aug.OBJECT_MAX_SHIFT))
    pixels = torch.full((8, 3, size, size), 0.5)
    pixels[:, :, 32, 32] = 1.0  # one bright dot: where it goes is the shift
    x = (pixels - 0.5) / 0.5
    out = aug.Augment("object", 0, MEAN, STD)(x, torch.arange(8), 0)
    assert out.shape == x.shape and out.min() >= -1.0 and out.max() <= 1.0
    back = out * 0.5 + 0.5
    grey = back[:, :, 0, 0]  # a background pixel: 0.5 after brightness and contrast
    assert ((grey - 0.5).abs() <= 0.5 * (1.09 * 1.09 - 1) + 1e-6).all()
    assert len({round(float(g), 5) for g in grey[:, 0]}) > 1  # drawn per image
    shifts = set()
    for image in back:
        row, col = divmod(int(image[0].argmax()), size)
        assert abs(row - 32) <= limit and abs(col - 32) <= limit
        shifts.add((row - 32, col - 32))
    assert len(shifts) > 1


def test_augmentation_bypasses_the_teacher_cache(
    demo_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teacher forward passes while training (validation excluded), 2 epochs of 2 steps: the
    cache computes epoch 1 only; with augmentation the teacher runs at every step."""
    calls: list[bool] = []

    class CountingSTPM(STPM):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.teacher.register_forward_hook(lambda *_: calls.append(self.student.training))

    monkeypatch.setattr(train_mod, "STPM", CountingSTPM)
    for augment, jpeg, expected in (
        ("none", 0.0, 2),
        ("texture", 0.0, 4),
        ("object", 0.0, 4),
        ("none", 0.5, 4),
    ):
        calls.clear()
        out = tmp_path / f"{augment}_{jpeg}"
        train(tiny(demo_data.root, out, epochs=2, augment=augment, augment_jpeg=jpeg))
        assert sum(calls) == expected, augment
        summary = json.loads((out / "train_summary.json").read_text())
        assert (summary["augment"], summary["augment_jpeg"]) == (augment, jpeg)
        assert summary["teacher_cache"] is (augment == "none" and not jpeg)
        assert load_checkpoint(out / "best.ckpt")["train_config"]["augment"] == augment


def test_new_flags_reach_the_config(demo_data, tmp_path: Path, monkeypatch) -> None:
    seen: dict[str, TrainConfig] = {}
    monkeypatch.setattr("stpm_edge.train.train", lambda cfg: seen.setdefault("cfg", cfg))
    flags = ["--steps", "9", "--lr-schedule", "cosine", "--loss-scale", "official"]
    flags += ["--val-criterion", "map_mean", "--augment", "object", "--data", "d", "-q"]
    assert train_main(flags) == 0
    cfg = seen["cfg"]
    assert (cfg.steps, cfg.lr_schedule, cfg.loss_scale, cfg.val_criterion, cfg.augment) == (
        9,
        "cosine",
        "official",
        "map_mean",
        "object",
    )


def test_help_names_the_defaults_and_choices(capsys) -> None:
    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    d = TrainConfig()
    for flag, choices, default in (
        ("--lr-schedule", "{constant,cosine}", d.lr_schedule),
        ("--loss-scale", "{paper,official}", d.loss_scale),
        ("--val-criterion", "{loss,map_mean}", d.val_criterion),
        ("--augment", "{none,texture,object}", d.augment),
    ):
        entry = text[text.index(f"{flag} {choices} ") :]
        assert entry.split("(default: ", 1)[1].startswith(f"{default})"), flag
    assert "--steps STEPS train for N SGD steps instead of --epochs" in text


def test_validation_loss_runs_the_teacher_once_per_image(monkeypatch) -> None:
    """The validation images are never augmented: with a cache, later epochs' validation skips the
    teacher and gives the same loss as the uncached pass."""
    torch.manual_seed(0)
    model = STPM(ModelConfig(image_size=32, teacher_weights="random"))
    images = torch.randn(6, 3, 32, 32)
    dataset = [{"image": images[i], "index": i} for i in range(6)]
    cfg = TrainConfig(batch_size=4, progress=False)
    calls = []
    model.teacher.register_forward_hook(lambda *a: calls.append(1))
    plain = train_mod.validation_loss(model, dataset, cfg, torch.device("cpu"))
    cache = train_mod.TeacherFeatureCache(model, len(dataset))
    calls.clear()
    losses = [
        train_mod.validation_loss(model, dataset, cfg, torch.device("cpu"), cache) for _ in range(3)
    ]
    assert len(calls) == 2  # two batches, first pass only
    assert losses == pytest.approx([plain] * 3, rel=1e-6)
