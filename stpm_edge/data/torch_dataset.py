"""Samples -> normalised tensors for training and evaluation.

Each item of ``ImageDataset`` is a dict::

    {"image": float32 (3, S, S)  RGB, (x / 255 - mean) / std,
     "label": int                0 good, 1 defect,
     "mask":  float32 (1, S, S)  1.0 = defect pixel (only with with_masks=True),
     "index": int                position in the sample list}

``preprocess`` is the one numpy implementation of resize + normalise; the dataset and any other
caller (evaluation on arrays, tests) use it, so they all see the same pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from stpm_edge.data.io import read_image, read_mask
from stpm_edge.data.mvtec import Sample
from stpm_edge.errors import DataError, note

logger = logging.getLogger(__name__)


def resize_image(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """Resize ``uint8 (H, W, 3)`` to ``uint8 (S, S, 3)`` with bilinear interpolation.

    INTER_LINEAR on purpose (not INTER_AREA): the deployed graph and the runtime resize camera
    frames bilinearly, so training and deployment see the same pixels.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(
            note(
                "preprocess expects an RGB image",
                f"expected uint8 (H, W, 3), got {rgb.dtype} {tuple(rgb.shape)}",
            )
        )
    if rgb.shape[:2] == (image_size, image_size):
        return rgb
    return cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_LINEAR)


def normalize(rgb_resized: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``uint8 (S, S, 3)`` RGB -> ``float32 (3, S, S)`` as ``(x / 255 - mean) / std``."""
    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    chw = rgb_resized.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray((chw - mean_a) / std_a, dtype=np.float32)


def preprocess(
    rgb_uint8: np.ndarray, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Resize and normalise one image.

    Args:
        rgb_uint8: ``uint8 (H, W, 3)`` RGB.
        image_size: output side S.
        mean, std: per-channel RGB statistics in ``[0, 1]`` units (the weights' normalisation).

    Returns:
        ``float32 (3, S, S)``.
    """
    return normalize(resize_image(rgb_uint8, image_size), mean, std)


def resize_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """``bool (H, W)`` -> ``float32 (1, S, S)`` in {0, 1}, nearest neighbour (no new values)."""
    resized = cv2.resize(
        mask.astype(np.uint8), (image_size, image_size), interpolation=cv2.INTER_NEAREST
    )
    return resized[None].astype(np.float32)


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
