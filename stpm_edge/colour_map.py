"""The colour statistics map: sees the intensity and colour anomalies that STPM is blind to.

STPM L2-normalises its features along channels, which discards how bright or how coloured a
region is: a stain that only moves the colour or scales the intensity leaves the feature
directions, and so the STPM map, almost unchanged. This map looks at the colour itself, and is
fitted post hoc from good images (no retraining of the student, so it can be added to any
checkpoint):

1. The RGB image is average-pooled to a ``GRID x GRID`` grid of cells (stride ``image_size /
   GRID`` input pixels, window ``WINDOW`` strides: stride 8 px and window 16 px at 256 px;
   reflect padding so a cell's centre is where bilinear upsampling puts it): one colour vector
   per cell.
2. Each cell is divided by the image's median cell, per channel. A global gain or white balance
   change (lighting, camera settings) cancels exactly; a local stain does not.
3. Distance of each cell to the good images' colours -> (B, 1, GRID, GRID):
   ``texture`` mode: Mahalanobis-squared to one mean and 3x3 covariance for all cells
   (position-independent);
   ``aligned`` mode: the same to a mean and 3x3 covariance per cell (parts in a fixed pose),
   shrunk towards the average covariance. Both ridge-regularised; the inverse is stored.
   ``local`` mode: the nearest training colour among the training images' cells within
   ``RADIUS`` cells of this one (``local_distance``), in the colour space whitened by the
   texture-mode covariance. A mean and covariance per cell blur a pose-jittered part's board and
   component colours into one wide Gaussian; the nearest neighbour keeps them apart.
4. Fusion, on the grid the STPM map is scored on: ``stpm_map / stpm_scale +
   upsample(relu(colour_map / colour_scale - 1))``, where each scale is the ``SCALE_QUANTILE``
   quantile of that map's values on the good validation images and on their JPEG copies
   (``GATE_JPEG_QUALITY``: a live frame's compression is not a stain). The colour map only
   counts where it exceeds what good images show, so it adds its detections without adding its
   noise to the scores of good images (a plain sum cost up to 0.2 image AUROC on the other
   defect types of a busy texture; see ``fuse``). The colour side is not blurred (its cells are
   box averages already); the fused map is scored as before.

All maths is float32 (the exported graph's FP16/INT8 backbones never touch it) and uses only
TensorRT-parsable ops (Pad and two AveragePools for the cell means, TopK + Slice for the median,
Sub, Mul, ReduceSum, Div, Relu, Resize; ``local`` adds a batched MatMul and a ReduceMin). The one
implementation serves PyTorch evaluation (``STPM.score_map``) and export (``FusedSTPM``); the
fitted constants become named initializers (``colour.*``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stpm_edge import anomaly_map as am
from stpm_edge.choices import COLOUR_MODES, DEFAULT_COLOUR_GATE_JPEG
from stpm_edge.errors import CheckpointError, ConfigError, DataError, note

logger = logging.getLogger(__name__)

PAYLOAD_KEY = "colour_map"  # the checkpoint entry; absent = no colour map (older checkpoints)
GRID = 32  # cells per side, at any image size (window and stride scale with the image)
# Window in strides: 2 (16 px at 256 px). Colour map alone, image AUROC on the benchmark (seed 0,
# texture mode): colour stains 1.000 on brick/grass/gravel/gear/washer with 2, while 4 (32 px)
# dropped gear/washer to 0.88/0.96; 4 helped intensity stains on the photo textures a little
# (0.51/0.58/0.66 -> 0.59/0.75/0.69) but not on parts.
WINDOW = 2
RIDGE = 1e-3  # added to the covariance diagonal, relative to the mean variance
SHRINK = 0.2  # aligned mode: weight of the average covariance in each cell's covariance
SCALE_QUANTILE = 0.999  # quantile of the good validation maps' values that maps to 1
MEAN_EPS = 1e-6  # guards the division by a black image's median cell
SIZE_MULTIPLE = 2 * GRID  # image sizes the grid fits: a whole, even stride per cell
# local mode, measured once with a scratch script (not in the repository). Colour map alone on
# the benchmark (seed 0, image AUROC, aligned -> radius 1 / 2):
# pcb colour stains 0.64 -> 0.86 / 0.87, intensity stains 0.56 -> 0.84 / 0.84; scratches on
# brick 0.70 -> 1.00 / 1.00, gravel 0.36 -> 0.71 / 0.87. Radius 2 has 25 candidates per training
# image and cell instead of 9: 4 ms instead of 0.5 ms on ONNX Runtime CPU at 64 images.
RADIUS = 1
# Training images whose cells are kept, evenly spaced when there are more. The cost grows with
# it (README, "Colour map"); 32 instead of 64 lost 0.013 mean image AUROC on the benchmark's
# three seeds (pcb 0.034), fitted post hoc to the same checkpoints.
MAX_BANK_IMAGES = 64
# The fusion scales are measured on the validation images AND on their JPEG copies at this
# quality, so that a live frame's compression (an MJPG camera, an RTSP stream) does not fire the
# gate. Without them, JPEG q85 copies of good test images scored a median 5-103x their lossless
# originals with `local` on the benchmark's photo textures and gear, every one above the best
# good PNG (its nearest-colour distances are far below the codec's colour error). With them
# (benchmark, seeds 0-2, fitted post hoc to the same checkpoints), `local` is +0.019 mean image
# AUROC over `aligned` (colour stains 0.92 -> 0.98, pcb 0.62 -> 0.88), 0.017 below its PNG-only
# fit, and its JPEG copies exceed the best good PNG about as often as `aligned`'s (0.45 vs 0.41
# of them: STPM's own map moves that much). benchmarks/reports/*/quality/colour_gate_jpeg.md.
# 0 = the validation images only (lines whose live frames are lossless like the training
# images; checkpoints fitted before the setting).
GATE_JPEG_QUALITY = DEFAULT_COLOUR_GATE_JPEG


@dataclass(frozen=True)
class ColourStats:
    """The fitted constants; stored as ``payload["colour_map"]`` in a checkpoint.

    ``mean`` is (3, g, g) float32 (aligned, g = GRID) or (3, 1, 1) (texture); ``precision`` the
    inverse covariance (3, 3, g, g) or (3, 3, 1, 1); the scales are the fusion divisors. In
    ``local`` mode ``mean`` holds the whitened candidate colours (K, 3, g, g) and ``precision``
    the whitening matrix W (3, 3, 1, 1), ``W^T W`` = the texture-mode precision.
    """

    mode: str
    mean: torch.Tensor
    precision: torch.Tensor
    stpm_scale: float = 1.0
    colour_scale: float = 1.0
    centre: torch.Tensor | None = None  # local mode: (3, 1, 1), the colour W is centred on
    gate_jpeg: int = 0  # the scales' JPEG copies (GATE_JPEG_QUALITY); 0 = none (older fits)

    # local mode's names for what its two tensors hold (the payload keeps the keys of the other
    # modes, so every checkpoint's entry has one shape of dict)
    @property
    def candidates(self) -> torch.Tensor:
        """``local`` mode: the whitened candidate colours (K, 3, g, g), stored as ``mean``."""
        self._require_local("candidates")
        return self.mean

    @property
    def whiten(self) -> torch.Tensor:
        """``local`` mode: the whitening matrix W (3, 3, 1, 1), stored as ``precision``."""
        self._require_local("whiten")
        return self.precision

    def _require_local(self, name: str) -> None:
        if self.mode != "local":
            # a programming error, not a user's: the attribute does not exist in this mode
            raise AttributeError(f"ColourStats.{name} is local mode's; this is mode {self.mode!r}")

    def to_payload(self) -> dict[str, Any]:
        entry = {
            "mode": self.mode,
            "grid": GRID,
            "mean": self.mean.float().clone(),
            "precision": self.precision.float().clone(),
            "stpm_scale": float(self.stpm_scale),
            "colour_scale": float(self.colour_scale),
            "gate_jpeg": int(self.gate_jpeg),
        }
        if self.centre is not None:
            entry["centre"] = self.centre.float().clone()
        return entry

    @classmethod
    def from_payload(cls, entry: dict[str, Any], source: str = "checkpoint") -> ColourStats:
        try:
            stats = cls(
                mode=str(entry["mode"]),
                mean=torch.as_tensor(entry["mean"], dtype=torch.float32),
                precision=torch.as_tensor(entry["precision"], dtype=torch.float32),
                stpm_scale=float(entry["stpm_scale"]),
                colour_scale=float(entry["colour_scale"]),
                centre=None
                if entry.get("centre") is None
                else torch.as_tensor(entry["centre"], dtype=torch.float32),
                gate_jpeg=int(entry.get("gate_jpeg", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                note(f"{source}: malformed {PAYLOAD_KEY!r} entry ({exc!r})", _REFIT)
            ) from exc
        shapes_ok = _shapes_fit(stats)
        if stats.mode not in COLOUR_MODES or not shapes_ok or int(entry.get("grid", GRID)) != GRID:
            raise CheckpointError(
                note(
                    f"{source}: {PAYLOAD_KEY!r} entry of mode {stats.mode!r} with mean "
                    f"{tuple(stats.mean.shape)} and grid {entry.get('grid')} is not readable here",
                    _REFIT,
                )
            )
        return stats


def _shapes_fit(stats: ColourStats) -> bool:
    mean, precision = tuple(stats.mean.shape), tuple(stats.precision.shape)
    if stats.mode == "local":  # (K, 3, g, g) candidates, K >= 1, W and the centre
        centre = None if stats.centre is None else tuple(stats.centre.shape)
        return (
            mean[1:] == (3, GRID, GRID)
            and mean[0] >= 1
            and precision == (3, 3, 1, 1)
            and centre == (3, 1, 1)
        )
    cells = 1 if stats.mode == "texture" else GRID
    return mean == (3, cells, cells) and precision == (3, 3, cells, cells)


_REFIT = "re-fit it with `stpm-colour CKPT --mode texture --out NEW.ckpt`"


def grids(image_size: int) -> bool:
    """Whether the grid fits ``image_size``: a whole, even stride (so the padding centres the
    cells exactly)."""
    return image_size % SIZE_MULTIPLE == 0


def check_image_size(image_size: int) -> None:
    """:func:`grids`, or a :class:`ConfigError` naming the sizes that do."""
    if not grids(image_size):
        raise ConfigError(
            note(
                f"the colour map needs an image size divisible by {SIZE_MULTIPLE}, got {image_size}",
                "use e.g. 256, 320 or 512, or leave the colour map off",
            )
        )


# --------------------------------------------------------------------------- the maths


def cell_window(image_size: int) -> int:
    """The side of one cell's box window in input pixels: ``WINDOW`` strides of ``size / GRID``."""
    check_image_size(image_size)
    return WINDOW * (image_size // GRID)


def cell_colours(rgb: torch.Tensor, window: int) -> torch.Tensor:
    """RGB image (B, 3, H, W), any positive per-channel scale -> (B, 3, g, g) float32 cells,
    each divided by the image's median cell per channel (so the scale itself cancels).

    A cell is the mean of a ``window``-pixel box at stride ``window / WINDOW``, computed as two
    average poolings: stride-sized blocks, then ``WINDOW x WINDOW`` neighbouring blocks. The same
    box mean as one ``window``-wide depthwise convolution (tested), but every pixel is read once:
    ONNX Runtime spent 0.31 ms on that convolution, most of the colour map's cost.
    """
    stride = window // WINDOW
    x = F.pad(rgb.float(), ((window - stride) // 2,) * 4, mode="reflect")
    blocks = F.avg_pool2d(x, stride)  # the padded side is a multiple of the stride
    cells = F.avg_pool2d(blocks, WINDOW, stride=1)
    return cells / torch.clamp(median_cell(cells), min=MEAN_EPS)


def median_cell(cells: torch.Tensor) -> torch.Tensor:
    """(B, 3, g, g) -> (B, 3, 1, 1): per channel the median cell (the upper one of an even count).

    A median, not a mean: a large stain would move the mean and with it every other cell's
    colour; the median ignores any stain smaller than half the frame. TopK + Slice, as TensorRT
    parses them (K = g^2 / 2 = 512, below its TopK limit).
    """
    flat = cells.flatten(2)
    k = int(flat.shape[-1]) // 2
    return flat.topk(k, dim=2).values[:, :, k - 1 :].unsqueeze(-1)


def mahalanobis(cells: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B, 3, g, g) cells, mean (1, 3, g|1, g|1), precision (1, 3, 3, g|1, g|1) -> (B, 1, g, g).

    The constants come in the shapes they broadcast in, so that the exported graph uses them as
    they are: named initializers (``colour.mean``, ``colour.precision``), not folded copies.

    ``d^T P d`` per cell, as broadcast multiplies and channel sums (no MatMul on 5-D tensors, so
    every runtime takes it); ``P`` is symmetric positive definite, so the result is >= 0.
    """
    d = cells - mean
    pd = torch.sum(precision * d.unsqueeze(1), dim=2)  # (B, 3, g, g): P d
    return torch.sum(d * pd, dim=1, keepdim=True)


def local_distance(
    cells: torch.Tensor,
    centre: torch.Tensor,
    whiten: torch.Tensor,
    bank: torch.Tensor,
    bank_norm: torch.Tensor,
) -> torch.Tensor:
    """``local`` mode: (B, 3, g, g) cells -> (B, 1, g, g), each cell's squared distance to its
    nearest candidate colour, in whitened units.

    ``centre`` (1, 3, 1, 1) is the good cells' mean colour and ``whiten`` (1, 3, 3, 1, 1) W: the
    cells are compared as ``z = W (cell - centre)``, a few units from 0 (uncentred, |z|^2 ran to
    1e4 and float32 rounding of the expansion below reached 1e-3, a good cell's whole distance).
    ``bank`` (g*g, 3, K) holds ``-2 c`` of each cell's K whitened candidates ``c`` and
    ``bank_norm`` (g*g, 1, K) their ``|c|^2``, so that ``|z - c|^2 = |z|^2 + (-2 c).z + |c|^2``
    is one batched MatMul per cell (1 x 3 by 3 x K) and a ReduceMin:
    broadcasting the difference instead wrote (B, K, 3, g, g) floats and ran 10x slower on ONNX
    Runtime. Clamped at 0, which rounding can undercut where a colour equals a candidate.
    """
    z = torch.sum(whiten * (cells - centre).unsqueeze(1), dim=2)  # (B, 3, g, g)
    g = int(cells.shape[-1])
    q = z.flatten(2).permute(2, 0, 1)  # (g*g, B, 3)
    nearest = torch.amin(torch.matmul(q, bank) + bank_norm, dim=2)  # (g*g, B)
    d = torch.clamp(nearest + torch.sum(q * q, dim=2), min=0.0)
    return d.permute(1, 0).reshape(-1, 1, g, g)


class ColourMap(nn.Module):
    """The fitted colour map as a module; its buffers become the graph's ``colour.*`` constants.

    ``mean``/``std`` are the model's input normalisation, to undo it on a normalised input.
    """

    def __init__(
        self, stats: ColourStats, image_size: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.stats = stats
        # in the graph: initializers colour.<buffer> (the submodule's name is part of them)
        self.window = cell_window(image_size)
        if stats.mode == "local":  # colour.centre, colour.whiten, colour.bank, colour.bank_norm
            candidates = stats.candidates.float().flatten(2).permute(2, 1, 0)  # (g*g, 3, K)
            assert stats.centre is not None, "local mode has a centre (from_payload checks it)"
            self.register_buffer("centre", stats.centre.float().clone().unsqueeze(0))
            self.register_buffer("whiten", stats.whiten.float().clone().unsqueeze(0))
            self.register_buffer("bank", -2.0 * candidates.contiguous())
            self.register_buffer("bank_norm", (candidates * candidates).sum(1, keepdim=True))
        else:  # colour.mean, colour.precision
            self.register_buffer("mean", stats.mean.float().clone().unsqueeze(0))
            self.register_buffer("precision", stats.precision.float().clone().unsqueeze(0))
        self.register_buffer("stpm_scale", torch.tensor(float(stats.stpm_scale)))
        self.register_buffer("scale", torch.tensor(float(stats.colour_scale)))
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def mode(self) -> str:
        return self.stats.mode

    def rgb_from_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input (B, 3, H, W) ``(rgb - mean) / std`` -> RGB in [0, 1], float32."""
        return x.float() * self.input_std + self.input_mean

    def cells(self, rgb: torch.Tensor) -> torch.Tensor:
        return cell_colours(rgb, self.window)

    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """Cells (B, 3, g, g) -> colour map (B, 1, g, g) float32, by the mode."""
        if self.mode == "local":
            return local_distance(cells, self.centre, self.whiten, self.bank, self.bank_norm)
        return mahalanobis(cells, self.mean, self.precision)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) float, any positive scale -> colour map (B, 1, g, g) float32."""
        return self.distance(self.cells(rgb))

    def fuse(self, stpm_map: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """The STPM map on the good-image scale plus the colour map's excess over it: (B, 1, h, w)
        float32 on the STPM map's grid (the grid it is scored on, before the output upsampling).

        Gated, not summed: on the benchmark (seed 0, image AUROC, top-1 % score) a plain sum of
        the two scaled maps lifted colour stains to 1.000 but dropped gravel's contamination,
        crack and scratch from 0.62/0.67/0.64 to 0.41-0.47 (the colour map's own noise decided
        the good images' scores); gated at the 0.999 quantile they stay at 0.62/0.67/0.64 with
        colour stains still at 1.000. A max of the two scaled maps was in between.
        """
        excess = torch.relu(colour / self.scale - 1.0)
        up = am.upsample(excess, tuple(int(s) for s in stpm_map.shape[-2:]))
        return stpm_map.float() / self.stpm_scale + up

    def from_graph_input(
        self, image: torch.Tensor, input_format: str, color_order: str
    ) -> torch.Tensor:
        """The colour map of the exported graph's input -> (B, 1, g, g) float32.

        uint8 (B, H, W, 3) in ``color_order``: cast and pooled as it comes (0-255; the median
        ratio cancels the scale), the channels put in RGB order on the small grid, not the frame.
        float32 (B, 3, H, W): the model's normalised input.
        """
        if input_format == "float32_nchw":
            return self(self.rgb_from_normalised(image))
        cells = self.cells(image.float().permute(0, 3, 1, 2))
        if color_order == "BGR":
            cells = cells.flip(1)
        return self.distance(cells)

    def of_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """The colour map of the model's normalised input (what ``STPM.score_map`` receives)."""
        return self(self.rgb_from_normalised(x))

    def fuser(self, colour: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``grid map -> fused map`` with this image batch's colour map: what
        ``anomaly_map.score_map`` applies to the STPM map before scoring it."""
        return lambda stpm_map: self.fuse(stpm_map, colour)


def colour_map_from_payload(payload: dict[str, Any], config: Any, source: str) -> ColourMap | None:
    """The checkpoint's colour map for a model of ``config``, or None when it has none."""
    entry = payload.get(PAYLOAD_KEY)
    if not entry:
        return None
    stats = ColourStats.from_payload(entry, source)
    return ColourMap(stats, config.image_size, config.mean, config.std)


def describe(colour: ColourMap | None) -> dict[str, Any]:
    """What the ONNX metadata and reports say about it (``stpm.colour_map``)."""
    if colour is None:
        return {"mode": "off"}
    return {
        "mode": colour.mode,
        "grid": GRID,
        "stpm_scale": float(colour.stats.stpm_scale),
        "colour_scale": float(colour.stats.colour_scale),
        "scale_quantile": SCALE_QUANTILE,
        "gate_jpeg": int(colour.stats.gate_jpeg),
    }


# --------------------------------------------------------------------------- fitting


def fit_statistics(cells: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Good images' cells (N, 3, g, g) -> (mean, precision) of ``mode`` (shapes: ColourStats).

    Fitted in float64: the colour covariance of a texture is nearly singular along the hue
    directions (that is exactly why a colour stain stands out), so the inverse needs the ridge
    and the precision.
    """
    if mode not in ("texture", "aligned"):  # local: ``statistics``
        raise ConfigError(
            note(f"colour map mode {mode!r} is unknown", f"use one of {COLOUR_MODES}")
        )
    c = cells.double()
    if c.shape[0] < 2:
        raise DataError(note("the colour map needs at least 2 good images", "add training images"))
    if mode == "texture":
        v = c.permute(0, 2, 3, 1).reshape(-1, 3)
        mean = v.mean(0)
        d = v - mean
        cov = (d.T @ d / len(v)).view(3, 3, 1, 1)
        mean = mean.view(3, 1, 1)
    else:
        mean = c.mean(0)
        d = c - mean
        cov = torch.einsum("nihw,njhw->ijhw", d, d) / len(c)
        average = cov.mean(dim=(2, 3), keepdim=True)
        cov = (1.0 - SHRINK) * cov + SHRINK * average
    cells_cov = cov.permute(2, 3, 0, 1)  # (h, w, 3, 3)
    ridge = RIDGE * torch.diagonal(cells_cov, dim1=-2, dim2=-1).mean()
    precision = torch.linalg.inv(cells_cov + ridge * torch.eye(3, dtype=c.dtype))
    precision = 0.5 * (precision + precision.transpose(-1, -2))  # exactly symmetric
    return mean.float(), precision.permute(2, 3, 0, 1).contiguous().float()


def statistics(cells: torch.Tensor, mode: str) -> ColourStats:
    """Good images' cells (N, 3, g, g) -> the unscaled :class:`ColourStats` of ``mode``."""
    if mode == "local":
        return local_candidates(cells)
    mean, precision = fit_statistics(cells, mode)
    return ColourStats(mode, mean, precision)


def local_candidates(cells: torch.Tensor) -> ColourStats:
    """``local`` mode's constants from good cells (N, 3, g, g): the whitened candidates
    (K, 3, g, g), K = images x (2 RADIUS + 1)^2 (each training cell and its neighbours within
    RADIUS, edge cells repeated), W (3, 3, 1, 1) and the centre (3, 1, 1), from the texture-mode
    statistics (float64 until stored)."""
    centre, texture_precision = fit_statistics(cells, "texture")
    w = torch.linalg.cholesky(texture_precision[:, :, 0, 0].double()).T  # W^T W = P
    keep = np.unique(np.linspace(0, len(cells) - 1, MAX_BANK_IMAGES).round().astype(int))
    centred = cells[torch.from_numpy(keep)].double() - centre.double()
    bank = torch.einsum("ij,njhw->nihw", w, centred)
    g, r = int(cells.shape[-1]), RADIUS
    padded = F.pad(bank, (r, r, r, r), mode="replicate")
    shifts = [
        padded[:, :, r + dy : r + dy + g, r + dx : r + dx + g]
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
    ]
    return ColourStats(
        "local", torch.cat(shifts).float(), w.view(3, 3, 1, 1).float(), centre=centre
    )


def quantile_scale(maps: np.ndarray | torch.Tensor, quantile: float = SCALE_QUANTILE) -> float:
    """The ``quantile`` of all pixels of good images' maps: the value a normal pixel stays below."""
    values = np.asarray(maps, dtype=np.float64).reshape(-1)
    scale = float(np.quantile(values, quantile)) if values.size else 0.0
    if not np.isfinite(scale) or scale <= 0:
        raise DataError(
            note(
                f"cannot scale the colour map: the {quantile} quantile of the good maps is {scale}",
                "check the validation images (all identical or black?)",
            )
        )
    return scale


def stpm_grid_map(model: Any, x: torch.Tensor) -> torch.Tensor:
    """The model's own STPM map on its scoring grid (the map the colour map is fused with) of the
    normalised input ``x`` (B, 3, H, W) -> (B, 1, h, w) float32."""
    teacher, student = model.features(x)
    cfg = model.config
    size = (int(x.shape[-2]), int(x.shape[-1]))
    return am.anomaly_map(teacher, student, size, cfg.blur_sigma, cfg.map_resolution)[0]


@torch.no_grad()
def stpm_scale(
    model: Any, val_images: np.ndarray, device: str | torch.device = "cpu", batch_size: int = 8
) -> float:
    """The STPM side's fusion scale: the quantile of the model's grid maps on good images."""
    from stpm_edge.runtime.image import normalize

    cfg, maps = model.config, []
    for b in _batches(val_images, batch_size):
        x = torch.from_numpy(normalize(b, cfg.mean, cfg.std)).to(device)
        maps.append(stpm_grid_map(model, x).cpu().numpy())
    return quantile_scale(np.concatenate(maps))


def _batches(images: np.ndarray, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def scale_images(val_images: np.ndarray, gate_jpeg: int) -> np.ndarray:
    """The images the fusion scales are measured on: the validation images, plus their JPEG
    copies at ``gate_jpeg`` when it is not 0 (see ``GATE_JPEG_QUALITY``)."""
    if not gate_jpeg:
        return val_images
    from stpm_edge.runtime.image import jpeg_round_trip

    return np.concatenate([val_images, jpeg_round_trip(val_images, gate_jpeg)])


@torch.no_grad()
def fit_colour_map(
    model: Any,
    train_images: np.ndarray,
    val_images: np.ndarray,
    mode: str,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    gate_jpeg: int = GATE_JPEG_QUALITY,
) -> ColourMap:
    """Fit a colour map for ``model`` (an :class:`~stpm_edge.model.STPM`) from good images.

    Statistics come from ``train_images``, the fusion scales from ``val_images`` (held out, so
    the colour map's over-fit to its own training cells does not shrink its scale) and their JPEG
    copies at ``gate_jpeg`` (0: none); both are uint8 RGB (N, S, S, 3) at the model's size. The
    STPM scale is measured on the model's own map on its scoring grid, without any colour map, so
    fitting twice gives the same result.
    """
    cfg = model.config
    window = cell_window(cfg.image_size)

    def rgb(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.moveaxis(batch, -1, 1).astype(np.float32) / 255.0)

    cells = torch.cat([cell_colours(rgb(b), window) for b in _batches(train_images, batch_size)])
    unscaled = statistics(cells, mode)
    colour = ColourMap(unscaled, cfg.image_size, cfg.mean, cfg.std)
    scaled_on = scale_images(val_images, gate_jpeg)
    colour_maps = [colour(rgb(b)).numpy() for b in _batches(scaled_on, batch_size)]
    stats = replace(
        unscaled,
        stpm_scale=stpm_scale(model, scaled_on, device, batch_size),
        colour_scale=quantile_scale(np.concatenate(colour_maps)),
        gate_jpeg=int(gate_jpeg),
    )
    logger.info(
        "colour map (%s) fitted on %d good images, scaled on %d (JPEG copies: %s): "
        "STPM %.4g, colour %.4g",
        mode,
        len(train_images),
        len(val_images),
        f"quality {gate_jpeg}" if gate_jpeg else "none",
        stats.stpm_scale,
        stats.colour_scale,
    )
    return ColourMap(stats, cfg.image_size, cfg.mean, cfg.std).to(device)


# --------------------------------------------------------------------------- checkpoints


def good_images(paths: Sequence[Any], image_size: int) -> np.ndarray:
    """Image files -> uint8 RGB (N, S, S, 3), resized as training and evaluation resize them."""
    from stpm_edge.runtime.image import read_image, resize_image

    return np.stack([resize_image(read_image(p), image_size) for p in paths])


def validation_images(payload: dict[str, Any], image_size: int) -> np.ndarray:
    """The checkpoint's validation images (``val_paths``) as uint8 RGB (N, S, S, 3)."""
    val_paths = [Path(p) for p in payload.get("val_paths") or []]
    missing = [p for p in val_paths if not p.is_file()]
    if not val_paths or missing:
        where = missing[0] if missing else "none recorded"
        raise DataError(
            note(
                f"the checkpoint's validation images are not here ({where})",
                "fit the colour map where the training data lives, on a checkpoint written by "
                "stpm-train (its best.ckpt records them)",
            )
        )
    return good_images(val_paths, image_size)


def fit_for_checkpoint(
    payload: dict[str, Any],
    model: Any,
    mode: str,
    device: str = "cpu",
    batch_size: int = 8,
    gate_jpeg: int = GATE_JPEG_QUALITY,
) -> ColourMap:
    """A colour map for a trained checkpoint: statistics from its training images (its recorded
    data and split), scales from its validation images (``val_paths``) and their JPEG copies at
    ``gate_jpeg``. The student is untouched.
    """
    from stpm_edge.tune import original_train

    size = model.config.image_size
    val = validation_images(payload, size)
    train = good_images([s.path for s in original_train(payload)], size)
    return fit_colour_map(model, train, val, mode, device, batch_size, gate_jpeg)


def rescaled(payload: dict[str, Any], model: Any, device: str = "cpu", batch_size: int = 8):
    """``model``'s colour map with the STPM scale re-measured for the model's current map
    settings (``stpm-eval --blur-sigma ...`` changes the STPM map's magnitude; the colour
    statistics do not depend on it). The validation images come from ``payload``, with the JPEG
    copies the colour map was fitted with."""
    cfg = model.config
    images = scale_images(validation_images(payload, cfg.image_size), model.colour.stats.gate_jpeg)
    scale = stpm_scale(model, images, device, batch_size)
    stats = replace(model.colour.stats, stpm_scale=scale)
    return ColourMap(stats, cfg.image_size, cfg.mean, cfg.std).to(device)


def write_with_colour_map(
    checkpoint: Any,
    out: Any,
    mode: str,
    device: str = "cpu",
    batch_size: int = 8,
    force: bool = False,
    gate_jpeg: int = GATE_JPEG_QUALITY,
) -> dict[str, Any]:
    """``stpm-colour``: a new checkpoint with the colour map of ``mode`` ("off" removes it), its
    score baseline (if any) refitted to the new map, and thresholds re-calibrated on it (by the
    checkpoint's calibration source)."""
    from stpm_edge.posthoc import rewrite_checkpoint
    from stpm_edge.score_baseline import refitted

    def change(payload: dict[str, Any], model: Any) -> None:
        model.colour = (
            None
            if mode == "off"
            else fit_for_checkpoint(payload, model, mode, device, batch_size, gate_jpeg)
        )
        model.baseline = refitted(payload, model, device, batch_size)

    what = f"the colour map ({mode})"
    return rewrite_checkpoint(checkpoint, out, change, what, device, batch_size, force)
