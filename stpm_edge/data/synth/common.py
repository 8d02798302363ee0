"""Helpers shared by the dataset builders: source photos, exact masks, seeded streams, PNG output.

The mask rule used everywhere: a pixel is defective exactly when some channel of the defective
image differs from the clean render by at least ``MASK_TOL`` grey levels; smaller changes are
undone, so every pixel outside the mask is byte-identical to the clean image.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from stpm_edge.errors import ConfigError, OutputExistsError, note

MASK_TOL = 3  # grey levels: a pixel changed by less is restored, so the mask is exact


@lru_cache(maxsize=16)
def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as read-only ``float32 (H, W)`` gray or ``(H, W, 3)`` RGB in [0, 1]."""
    import skimage.data  # local import: only the dataset builders need scikit-image

    array = getattr(skimage.data, name)().astype(np.float32) / np.float32(255.0)
    if array.ndim == 3:
        array = array[:, :, :3]
    array.setflags(write=False)
    return array


def random_crop(
    gray: np.ndarray,
    cols: tuple[int, int],
    crop_range: tuple[int, int],
    rng: np.random.Generator,
    size: int,
    rotate: bool,
) -> np.ndarray:
    """A random square crop of ``gray`` inside columns ``cols``, flipped (and turned by a multiple
    of 90 degrees when ``rotate``), resized bilinearly: ``float32 (size, size)``."""
    side = int(rng.integers(crop_range[0], crop_range[1] + 1))
    x0 = int(rng.integers(cols[0], cols[1] - side + 1))
    y0 = int(rng.integers(0, gray.shape[0] - side + 1))
    crop = gray[y0 : y0 + side, x0 : x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    turns = int(rng.integers(4))  # drawn even when unused, so the stream does not depend on rotate
    if rotate:
        crop = np.rot90(crop, turns)
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_LINEAR)


def blob(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """Irregular filled blob (radius with random low harmonics), hard edged: ``uint8 (S, S)`` 0/1."""
    margin = radius * 1.5 + 2
    cx, cy = rng.uniform(margin, size - margin, size=2)
    theta = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 4):
        r += rng.uniform(0.0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    pts = np.stack([cx + radius * r * np.cos(theta), cy + radius * r * np.sin(theta)], axis=1)
    support = np.zeros((size, size), np.uint8)
    cv2.fillPoly(support, [np.rint(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return support


def exact_change(clean: np.ndarray, changed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(defective, mask)``: ``changed`` with sub-``MASK_TOL`` changes undone, and the mask of
    pixels that still differ from ``clean`` (both ``uint8 (S, S, 3)``; mask ``bool (S, S)``)."""
    diff = np.abs(changed.astype(np.int16) - clean.astype(np.int16)).max(axis=2)
    mask = diff >= MASK_TOL
    out = changed.copy()
    out[~mask] = clean[~mask]
    return out, mask


def composite(
    clean: np.ndarray, alpha: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``target`` into ``clean`` and derive the exact mask.

    Args:
        clean: ``uint8 (S, S, 3)``; alpha: ``float32 (S, S)`` in [0, 1]; target: ``float32 (S, S, 3)``.

    Returns:
        ``(defective uint8 (S, S, 3), mask bool (S, S))`` where the mask is exactly the set of
        pixels that differ from ``clean`` (changes below ``MASK_TOL`` are undone).
    """
    a = alpha[:, :, None]
    blended = clean.astype(np.float32) * (1.0 - a) + target * a
    return exact_change(clean, np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def mean_change(clean: np.ndarray, defective: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the mask of the largest per-channel change, grey levels (0 for an empty mask)."""
    if not mask.any():
        return 0.0
    diff = np.abs(defective.astype(np.float32) - clean.astype(np.float32)).max(axis=2)
    return float(diff[mask].mean())


def image_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent random stream per image, keyed by seed and names (strings hashed stably)."""
    ints = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([seed, *ints]))


def write_png(path: Path, array: np.ndarray) -> None:
    """Write an RGB ``(H, W, 3)`` or single-channel ``(H, W)`` uint8 array as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"cv2.imwrite failed for {path}")


def spread_counts(total: int, names: Sequence[str]) -> dict[str, int]:
    """Spread ``total`` over ``names``, the first names taking the remainder."""
    k = len(names)
    return {t: total // k + (i < total % k) for i, t in enumerate(names)}


def prepare_output(out: Path, categories: Sequence[str], force: bool) -> None:
    """Create ``out``; a non-empty ``out`` needs ``force``, which then removes only the builder's
    own category folders and README.txt (never a whole user folder)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(note(f"{out} exists and is not a folder", "choose another --out"))
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputExistsError(
                note(f"output folder {out} is not empty", "choose another --out or pass --force")
            )
        for name in categories:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        (out / "README.txt").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def check_names(names: Sequence[str], available: Sequence[str], what: str) -> None:
    """Every name one of ``available`` (``ConfigError: unknown <what> '<name>'`` otherwise)."""
    for name in names:
        if name not in available:
            raise ConfigError(
                note(f"unknown {what} '{name}'", f"available: {', '.join(available)}")
            )


def check_counts(n_train: int, n_test_good: int, n_test_defect: int, image_size: int) -> None:
    """The image counts and size every builder accepts (``ConfigError`` naming the flag)."""
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise ConfigError(
            note(
                f"invalid counts n_train={n_train}, n_test_good={n_test_good}, "
                f"n_test_defect={n_test_defect}",
                "expected --n-train >= 1 and the test counts >= 0",
            )
        )
    if not 64 <= image_size <= 1024:
        raise ConfigError(
            note(f"invalid image size {image_size}", "expected --image-size 64..1024 pixels")
        )


def write_category(
    root: Path,
    n_train: int,
    n_test_good: int,
    defect_counts: dict[str, int],
    good: Callable[[str, int], np.ndarray],
    defective: Callable[[str, int], tuple[np.ndarray, np.ndarray]],
) -> dict[str, int]:
    """Write one category in MVTec AD layout under ``root``; returns the image count per split.

    ``good(split, i)`` renders good image ``i`` of ``"train"`` or ``"test"``; ``defective(defect,
    i)`` renders ``(image, bool mask)``. Called in file order, so each builder's streams (and so
    its bytes) stay what its own keys make them.
    """
    for i in range(n_train):
        write_png(root / "train" / "good" / f"{i:03d}.png", good("train", i))
    for i in range(n_test_good):
        write_png(root / "test" / "good" / f"{i:03d}.png", good("test", i))
    counts = {"train/good": n_train, "test/good": n_test_good}
    for defect, n in defect_counts.items():
        for i in range(n):
            image, mask = defective(defect, i)
            write_png(root / "test" / defect / f"{i:03d}.png", image)
            write_png(
                root / "ground_truth" / defect / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255
            )
        if n:
            counts[f"test/{defect}"] = n
    return counts
