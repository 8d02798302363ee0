"""Each export pass checks its own output against the PyTorch model on the same frames.

The reference is the FP32 fused module run by PyTorch; the candidate is the written ONNX run by
ONNX Runtime on the CPU. FP32 must match tightly (``allclose`` with rtol 1e-4, atol 1e-5 on the
maps, and the same ranking of scores); FP16 and INT8 are reported (max error relative to each
map's peak, score differences) and must be finite.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from stpm_edge.errors import ExportError, note

logger = logging.getLogger(__name__)

FP32_RTOL, FP32_ATOL = 1e-4, 1e-5
# scores closer than this share of the calibrated range are ties for the ranking check: good
# frames' scores above a score baseline all sit near 0
RANK_TIE = 1e-3


@dataclass
class ParityReport:
    precision: str
    frames: int
    finite: bool
    max_abs_map_error: float
    max_rel_map_error: float  # max |a - b| / max |b|, per image, worst image
    allclose_worst_ratio: float  # max |a - b| / (rtol |b| + atol): <= 1 means allclose passes
    max_abs_score_error: float
    # max |a - b| / the calibration's score range (what one unit of score_normalized spans): a
    # score's own size is no scale for it, since scores above a baseline sit near 0 on good frames
    score_error_of_range: float
    same_score_ranking: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.precision}: {self.frames} frames, finite={self.finite}, max map error "
            f"{self.max_rel_map_error:.2e} of peak ({self.max_abs_map_error:.2e} abs), "
            f"score error {self.score_error_of_range:.2e} of the calibrated range, "
            f"same ranking={self.same_score_ranking}"
        )


def run_onnx(
    model: onnx.ModelProto | Path, frames: np.ndarray, batch: int = 4
) -> dict[str, np.ndarray]:
    """All outputs of an ONNX graph on ONNX Runtime's CPU provider, batch by batch, computed as
    the graph's target computes them (``runtime.check_arithmetic``: a TensorRT INT8 graph with
    its Q/DQ pairs as written)."""
    import onnxruntime as ort

    from stpm_edge.runtime.check_arithmetic import runs_as_written

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    options = ort.SessionOptions()
    if runs_as_written({p.key: p.value for p in model.metadata_props}):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    chunks = [
        session.run(names, {"image": frames[i : i + batch]}) for i in range(0, len(frames), batch)
    ]
    return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(names)}


@torch.no_grad()
def run_torch(fused: torch.nn.Module, frames: np.ndarray, batch: int = 4) -> dict[str, np.ndarray]:
    """The same outputs from the PyTorch fused module (the reference)."""
    outputs = [fused(torch.from_numpy(frames[i : i + batch])) for i in range(0, len(frames), batch)]
    names = ["anomaly_map", "score", "score_normalized"]
    return {n: torch.cat([o[k] for o in outputs]).numpy() for k, n in enumerate(names)}


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    precision: str,
    score_range: float,
) -> ParityReport:
    """``candidate``'s outputs against ``reference``'s; ``score_range`` is the calibration's
    score range (``anomaly_map.calibration_scale``), the unit score errors are given in."""
    ref_map, got_map = (
        reference["anomaly_map"].astype(np.float64),
        candidate["anomaly_map"].astype(np.float64),
    )
    ref_s, got_s = reference["score"].astype(np.float64), candidate["score"].astype(np.float64)
    diff = np.abs(got_map - ref_map)
    peaks = np.abs(ref_map).reshape(len(ref_map), -1).max(axis=1).clip(min=1e-30)
    finite = all(np.isfinite(v).all() for v in candidate.values())
    return ParityReport(
        precision=precision,
        frames=len(ref_map),
        finite=bool(finite),
        max_abs_map_error=float(diff.max()),
        max_rel_map_error=float((diff.reshape(len(diff), -1).max(axis=1) / peaks).max()),
        allclose_worst_ratio=float((diff / (FP32_RTOL * np.abs(ref_map) + FP32_ATOL)).max()),
        max_abs_score_error=float(np.abs(got_s - ref_s).max()),
        score_error_of_range=float(np.abs(got_s - ref_s).max() / max(score_range, 1e-30)),
        same_score_ranking=same_ranking(ref_s, got_s, RANK_TIE * score_range),
    )


def same_ranking(reference: np.ndarray, candidate: np.ndarray, tie: float) -> bool:
    """Whether every pair of frames whose reference scores differ by more than ``tie`` keeps its
    order in ``candidate`` (frames closer than that are ties: their order is float noise)."""
    ref_gap = reference[:, None] - reference[None, :]
    got_gap = candidate[:, None] - candidate[None, :]
    ordered = ref_gap > tie
    return bool((got_gap[ordered] > 0).all())


def require(report: ParityReport) -> None:
    """FP32 must pass allclose; every precision must be finite. :class:`ExportError` otherwise."""
    if not report.finite:
        raise ExportError(
            note(
                f"{report.precision} graph produced NaN or Inf",
                "this is a bug: please report it with the checkpoint",
            )
        )
    if report.precision == "fp32" and report.allclose_worst_ratio > 1.0:
        raise ExportError(
            note(
                f"fp32 graph differs from PyTorch on anomaly_map: max abs error {report.max_abs_map_error:.3g}",
                f"tolerance rtol={FP32_RTOL}, atol={FP32_ATOL}; worst ratio {report.allclose_worst_ratio:.2f} (<= 1 passes)",
            )
        )
