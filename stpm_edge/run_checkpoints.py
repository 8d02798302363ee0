"""A training run's ``best.ckpt`` and ``last.ckpt``, written at most every ``every_s`` seconds.

On a small dataset an epoch is two SGD steps (about 3 s on a 2-core CPU) and the validation loss
improves almost every epoch, so writing both checkpoints every epoch cost 200 file writes, 2 % of a
default run. The best student is kept in memory instead, and both files are written together when
``every_s`` has passed since the last write, and after the final epoch: an interrupted run loses
at most ``every_s`` seconds of training, and ``best.ckpt`` on disk always belongs to the
``last.ckpt`` beside it (it is written first), so ``--resume`` continues from a consistent pair.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from stpm_edge.checkpoint import save_checkpoint
from stpm_edge.model import STPM

EVERY_S = 30.0  # the most training an interrupted run can lose


class RunCheckpoints:
    """Collects one run's checkpoints and writes them (``best.ckpt`` first) when due."""

    def __init__(self, out: Path, every_s: float | None = None) -> None:
        self.out = Path(out)
        self.every_s = EVERY_S if every_s is None else every_s
        self._best: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
        self._last_write = time.monotonic()

    def improved(self, model: STPM, fields: dict[str, Any]) -> None:
        """The student now is the run's best: keep a copy until the next write."""
        state = {k: v.detach().clone() for k, v in model.student.state_dict().items()}
        self._best = (state, dict(fields))

    def epoch_done(
        self, model: STPM, optimizer: torch.optim.Optimizer, fields: dict[str, Any], final: bool
    ) -> bool:
        """Write the pending best and ``last.ckpt`` if due (always after the ``final`` epoch);
        returns whether it wrote."""
        if not final and time.monotonic() - self._last_write < self.every_s:
            return False
        if self._best is not None:
            state, best_fields = self._best
            save_checkpoint(self.out / "best.ckpt", model, None, student_state=state, **best_fields)
            self._best = None
        save_checkpoint(
            self.out / "last.ckpt", model, None, optimizer=optimizer.state_dict(), **fields
        )
        self._last_write = time.monotonic()
        return True
