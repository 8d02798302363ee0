"""Training: exact resume, run-folder safety, YAML configs, what best.ckpt and the log hold."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stpm_edge.checkpoint import load_checkpoint
from stpm_edge.cli.train import main as train_main
from stpm_edge.errors import ConfigError, OutputExistsError
from stpm_edge.train import TrainConfig, train

GLIBC = platform.libc_ver()[0] == "glibc"
CALIBRATION_KEYS = {"image_threshold", "pixel_threshold", "score_min", "score_max", "source"}


def tiny_args(data: Path, out: Path, epochs: int) -> list[str]:
    """A 32 px, 8-image (two batches per epoch), random-teacher run: plumbing at full speed."""
    return [
        "--data",
        str(data),
        "--category",
        "brick",
        "--out",
        str(out),
        "--image-size",
        "32",
        "--epochs",
        str(epochs),
        "--batch-size",
        "4",
        "--max-train-images",
        "8",
        "--teacher-weights",
        "random",
        "--device",
        "cpu",
        "--seed",
        "3",
        "--no-progress",
        "-q",
    ]


@pytest.fixture(scope="module")
def uninterrupted(demo_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "full"
    assert train_main(tiny_args(demo_data.root, out, epochs=2)) == 0
    return out


def test_resume_reproduces_the_uninterrupted_run(
    demo_data, uninterrupted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    assert train_main(tiny_args(demo_data.root, out, epochs=1)) == 0
    assert load_checkpoint(out / "last.ckpt")["epoch"] == 0
    assert train_main(tiny_args(demo_data.root, out, epochs=2) + ["--resume"]) == 0
    full, resumed = load_checkpoint(uninterrupted / "last.ckpt"), load_checkpoint(out / "last.ckpt")
    assert resumed["epoch"] == full["epoch"] == 1
    assert full["student"].keys() == resumed["student"].keys()
    for key, value in full["student"].items():
        assert torch.equal(value, resumed["student"][key]), key
    assert resumed["val_loss"] == full["val_loss"]
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_different_seed_gives_different_student(
    demo_data, uninterrupted: Path, tmp_path: Path
) -> None:
    # guards the resume test against "equal because nothing trains"
    args = tiny_args(demo_data.root, tmp_path / "other", epochs=1)
    args[args.index("--seed") + 1] = "4"
    assert train_main(args) == 0
    a = load_checkpoint(uninterrupted / "last.ckpt")["student"]
    b = load_checkpoint(tmp_path / "other" / "last.ckpt")["student"]
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_recorded_val_loss_is_the_paper_loss_on_the_validation_images(uninterrupted: Path) -> None:
    """best.ckpt's val_loss, recomputed by hand: its model's features of its validation images
    (read with the runtime's image module), then per scale 0.5 x squared distance of the
    L2-normalised vectors, mean over positions, sum over scales, mean over images."""
    from stpm_edge.checkpoint import model_from_payload
    from stpm_edge.runtime.image import normalize, read_image, resize_image

    payload = load_checkpoint(uninterrupted / "best.ckpt")
    model, cfg = model_from_payload(payload), payload["config"]
    images = [resize_image(read_image(p), cfg["image_size"]) for p in payload["val_paths"]]
    x = torch.from_numpy(np.stack([normalize(rgb, cfg["mean"], cfg["std"]) for rgb in images]))
    with torch.no_grad():
        teacher, student = model.features(x)
    per_image = np.zeros(len(images))
    for t, s in zip(teacher, student, strict=True):
        t_hat = t.double().numpy() / np.linalg.norm(t.double().numpy(), axis=1, keepdims=True)
        s_hat = s.double().numpy() / np.linalg.norm(s.double().numpy(), axis=1, keepdims=True)
        per_image += (0.5 * ((t_hat - s_hat) ** 2).sum(axis=1)).mean(axis=(1, 2))
    assert len(images) >= 2
    assert payload["val_loss"] == pytest.approx(per_image.mean(), rel=1e-5)


def test_random_teacher_is_recorded(uninterrupted: Path) -> None:
    payload = load_checkpoint(uninterrupted / "best.ckpt")
    assert payload["config"]["teacher_weights"] == "random"
    assert payload["config"]["image_size"] == 32
    saved_cfg = yaml.safe_load((uninterrupted / "config.yaml").read_text())
    assert saved_cfg["teacher_weights"] == "random" and saved_cfg["max_train_images"] == 8


def test_non_empty_out_needs_resume_or_force(demo_data, uninterrupted: Path) -> None:
    before = (uninterrupted / "best.ckpt").stat().st_mtime_ns
    cfg = TrainConfig(
        data=str(demo_data.root),
        category="brick",
        out=str(uninterrupted),
        image_size=32,
        epochs=1,
        teacher_weights="random",
        device="cpu",
        progress=False,
    )
    with pytest.raises(OutputExistsError, match="--resume"):
        train(cfg)
    assert (uninterrupted / "best.ckpt").stat().st_mtime_ns == before


def test_cli_non_empty_out_is_exit_2(demo_data, uninterrupted: Path, capsys) -> None:
    assert train_main(tiny_args(demo_data.root, uninterrupted, epochs=1)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_best_checkpoint_of_the_real_run(trained_run) -> None:
    payload = load_checkpoint(trained_run.best)
    cal = payload["calibration"]
    assert cal.keys() >= CALIBRATION_KEYS
    assert cal["source"] == "val_good"
    assert cal["score_max"] > cal["image_threshold"] >= cal["score_min"] > 0
    assert payload["config"]["teacher_weights"] == "pretrained"
    assert payload["config"]["backbone"] == "efficientnet_lite0"
    val_paths = [Path(p) for p in payload["val_paths"]]
    assert val_paths and all(p.is_file() and p.is_absolute() for p in val_paths)
    assert all(p.parent.name == "good" and p.parent.parent.name == "train" for p in val_paths)
    assert "optimizer" not in payload  # only last.ckpt carries the optimiser
    assert "optimizer" in load_checkpoint(trained_run.out / "last.ckpt")


def test_train_log_has_one_line_per_epoch(trained_run) -> None:
    records = [
        json.loads(line) for line in (trained_run.out / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"train_loss", "val_loss", "images_per_s", "best"} <= r.keys()
        assert r["train_loss"] > 0 and r["val_loss"] > 0
    assert records[0]["best"] is True


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_yaml_values_are_applied_and_flags_win(tmp_path: Path) -> None:
    cfg_file = write_yaml(
        tmp_path / "c.yaml", {"epochs": 7, "batch-size": 5, "lr": 0.01, "backbone": "resnet18"}
    )
    cfg = TrainConfig.from_sources(str(cfg_file))
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.backbone) == (7, 5, 0.01, "resnet18")
    assert cfg.momentum == TrainConfig().momentum  # untouched keys keep their defaults
    flagged = TrainConfig.from_sources(str(cfg_file), epochs=2, lr=None)
    assert flagged.epochs == 2 and flagged.lr == 0.01  # None = flag not given


def test_yaml_through_the_cli(demo_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, TrainConfig] = {}

    def fake_train(cfg: TrainConfig) -> Path:
        seen["cfg"] = cfg
        return tmp_path / "best.ckpt"

    monkeypatch.setattr("stpm_edge.train.train", fake_train)
    cfg_file = write_yaml(
        tmp_path / "c.yaml", {"epochs": 7, "image_size": 48, "data": str(demo_data.root)}
    )
    assert train_main(["--config", str(cfg_file), "--epochs", "3", "-q"]) == 0
    assert seen["cfg"].epochs == 3 and seen["cfg"].image_size == 48
    assert seen["cfg"].data == str(demo_data.root)


def test_yaml_unknown_key(tmp_path: Path, capsys) -> None:
    cfg_file = write_yaml(tmp_path / "bad.yaml", {"epochs": 3, "learning_rate": 0.1})
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_sources(str(cfg_file))
    assert train_main(["--config", str(cfg_file), "--data", "x"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "Traceback" not in err


def test_yaml_not_a_mapping_or_missing(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_sources(str(tmp_path / "list.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_sources(str(tmp_path / "absent.yaml"))


def test_bf16_resume_reproduces_the_uninterrupted_bf16_run(demo_data, tmp_path: Path) -> None:
    """--amp bf16 on a CPU: the student's step runs in bf16 (recorded), and resuming still ends
    with the same weights as an uninterrupted run."""
    bf16 = ["--amp", "bf16"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert train_main(tiny_args(demo_data.root, full, epochs=2) + bf16) == 0
    assert train_main(tiny_args(demo_data.root, resumed, epochs=1) + bf16) == 0
    assert train_main(tiny_args(demo_data.root, resumed, epochs=2) + bf16 + ["--resume"]) == 0
    assert json.loads((full / "train_summary.json").read_text())["autocast"] == "bf16"
    a, b = load_checkpoint(full / "last.ckpt"), load_checkpoint(resumed / "last.ckpt")
    for key, value in a["student"].items():
        assert torch.equal(value, b["student"][key]), key
    assert a["train_config"]["amp"] == "bf16"


def test_host_memory_setting_changes_no_number(demo_data, tmp_path: Path) -> None:
    """--host-memory only changes where freed memory goes: the same run ends with the same
    weights with glibc's own allocator and with freed blocks retained. Child processes, because
    retaining cannot be undone in a process (and this one's thread settings are pytest's)."""
    weights = {}
    for mode in ("system", "retain"):
        out = tmp_path / mode
        args = tiny_args(demo_data.root, out, epochs=2) + ["--host-memory", mode]
        subprocess.run([sys.executable, "-m", "stpm_edge.cli.train", *args], check=True)
        recorded = json.loads((out / "train_summary.json").read_text())["host_memory"]
        assert recorded == ("system" if mode == "system" or not GLIBC else "retain")
        weights[mode] = load_checkpoint(out / "last.ckpt")["student"]
    for key, value in weights["system"].items():
        assert torch.equal(value, weights["retain"][key]), key
