"""Parity of a backend's outputs against the reference run: tolerances and the comparison."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .check import FAIL, PASS


@dataclass(frozen=True)
class Tolerance:
    """How far a backend may stray from the reference, for one model precision.

    Attributes:
        map_rel: max ``|map - ref_map|`` over all frames / max ``|ref_map|`` (the map's peak).
        score_rel: max ``|score - ref_score|`` / max ``|ref_score|`` over the frames.
        verdict_band: a verdict may differ from the reference's only on a frame whose reference
            ``score_normalized`` lies within this distance of the 0.5 decision point.
    """

    map_rel: float
    score_rel: float
    verdict_band: float


#: Per precision of the model checked. fp32 leaves room for TF32 convolutions (on by default in
#: cuDNN/TensorRT on Ampere and newer); fp16 is ~10x the 0.94 % of peak measured for the demo
#: graphs on ORT CPU against fp32; int8 against an fp32 ``--reference`` is bounded loosely and
#: guards against garbage (a graph read with the wrong INT8 types is off by far more): the demo's
#: brick model (20 epochs, 256 px) measured 13-16 % of peak on the map and 6-7 % on the score on
#: real parts, for both INT8 targets, with every verdict equal. Initial values, not yet measured
#: on a GPU: a real device run may tune them (say so in the bug report).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(map_rel=5e-3, score_rel=5e-3, verdict_band=0.01),
    "fp16": Tolerance(map_rel=5e-2, score_rel=3e-2, verdict_band=0.02),
    "int8": Tolerance(map_rel=0.35, score_rel=0.15, verdict_band=0.05),
}


@dataclass
class Outputs:
    """The detector's answers on the frames: maps (N, H, W), scores and normalised scores (N,)."""

    maps: np.ndarray
    scores: np.ndarray
    normalized: np.ndarray

    @property
    def ng(self) -> np.ndarray:
        return self.normalized >= 0.5

    def tail(self, start: int) -> Outputs:
        """The answers for frames ``start:`` (the image-folder part)."""
        return Outputs(self.maps[start:], self.scores[start:], self.normalized[start:])


@dataclass
class Reference:
    """The reference run every backend is compared with.

    ``frames`` are the synthetic frames first (``synthetic`` of them), then the ``--images``.
    """

    path: Path
    precision: str
    frames: list[np.ndarray]
    synthetic: int
    outputs: Outputs


def compare_outputs(ref: Outputs, got: Outputs, tol: Tolerance) -> tuple[bool, dict[str, Any]]:
    """Parity figures of ``got`` against ``ref`` and whether they are within ``tol``."""
    if got.maps.shape != ref.maps.shape:
        return False, {"error": f"map shape {got.maps.shape} != reference {ref.maps.shape}"}
    finite = bool(np.isfinite(got.maps).all() and np.isfinite(got.scores).all())
    map_err = float(np.abs(got.maps - ref.maps).max() / max(np.abs(ref.maps).max(), 1e-12))
    score_err = float(np.abs(got.scores - ref.scores).max() / max(np.abs(ref.scores).max(), 1e-12))
    flips = got.ng != ref.ng
    hard = flips & (np.abs(ref.normalized - 0.5) > tol.verdict_band)
    data = {
        "frames": int(len(ref.scores)),
        "finite": finite,
        "map_error_of_peak": map_err,
        "score_error_rel": score_err,
        "verdicts_agree": int((~flips).sum()),
        "verdict_flips_outside_band": int(hard.sum()),
        "tolerance": asdict(tol),
    }
    ok = finite and map_err <= tol.map_rel and score_err <= tol.score_rel and not hard.any()
    return ok, data


def judge_parity(ref: Reference, got: Outputs, precision: str) -> tuple[str, dict[str, Any], str]:
    """``(status, figures, note)`` of ``got`` against the reference.

    Same precision (a backend against ORT CPU): every frame is judged. A reference of another
    precision (``--reference fp32.onnx`` for an int8/fp16 model): only the ``--images`` frames are
    judged, because INT8 calibration ranges clip out-of-distribution frames (a white or noise
    frame) by design; the synthetic frames must still give finite outputs.
    """
    tol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    ok_all, all_frames = compare_outputs(ref.outputs, got, tol)
    if precision == ref.precision or "error" in all_frames:
        return (PASS if ok_all else FAIL), all_frames, ""
    note_ = f"{precision} against a {ref.precision} reference: judged on the --images frames"
    finite = bool(np.isfinite(got.maps).all() and np.isfinite(got.scores).all())
    if len(ref.frames) == ref.synthetic:
        why = (
            f"{precision} against a {ref.precision} reference: not judged without --images (the "
            "synthetic frames are out of distribution); "
            + ("outputs finite" if finite else "NaN/Inf in the outputs")
        )
        return (PASS if finite else FAIL), {**all_frames, "judged": False}, why
    ok, data = compare_outputs(ref.outputs.tail(ref.synthetic), got.tail(ref.synthetic), tol)
    data.update(all_frames=all_frames, finite=finite and data["finite"], judged=True)
    return (PASS if ok and finite else FAIL), data, note_
