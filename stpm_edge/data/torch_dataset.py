"""Samples -> normalised tensors for training and evaluation.

Each item of ``ImageDataset`` is a dict::

    {"image": float32 (3, S, S)  RGB, (x / 255 - mean) / std,
     "label": int                0 good, 1 defect,
     "mask":  float32 (1, S, S)  1.0 = defect pixel (only with with_masks=True),
     "index": int                position in the sample list}

Reading, resizing and normalising are ``stpm_edge.runtime.image``'s (the module the runtime
uses too), so training, evaluation, export and the deployed detector see the same pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from stpm_edge.data.mvtec import Sample
from stpm_edge.errors import DataError, note
from stpm_edge.runtime import image
from stpm_edge.runtime.image import normalize, read_image, read_mask, resize_image

__all__ = ["ImageDataset", "normalize", "preprocess", "resize_image", "resize_mask"]

logger = logging.getLogger(__name__)


def preprocess(
    rgb_uint8: np.ndarray, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Resize and normalise one uint8 RGB image -> ``float32 (3, S, S)`` (the image module's
    :func:`resize_image` and :func:`normalize`, the runtime's too)."""
    return normalize(resize_image(rgb_uint8, image_size), mean, std)


def resize_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """``bool (H, W)`` -> ``float32 (1, S, S)`` in {0, 1}, nearest neighbour (no new values)."""
    return image.resize_mask(mask, image_size)[None].astype(np.float32)


class ImageDataset(Dataset):
    """A torch Dataset over ``Sample`` objects.

    Args:
        samples: the samples (from ``MVTecCategory`` / ``ImageFolderSource``).
        image_size: side S of the square network input.
        mean, std: RGB normalisation in ``[0, 1]`` units.
        with_masks: also return ``"mask"`` (all zeros for a sample without a mask).
        cache: keep decoded, resized uint8 images (and masks) in memory after the first read;
            worth it for small datasets on few CPU cores (3 * S * S bytes per image).

    Raises (on item access):
        DataError: a corrupt file, or a mask whose size differs from its image.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        with_masks: bool = False,
        cache: bool = False,
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise DataError(
                note(
                    "invalid normalisation",
                    f"expected 3 means and 3 positive stds, got {mean}, {std}",
                )
            )
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.with_masks = with_masks
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Resized ``uint8 (S, S, 3)`` image and ``float32 (1, S, S)`` mask (or None)."""
        if index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        rgb = read_image(sample.path)
        mask = None
        if self.with_masks:
            if sample.mask_path is None:
                mask = np.zeros((1, self.image_size, self.image_size), np.float32)
            else:
                full = read_mask(sample.mask_path)
                if full.shape != rgb.shape[:2]:
                    raise DataError(
                        note(
                            f"mask {sample.mask_path} is {full.shape[1]}x{full.shape[0]} but its "
                            f"image {sample.path} is {rgb.shape[1]}x{rgb.shape[0]} (WxH)",
                            "a mask must have exactly its image's size; re-export the mask",
                        )
                    )
                mask = resize_mask(full, self.image_size)
        item = (resize_image(rgb, self.image_size), mask)
        if self.cache:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        resized, mask = self._load(index)
        item: dict[str, torch.Tensor | int] = {
            "image": torch.from_numpy(normalize(resized, self.mean, self.std)),
            "label": int(self.samples[index].label),
            "index": int(index),
        }
        if mask is not None:
            item["mask"] = torch.from_numpy(mask.copy())
        return item
