"""The STPM anomaly-map maths — the one implementation used by training, evaluation and export.

Steps (Wang et al., BMVC 2021):
1. L2-normalise teacher and student features along channels: ``t̂ = t / ||t||``.
2. Per scale and position, ``d = 0.5 * ||t̂ - ŝ||²`` -> (B, 1, h, w); the training loss is its mean.
3. Upsample every scale bilinearly (align_corners=False) to one grid and multiply them.
4. Optionally blur (Gaussian, as a depthwise convolution); image score = max (or top-k mean).

The grid of steps 3-4 is the map resolution: ``"input"`` (the paper: every scale upsampled to the
input size, then blurred and scored there) or ``"feature"`` (the finest feature grid, stride 4:
combined, blurred with the same sigma in input pixels and scored there, then upsampled once to the
input size for the output map). ``"feature"`` does 1/16 of the tail's per-pixel work; the two agree
to the blur's and the bilinear kernel's small difference (tests/test_anomaly_map.py bounds it).

Every function casts its inputs to float32 first. In an FP16 export the backbones run in half
precision but this tail does not: a raw feature's sum of squares overflows fp16 (> 65504), an eps of
1e-12 is 0 in fp16 (0/0 = NaN on an all-zero post-ReLU vector) and the product of three small maps
underflows fp16. The casts appear as explicit Cast nodes in the exported graph.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

NORM_EPS = 1e-6  # representable in float32 with room; only guards all-zero feature vectors


def channel_sum(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 1, h, w): the sum over channels, as a 1x1 convolution with ones.

    The same sum as ``x.sum(dim=1, keepdim=True)``; exported, a Conv instead of a ReduceSum over
    axis 1, which ONNX Runtime's CPU kernels run 2.5x faster on these maps (a strided reduction
    versus its blocked-layout convolution) and every runtime (TensorRT, OpenVINO) supports.
    """
    # int(): a constant in the traced graph (an initializer), not a shape computation
    weight = torch.ones(1, int(x.shape[1]), 1, 1, dtype=x.dtype, device=x.device)
    return F.conv2d(x, weight)


def scale_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per-position distance of one scale: (B, C, h, w) x2 -> (B, 1, h, w) float32 in [0, 2].

    ``0.5 * ||t̂ - ŝ||²`` expanded as ``0.5 * (|t̂|² + |ŝ|²) - t̂·ŝ``: three channel reductions
    (t·t, s·s, t·s) instead of normalising both C-channel tensors and differencing them, i.e. 4
    full-size passes instead of 9 in the exported graph — the same value (to float32 rounding,
    clamped at 0), including an all-zero vector (its normalised form is 0: the norm is clamped
    at ``NORM_EPS`` before dividing).
    """
    t, s = teacher.float(), student.float()
    tt, ss, ts = channel_sum(t * t), channel_sum(s * s), channel_sum(t * s)
    # squared norms clamped at eps² = the norms clamped at eps, in 11 small-map ops instead of 14
    nt2 = torch.clamp(tt, min=NORM_EPS * NORM_EPS)
    ns2 = torch.clamp(ss, min=NORM_EPS * NORM_EPS)
    d = 0.5 * (tt / nt2 + ss / ns2) - ts / torch.sqrt(nt2 * ns2)
    return torch.clamp(d, min=0.0)  # rounding can leave -1e-7 where t̂ = ŝ; products need >= 0


def stpm_loss(
    teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor], scale: float = 1.0
) -> torch.Tensor:
    """The paper's loss: per scale the mean over positions of ``scale_distance``, summed over scales
    and averaged over the batch, times ``scale``. Returns a float32 scalar.

    ``scale=2.0`` is the official STFPM code's loss, ``sum_c (t̂ - ŝ)²`` without the 0.5.
    """
    return scale * sum(
        scale_distance(t, s).mean() for t, s in zip(teacher_feats, student_feats, strict=True)
    )


@functools.lru_cache(maxsize=64)
def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of 1-D linear interpolation, align_corners=False.

    PyTorch's rule (half-pixel centres, clamped at the edges, no antialiasing): output ``i``
    samples ``max(0, (i + 0.5) * n_in / n_out - 0.5)`` between its two neighbours. Built in numpy,
    so an exported graph holds it as a constant, not as operations.
    """
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(weights, (np.arange(n_out), low), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), high), frac)
    return weights.astype(np.float32)


def upsample(scale_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) -> (B, 1, H, W) float32, bilinear, align_corners=False (the paper's choice).

    Written as ``rows @ map @ cols`` with constant interpolation matrices: the same values as
    ``F.interpolate(..., mode="bilinear", align_corners=False)`` (tested to 1e-6), but exported
    as two MatMuls, which OpenVINO's CPU plugin runs 4x faster than its Interpolate for the
    64 -> 256 output map (0.17 vs 0.77 ms, 2 threads) and ONNX Runtime as fast as its Resize.
    """
    x = scale_map.float()
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == (int(size[0]), int(size[1])):
        return x
    rows = torch.from_numpy(interpolation_matrix(h, int(size[0]))).to(x.device)
    cols = torch.from_numpy(np.ascontiguousarray(interpolation_matrix(w, int(size[1])).T))
    return rows @ x @ cols.to(x.device)


def combine_scales(scale_maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Element-wise product of the upsampled per-scale maps: -> (B, 1, H, W) float32."""
    result = upsample(scale_maps[0], size)
    for scale_map in scale_maps[1:]:
        result = result * upsample(scale_map, size)
    return result


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D float32 kernel (k,) with radius 4*sigma (the usual truncation)."""
    radius = max(1, int(math.ceil(4.0 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(coords**2) / (2.0 * sigma * sigma))
    return g / g.sum()


def gaussian_blur(anomaly: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur a (B, 1, H, W) map with reflect padding; ``sigma <= 0`` returns it unchanged.

    Separable (a vertical then a horizontal pass): 2k instead of k^2 multiplies per pixel.
    """
    if sigma <= 0:
        return anomaly
    g = gaussian_kernel(sigma).to(anomaly.device)
    pad = g.numel() // 2
    x = F.pad(anomaly, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


MAP_RESOLUTIONS = ("feature", "input")


def map_grid(
    scale_maps: list[torch.Tensor], size: tuple[int, int], resolution: str
) -> tuple[int, int]:
    """The grid the scales are combined, blurred and scored on (see the module docstring)."""
    if resolution == "input":
        return size
    if resolution == "feature":
        # int(): under ONNX tracing shape entries are tensors; the grid is static in the graph
        return int(scale_maps[0].shape[-2]), int(scale_maps[0].shape[-1])
    raise ValueError(f"unknown map resolution {resolution!r}; expected one of {MAP_RESOLUTIONS}")


def anomaly_map(
    teacher_feats: list[torch.Tensor],
    student_feats: list[torch.Tensor],
    size: tuple[int, int],
    blur_sigma: float = 0.0,
    resolution: str = "input",
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The map on its grid: -> ((B, 1, h, w) float32, [per-scale (B, 1, h_i, w_i) float32]).

    ``blur_sigma`` is in input pixels whatever the grid, so a setting means the same at both
    resolutions.
    """
    scale_maps = [scale_distance(t, s) for t, s in zip(teacher_feats, student_feats, strict=True)]
    grid = map_grid(scale_maps, size, resolution)
    sigma = blur_sigma * grid[0] / size[0]
    return gaussian_blur(combine_scales(scale_maps, grid), sigma), scale_maps


@dataclass(frozen=True)
class MapSettings:
    """How a checkpoint's map is blurred, gridded and scored (one value travels, not four).

    The defaults are the paper's; a model's come from its config (:meth:`of`).
    """

    blur_sigma: float = 0.0
    reduction: str = "max"
    topk_fraction: float = 0.01
    resolution: str = "input"

    @classmethod
    def of(cls, config: Any) -> MapSettings:
        """From a ``ModelConfig`` (or anything with its four fields)."""
        return cls(
            config.blur_sigma, config.score_reduction, config.topk_fraction, config.map_resolution
        )


def grid_map(
    teacher_feats: list[torch.Tensor],
    student_feats: list[torch.Tensor],
    size: tuple[int, int],
    settings: MapSettings = MapSettings(),
    fuse: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The map on the grid it is scored on, fused with ``fuse`` when given -> ((B, 1, h, w),
    [per-scale maps]), float32. ``fuse`` (grid map -> map on the same grid) adds another map: the
    colour map (``stpm_edge.colour_map``)."""
    grid, scale_maps = anomaly_map(
        teacher_feats, student_feats, size, settings.blur_sigma, settings.resolution
    )
    return (grid if fuse is None else fuse(grid)), scale_maps


def above_baseline(grid: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """The scored map minus a per-position ``baseline`` (1, 1, h, w) of the same grid, float32
    (``stpm_edge.score_baseline``)."""
    # int(): under ONNX tracing shape entries are tensors; both grids are static in the graph
    fitted, scored = [int(n) for n in baseline.shape[-2:]], [int(n) for n in grid.shape[-2:]]
    if fitted != scored:
        raise ValueError(
            f"score baseline grid {fitted} does not match the map's grid {scored}: "
            "it was fitted with other map settings (refit it)"
        )
    return grid.float() - baseline  # float32 by construction (a .float() would rename it)


def score_map(
    teacher_feats: list[torch.Tensor],
    student_feats: list[torch.Tensor],
    size: tuple[int, int],
    settings: MapSettings = MapSettings(),
    fuse: Callable[[torch.Tensor], torch.Tensor] | None = None,
    baseline: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Map, score and scale maps -> ((B, 1, H, W), (B,), [(B, 1, h_i, w_i)]), all float32.

    What the model's evaluation and the exported graph both compute: the score is taken on the
    map's own grid (:func:`grid_map`), above ``baseline`` when given (the largest value good
    training images reached at each position: ``stpm_edge.score_baseline``), and the map is
    upsampled to the input size only for the output. The output map is never baseline-subtracted.
    """
    grid, scale_maps = grid_map(teacher_feats, student_feats, size, settings, fuse)
    scored = grid if baseline is None else above_baseline(grid, baseline)
    score = image_score(scored, settings.reduction, settings.topk_fraction)
    full = grid if settings.resolution == "input" else upsample(grid, size)
    return full, score, scale_maps


# TensorRT's TopK takes K < 3840 (onnx-tensorrt docs/operators.md, TopK: "`K` input must be less
# than 3840"); the top-1 % of a 1024x1024 map is K = 10486.
TOPK_MAX_K = 3839


def _topk_sum(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Exact sum of the ``k`` largest values per row, in TopK calls of at most ``TOPK_MAX_K``.

    Each round takes the largest remaining values, then overwrites them (by index, so ties are
    handled exactly) with the lowest float before the next round: the rounds together select
    exactly the k largest values. Exported, that is TopK + ScatterElements per round.
    """
    total, remaining, rest = None, k, flat
    while remaining > 0:
        step = min(remaining, TOPK_MAX_K)
        values, indices = rest.topk(step, dim=1)
        part = values.sum(dim=1)
        total = part if total is None else total + part
        remaining -= step
        if remaining > 0:
            rest = rest.scatter(1, indices, torch.finfo(rest.dtype).min)
    return total


def image_score(
    anomaly: torch.Tensor, reduction: str = "max", topk_fraction: float = 0.01
) -> torch.Tensor:
    """(B, 1, H, W) -> (B,) float32: the max of the map, or the mean of its top-k pixels.

    The top-k mean is exact for every size: when k >= ``TOPK_MAX_K`` (maps from about 620 px up)
    it is summed over several bounded TopK rounds (see :func:`_topk_sum`) so that the exported
    graph stays within TensorRT's TopK limit; below that it is the plain one-TopK mean.
    """
    flat = anomaly.flatten(1)
    if reduction == "max":
        return flat.amax(dim=1)
    if reduction == "topk":
        # int(): under ONNX tracing shape entries are tensors; H and W are static in the graph
        k = max(1, int(round(int(flat.shape[1]) * topk_fraction)))
        if k <= TOPK_MAX_K:
            return flat.topk(k, dim=1).values.mean(dim=1)
        return _topk_sum(flat, k) / k
    raise ValueError(f"unknown score reduction {reduction!r}; expected 'max' or 'topk'")


def normalize_score(
    score: torch.Tensor, threshold: float | torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """Map raw scores to [0, 1] with the calibrated threshold at 0.5 (DESIGN.md §4).

    ``scale`` is ``score_max - score_min`` of the calibration. Both may be tensors, so an exported
    graph keeps them as named initializers that a re-calibration can overwrite.
    """
    return torch.clamp((score - threshold) / scale + 0.5, 0.0, 1.0)


def calibration_scale(calibration: dict) -> float:
    """The normalisation range of a calibration dict (``stpm_edge.calibration``'s, the one rule)."""
    from stpm_edge.calibration import calibration_scale as scale

    return scale(calibration)
