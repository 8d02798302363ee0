"""Writing a trained checkpoint again with its post-hoc parts changed: the colour map
(``stpm-colour``) and the score baseline (``stpm-baseline``).

Both are fitted after training without touching the student, and both change the map the image
score is taken on, so the new checkpoint's thresholds are re-calibrated (by the checkpoint's
calibration source: a hand-set threshold is kept). The input is never overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stpm_edge.errors import OutputExistsError, note

logger = logging.getLogger(__name__)

CORE_KEYS = ("format", "config", "teacher", "student", "calibration", "versions")


def rewrite_checkpoint(
    checkpoint: Any,
    out: Any,
    change: Callable[[dict[str, Any], Any], None],
    what: str,
    device: str = "cpu",
    batch_size: int = 8,
    force: bool = False,
) -> dict[str, Any]:
    """Load ``checkpoint``, let ``change(payload, model)`` set the model's post-hoc parts,
    re-calibrate on the resulting map and write ``out``; returns the new calibration."""
    from stpm_edge.calibration import recalibrate
    from stpm_edge.checkpoint import load_checkpoint, model_from_payload, save_checkpoint
    from stpm_edge.evaluate import torch_scorer

    out = Path(out)
    if out.resolve() == Path(checkpoint).resolve() or (out.exists() and not force):
        raise OutputExistsError(
            note(f"--out {out} exists", "choose a new file (--force replaces it, never the input)")
        )
    payload = load_checkpoint(checkpoint)
    model = model_from_payload(payload, str(checkpoint)).to(device)
    change(payload, model)
    calibration = recalibrate(payload, torch_scorer(model, device, batch_size), what)
    extra = {k: v for k, v in payload.items() if k not in CORE_KEYS}
    save_checkpoint(out, model, calibration, **extra)  # with the model's own post-hoc entries
    logger.info("wrote %s (%s)", out, what)
    return calibration
