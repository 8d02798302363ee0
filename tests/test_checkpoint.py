"""Checkpoints (DESIGN.md §2): plain dicts, weights_only loading, clear errors on bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from stpm_edge.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_model_from_checkpoint,
    save_checkpoint,
)
from stpm_edge.errors import CheckpointError
from stpm_edge.model import STPM, ModelConfig

CALIBRATION = {
    "image_threshold": 0.3,
    "pixel_threshold": 0.3,
    "score_min": 0.1,
    "score_max": 0.5,
    "source": "val_good",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[STPM, Path]:
    torch.manual_seed(0)
    model = STPM(ModelConfig(image_size=32, teacher_weights="random", blur_sigma=1.0)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    save_checkpoint(path, model, CALIBRATION, epoch=3, val_loss=0.25)
    return model, path


def test_round_trip_gives_identical_outputs(saved: tuple[STPM, Path]) -> None:
    model, path = saved
    loaded = load_model_from_checkpoint(path)
    assert not loaded.training
    assert loaded.config.to_dict() == model.config.to_dict()
    x = torch.randn(2, 3, 32, 32)
    amap_a, score_a = model.score_map(x)
    amap_b, score_b = loaded.score_map(x)
    assert torch.equal(amap_a, amap_b) and torch.equal(score_a, score_b)


def test_file_is_a_plain_dict_for_weights_only(saved: tuple[STPM, Path]) -> None:
    _, path = saved
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == FORMAT
    assert {
        "config",
        "teacher",
        "student",
        "calibration",
        "versions",
        "epoch",
        "val_loss",
    } <= payload.keys()
    assert payload["calibration"] == CALIBRATION
    assert payload["epoch"] == 3 and payload["val_loss"] == 0.25
    assert {"stpm_edge", "torch", "torchvision"} <= payload["versions"].keys()
    cfg = payload["config"]
    assert {
        "backbone",
        "image_size",
        "mean",
        "std",
        "teacher_weights",
        "blur_sigma",
        "score_reduction",
        "topk_fraction",
    } <= cfg.keys()
    assert not path.with_name(path.name + ".tmp").exists()  # the atomic write cleaned up


def test_truncated_checkpoint(saved: tuple[STPM, Path], tmp_path: Path) -> None:
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(CheckpointError):
        load_model_from_checkpoint(bad)


def test_random_bytes(tmp_path: Path) -> None:
    bad = tmp_path / "noise.ckpt"
    bad.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(CheckpointError, match="noise.ckpt"):
        load_checkpoint(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.ckpt")


def test_dict_without_format_key(tmp_path: Path) -> None:
    bad = tmp_path / "plain.ckpt"
    torch.save({"student": {"w": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert "plain.ckpt" in str(info.value) and FORMAT in str(info.value)


def test_incomplete_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "incomplete.ckpt"
    torch.save({"format": FORMAT, "config": {}}, bad)
    with pytest.raises(CheckpointError, match="teacher"):
        load_checkpoint(bad)


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "module.ckpt"
    torch.save(torch.nn.Linear(2, 2), bad)  # a pickled nn.Module: runs code on full unpickling
    with pytest.raises(CheckpointError, match="module.ckpt"):
        load_checkpoint(bad)
    other = tmp_path / "pickle.ckpt"
    other.write_bytes(pickle.dumps({"format": FORMAT, "obj": Path("x")}))
    with pytest.raises(CheckpointError):
        load_checkpoint(other)


def test_weights_of_another_backbone(saved: tuple[STPM, Path], tmp_path: Path) -> None:
    _, path = saved
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["config"]["backbone"] = "resnet18"
    payload["config"]["mean"], payload["config"]["std"] = [], []
    bad = tmp_path / "swapped.ckpt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="resnet18"):
        load_model_from_checkpoint(bad)


def test_older_checkpoint_with_layers_key_still_loads(
    saved: tuple[STPM, Path], tmp_path: Path
) -> None:
    # checkpoints written before the key was dropped name the backbone's stages in config.layers
    model, path = saved
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert "layers" not in payload["config"]
    payload["config"]["layers"] = ["blocks.2", "blocks.4", "blocks.10"]
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    loaded = load_model_from_checkpoint(old)
    assert loaded.config.to_dict() == model.config.to_dict()


def test_checkpoint_without_map_resolution_keeps_the_input_resolution(
    saved: tuple[STPM, Path], tmp_path: Path
) -> None:
    # saved before the setting existed: its thresholds were calibrated on input-resolution maps,
    # so it must not silently switch to the newer "feature" default
    model, path = saved
    assert model.config.map_resolution == "feature"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    del payload["config"]["map_resolution"]
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    loaded = load_model_from_checkpoint(old)
    assert loaded.config.map_resolution == "input"
    x = torch.randn(2, 3, 32, 32)
    _, score = loaded.score_map(x)
    loaded.config.map_resolution = "feature"
    _, feature_score = loaded.score_map(x)
    assert not torch.equal(score, feature_score)  # the setting does change the scores
