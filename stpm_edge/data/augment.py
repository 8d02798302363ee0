"""Training augmentation by category kind (``stpm-train --augment``), on normalised batches.

- ``none``: the images as they are (the paper's recipe; the teacher-feature cache stays on).
- ``texture``: stationary textures, where position and orientation carry no meaning: horizontal
  and vertical flips, a rotation by k x 90 degrees, and a crop of 85-100 % of the side resized back
  to the input size (a small change of scale and position). No wrap-around shift: its seam would
  be a defect-like line.
- ``object``: aligned objects, whose position matters: brightness and contrast within
  ±``OBJECT_JITTER`` and a shift of at most ``OBJECT_MAX_SHIFT`` of the side (3 px at 256 px), the
  border pixels repeated. Nothing that moves a part further than the test images' own jitter.
- ``jpeg`` (``--augment-jpeg P``, with any kind or alone): each image, with probability P, goes
  through a JPEG round trip at a quality drawn from ``JPEG_QUALITIES``, after the kind's changes:
  the student learns the teacher's features of compressed frames too, which MJPG cameras and
  RTSP streams deliver.

The batch is ``float32 (B, 3, S, S)``, normalised as ``(x / 255 - mean) / std``; photometric
changes are made in ``[0, 1]`` pixel units and clipped there, so every output is a valid
normalised image. Each image's parameters come from numpy's generator seeded with
``(seed, epoch, dataset index)``: an image's augmentation does not depend on the batch it lands
in, and a run resumed at an epoch redraws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "texture", "object")
TEXTURE_MIN_CROP = 0.85  # share of the side kept by the crop-resize
OBJECT_JITTER = 0.08  # brightness and contrast factors drawn from [1 - j, 1 + j]
OBJECT_MAX_SHIFT = 3 / 256  # of the side: 3 px at 256 px, at least 1 px
# JPEG qualities drawn for --augment-jpeg (inclusive). Benchmark seed 0, seven categories, P 0.5:
# JPEG q85 copies of good test images scoring above every good PNG 44 % -> 11 % of them, mean
# image AUROC on the lossless test images 0.820 -> 0.812; one seed, so not a default
# (benchmarks/reports/*/quality/augment_jpeg_seed0).
JPEG_QUALITIES = (70, 95)


def augments(kind: str, jpeg: float = 0.0) -> bool:
    """Whether ``kind`` and a JPEG share ``jpeg`` change the training images at all (then every
    epoch sees new images: no cached teacher features, ``make_augment`` returns an Augment)."""
    return kind != "none" or bool(jpeg)


class Augment:
    """``augment(x, indices, epoch)``: the augmented batch, a new tensor of ``x``'s shape."""

    def __init__(
        self,
        kind: str,
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
        jpeg: float = 0.0,
    ) -> None:
        if kind not in AUGMENTATIONS or not augments(kind, jpeg):
            raise ValueError(f"unknown augmentation {kind!r}; expected one of {AUGMENTATIONS[1:]}")
        if not 0.0 <= jpeg <= 1.0:
            raise ValueError(f"JPEG augmentation share {jpeg} is not a probability")
        self.kind, self.seed, self.jpeg = kind, int(seed), float(jpeg)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, x: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """(B, 3, S, S) normalised float32, (B,) dataset indices -> (B, 3, S, S) float32."""
        kinds = {"texture": self._texture, "object": self._object}
        one = kinds.get(self.kind, lambda image, rng: image)
        out = [one(image, self._rng(epoch, int(i))) for image, i in zip(x, indices, strict=True)]
        if self.jpeg:  # its own stream: the kind's draws stay what they were without it
            out = [
                self._jpeg(image, self._rng(epoch, int(i), 1))
                for image, i in zip(out, indices, strict=True)
            ]
        return torch.stack(out)

    def _rng(self, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
        key = [self.seed, int(epoch), index] + ([stream] if stream else [])
        return np.random.default_rng(key)

    def _jpeg(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """With probability ``self.jpeg``, the image as a JPEG of a drawn quality decodes it."""
        if rng.random() >= self.jpeg:
            return image
        from stpm_edge.runtime.image import jpeg_round_trip

        quality = int(rng.integers(JPEG_QUALITIES[0], JPEG_QUALITIES[1] + 1))
        mean, std = self._mean.to(image.device), self._std.to(image.device)
        pixels = ((image * std + mean).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        decoded = jpeg_round_trip(pixels.permute(1, 2, 0).cpu().numpy()[None], quality)[0]
        back = torch.from_numpy(decoded).permute(2, 0, 1).to(image.device, torch.float32)
        return (back / 255.0 - mean) / std

    @staticmethod
    def _texture(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if rng.random() < 0.5:
            image = image.flip(-1)
        if rng.random() < 0.5:
            image = image.flip(-2)
        image = torch.rot90(image, int(rng.integers(4)), dims=(-2, -1))
        size = image.shape[-1]
        side = int(round(size * rng.uniform(TEXTURE_MIN_CROP, 1.0)))
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if side == size:
            return image.contiguous()
        crop = image[None, :, top : top + side, left : left + side]
        # bilinear interpolation stays within the crop's own value range
        return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]

    def _object(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        brightness, contrast = rng.uniform(1 - OBJECT_JITTER, 1 + OBJECT_JITTER, size=2)
        size = image.shape[-1]
        limit = max(1, int(round(size * OBJECT_MAX_SHIFT)))
        dy, dx = (int(v) for v in rng.integers(-limit, limit + 1, size=2))
        mean, std = self._mean.to(image.device), self._std.to(image.device)
        pixels = image * std + mean  # [0, 1] pixel units
        grey = pixels.mean()
        pixels = ((pixels - grey) * float(contrast) + grey) * float(brightness)
        image = (pixels.clamp(0.0, 1.0) - mean) / std
        padded = F.pad(image[None], (limit, limit, limit, limit), mode="replicate")[0]
        return padded[:, limit - dy : limit - dy + size, limit - dx : limit - dx + size]


def make_augment(
    kind: str, seed: int, mean: Sequence[float], std: Sequence[float], jpeg: float = 0.0
) -> Augment | None:
    """The augmentation ``kind`` names (plus JPEG round trips with probability ``jpeg``), or
    ``None`` for ``"none"`` without them (the batch is used as is)."""
    return Augment(kind, seed, mean, std, jpeg) if augments(kind, jpeg) else None
