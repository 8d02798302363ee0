"""Self-describing checkpoints (DESIGN.md §2): plain dicts that load with ``weights_only=True``.

No pickled modules: the model is rebuilt from ``config`` and both state dicts are loaded into it,
so loading runs no code from the file. The teacher travels with the student, which means export
and evaluation never need to download anything.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from stpm_edge import __version__
from stpm_edge.errors import CheckpointError, note
from stpm_edge.model import STPM, ModelConfig

logger = logging.getLogger(__name__)

FORMAT = "stpm-edge-ckpt/1"
REQUIRED_KEYS = ("format", "config", "teacher", "student", "calibration")
# Config keys older checkpoints carry and this version ignores: ``layers`` only named the backbone's
# feature stages, which the backbone registry defines (it never selected anything).
LEGACY_KEYS = frozenset({"layers"})
# Settings added later, with the value every checkpoint saved before them was calibrated with:
# a missing key means that value, never the newer default.
LEGACY_DEFAULTS = {"map_resolution": "input"}


def library_versions() -> dict[str, str]:
    import torchvision

    return {
        "stpm_edge": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


def save_checkpoint(
    path: Path,
    model: STPM,
    calibration: dict[str, Any] | None,
    student_state: dict[str, torch.Tensor] | None = None,
    **fields: Any,
) -> None:
    """Write atomically (temp file + rename) so a killed run never leaves a truncated checkpoint.

    A non-empty ``calibration`` must pass :func:`stpm_edge.calibration.check_calibration`: a NaN
    or degenerate threshold is never written. ``student_state``: the student's weights to write
    instead of the model's current ones (a copy kept from an earlier epoch).
    """
    if calibration:
        from stpm_edge.calibration import check_calibration, with_defaults

        calibration = check_calibration(with_defaults(calibration), f"checkpoint {path}")
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "teacher": model.teacher.state_dict(),
        "student": model.student.state_dict() if student_state is None else student_state,
        "calibration": dict(calibration or {}),
        "versions": library_versions(),
        **fields,
    }
    # the model's own post-hoc parts, never a stale copy among ``fields`` (e.g. a re-saved payload)
    from stpm_edge.colour_map import PAYLOAD_KEY as COLOUR_KEY
    from stpm_edge.score_baseline import PAYLOAD_KEY as BASELINE_KEY

    colour = None if model.colour is None else model.colour.stats
    for key, part in ((COLOUR_KEY, colour), (BASELINE_KEY, model.baseline)):
        payload.pop(key, None)
        if part is not None:
            payload[key] = part.to_payload()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint dict; :class:`CheckpointError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            note(
                f"checkpoint not found: {path}",
                "train one with stpm-train (it writes RUN_DIR/best.ckpt)",
            )
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickled module, random bytes: all unreadable here
        raise CheckpointError(
            note(
                f"cannot read checkpoint {path}: {_reason(exc)}",
                "the file is truncated, corrupt or not an stpm-edge checkpoint; use RUN_DIR/best.ckpt from stpm-train",
            )
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            note(
                f"{path} is not an stpm-edge checkpoint",
                f"expected format {FORMAT!r}, got {found!r}",
            )
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(
            note(f"checkpoint {path} is incomplete", f"missing keys: {', '.join(missing)}")
        )
    return payload


def _reason(exc: Exception) -> str:
    """Why torch.load failed, without torch's advice to disable weights_only (never do that)."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        return (
            "not a plain tensor file (another format, or pickled objects, which are never loaded)"
        )
    first_line = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line[:200]}"


def model_from_payload(payload: dict[str, Any], source: str = "checkpoint") -> STPM:
    """Rebuild an :class:`STPM` from a checkpoint dict (no download: the teacher is inside)."""
    saved = {k: v for k, v in payload["config"].items() if k not in LEGACY_KEYS}
    config = ModelConfig(**{**LEGACY_DEFAULTS, **saved})
    model = STPM(config, load_teacher=False)
    try:
        model.teacher.load_state_dict(payload["teacher"], strict=True)
        model.student.load_state_dict(payload["student"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            note(
                f"{source}: weights do not fit backbone {config.backbone}", str(exc).splitlines()[0]
            )
        ) from exc
    from stpm_edge.colour_map import colour_map_from_payload
    from stpm_edge.score_baseline import baseline_from_payload

    model.colour = colour_map_from_payload(payload, config, source)
    model.baseline = baseline_from_payload(payload, config, source)
    return model.eval()


def load_model_from_checkpoint(path: str | Path, device: str = "cpu") -> STPM:
    """The trained model of a checkpoint file, in eval mode on ``device``."""
    return model_from_payload(load_checkpoint(path), str(path)).to(device)
