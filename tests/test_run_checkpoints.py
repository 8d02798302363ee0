"""A run's checkpoints are written together when due: best.ckpt holds the best epoch's weights
(kept in memory since), last.ckpt the current ones, and nothing is lost after the final epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stpm_edge.checkpoint import load_checkpoint
from stpm_edge.model import STPM, ModelConfig
from stpm_edge.run_checkpoints import RunCheckpoints


@pytest.fixture
def model_and_optimizer():
    torch.manual_seed(0)
    model = STPM(ModelConfig(image_size=32, teacher_weights="random"))
    return model, torch.optim.SGD(model.student.parameters(), lr=0.1, momentum=0.9)


def _perturb(model: STPM) -> None:
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)


def test_best_is_the_improved_epochs_weights_and_written_with_last(
    model_and_optimizer, tmp_path: Path
) -> None:
    model, optimizer = model_and_optimizer
    runs = RunCheckpoints(tmp_path, every_s=3600)
    best_weights = {k: v.clone() for k, v in model.student.state_dict().items()}
    runs.improved(model, {"epoch": 0, "val_loss": 1.0})
    assert not runs.epoch_done(model, optimizer, {"epoch": 0}, final=False)
    assert not (tmp_path / "best.ckpt").exists() and not (tmp_path / "last.ckpt").exists()
    _perturb(model)  # epoch 1 is worse: not improved
    assert runs.epoch_done(model, optimizer, {"epoch": 1}, final=True)
    best, last = load_checkpoint(tmp_path / "best.ckpt"), load_checkpoint(tmp_path / "last.ckpt")
    assert best["epoch"] == 0 and best["val_loss"] == 1.0 and "optimizer" not in best
    assert last["epoch"] == 1 and "optimizer" in last
    for key, value in best_weights.items():
        assert torch.equal(best["student"][key], value), key
    changed = [name for name, _ in model.student.named_parameters()]  # what _perturb moved
    assert changed and all(not torch.equal(last["student"][k], best_weights[k]) for k in changed)


def test_due_writes_every_epoch_with_no_interval(model_and_optimizer, tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer
    runs = RunCheckpoints(tmp_path, every_s=0.0)
    runs.improved(model, {"epoch": 0})
    assert runs.epoch_done(model, optimizer, {"epoch": 0}, final=False)
    assert load_checkpoint(tmp_path / "best.ckpt")["epoch"] == 0
    assert load_checkpoint(tmp_path / "last.ckpt")["epoch"] == 0
    assert runs.epoch_done(model, optimizer, {"epoch": 1}, final=False)  # no new best: kept
    assert load_checkpoint(tmp_path / "best.ckpt")["epoch"] == 0
    assert load_checkpoint(tmp_path / "last.ckpt")["epoch"] == 1
