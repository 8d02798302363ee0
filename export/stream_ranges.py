"""Stacked INT8: the student's residual streams brought to the teacher's ranges.

In the stacked layout one tensor holds both networks' channels, and an INT8 quantiser gives a
tensor one scale (TensorRT, ONNX Runtime and OpenVINO take activations per tensor). The two
networks' ranges differ several-fold: a trained student's streams ran 1.8-4.7x smaller than its
ImageNet teacher's (efficientnet_lite0, the demo's brick checkpoint), so on the teacher's grid the
student's features kept two bits fewer, and its stacked INT8 graphs were 3-4x farther from
PyTorch than the separate ones (largest map error 14-18 % of the peak against 4-7 %, on all three
INT8 targets). A random teacher's streams may as well be the smaller ones.

STPM compares feature directions only (both are L2-normalised per position), so a positive factor
on a student stream changes no map. Before stacking, each student stream is multiplied by the
teacher's peak over the student's, both measured on the INT8 calibration frames
(``FeatureTrunk.scale_streams`` edits the weights); the factors travel in the graph's metadata
(``stpm.student_stream_scales``). The separate layout needs none: each network's tensors get their
own scales.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from stpm_edge.backbones import FeatureTrunk
from stpm_edge.errors import ExportError, note
from stpm_edge.model import STPM

CHUNK = 16  # images per forward pass: a calibration set may hold hundreds


def stream_peaks(trunk: FeatureTrunk, batch: torch.Tensor) -> list[float]:
    """Largest |value| of each of ``trunk``'s streams (:meth:`FeatureTrunk.streams`) on ``batch``
    (normalised float32 NCHW)."""
    streams = trunk.streams()
    if not streams:
        raise ExportError(
            note(
                f"stacked INT8: {type(trunk).__name__} cannot bring its student's streams to the "
                "teacher's range (it declares no streams)",
                "export with --layout separate",
            )
        )
    peaks = [0.0] * len(streams)

    def recorder(index: int):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            peaks[index] = max(peaks[index], float(output.detach().abs().max()))

        return hook

    handles = [
        module.register_forward_hook(recorder(i))
        for i, stream in enumerate(streams)
        for module in stream
    ]
    try:
        with torch.no_grad():
            for chunk in batch.split(CHUNK):
                trunk(chunk)
    finally:
        for handle in handles:
            handle.remove()
    return peaks


def student_stream_scales(model: STPM, rgb: np.ndarray) -> tuple[float, ...]:
    """Per student stream, teacher peak / student peak on good RGB uint8 images (N, H, W, 3);
    1 where the student's stream is all zero."""
    from stpm_edge.runtime.image import to_model_input

    cfg = model.config
    batch = torch.from_numpy(
        to_model_input(rgb, cfg.image_size, "float32_nchw", "RGB", cfg.mean, cfg.std, order="RGB")
    )
    teacher = stream_peaks(model.teacher.eval(), batch)
    student = stream_peaks(model.student.eval(), batch)
    scales = tuple(t / s if s > 0 else 1.0 for t, s in zip(teacher, student, strict=True))
    if not all(math.isfinite(x) and x > 0 for x in scales):
        raise ExportError(f"stream ranges: teacher {teacher} and student {student} do not compare")
    return scales
