"""A small MVTec-AD-layout demo dataset built offline from real texture photographs.

Source: scikit-image's bundled 512x512 grayscale photographs ``skimage.data.brick()``,
``grass()`` and ``gravel()`` (no download). Each category is one photograph:

- Columns ``[0, 296)`` feed the training images, columns ``[312, 512)`` the test images (good and
  defective), so no test image is a near-copy of a training image; a 16-px gap separates them.
  Train and test crops come from the same distribution: crop side 144-200 px (the same range for
  both, so the texture scale matches), resized bilinearly to ``image_size``, random flips (and 90
  degree rotations for the isotropic textures; brick keeps its vertical courses), a few percent of
  brightness / contrast / gamma jitter, then a fixed per-category colour tint (RGB-ish images).
- Synthetic defects on test crops, each in a small and a large variant, one folder per type:
  ``scratch`` (thin hard-edged polyline, bright on dark or dark on bright), ``hole`` (shaded dark
  ellipse), ``stain`` (coloured blob blended with alpha >= 0.35), ``patch`` (an irregular piece of
  another photograph pasted in).
- Masks are exact: ``mask = max_c |defective - clean| >= 3``, and every pixel outside the mask is
  byte-identical to the clean render. A defect is redrawn until its mean change over the mask is
  at least ``MIN_CONTRAST`` grey levels and it covers at least ``MIN_AREA_FRACTION`` of the image.

Output (PNG, RGB images, 0/255 single-channel masks)::

    OUT/README.txt
    OUT/<category>/train/good/000.png ...
    OUT/<category>/test/good/000.png ...
    OUT/<category>/test/<defect>/000.png ...
    OUT/<category>/ground_truth/<defect>/000_mask.png ...

Deterministic: the same arguments write byte-identical files (each image draws from its own
random stream keyed by seed, category, split and index).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from stpm_edge.data.synth.common import (
    MASK_TOL,
    blob,
    check_counts,
    check_names,
    composite,
    image_rng,
    mean_change,
    photo,
    prepare_output,
    random_crop,
    spread_counts,
    write_category,
)
from stpm_edge.data.synth.textures import CROP_RANGE, TEST_COLS, TEXTURE_SPECS, TRAIN_COLS
from stpm_edge.errors import ConfigError, note

logger = logging.getLogger(__name__)

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain", "patch")

PHOTO_SIDE = 512
# TRAIN_COLS / TEST_COLS / CROP_RANGE: the photo layout the benchmark's textures use too
JITTER = 0.04  # +-4 % brightness, contrast and gamma

MIN_CONTRAST = 30.0  # mean |change| over the mask, grey levels
MIN_AREA_FRACTION = 0.0008
MAX_ATTEMPTS = 40

# Mild colour per texture (multiplies the gray photo), so the images are RGB-ish, and whether a
# 90 degree turn keeps the product (brick courses are vertical in the photo): the benchmark's specs.
_TINTS = {name: tint for name, (tint, _) in TEXTURE_SPECS.items()}
_ROTATE = {name: rotate for name, (_, rotate) in TEXTURE_SPECS.items()}
_STAIN_COLOURS = np.array(
    [(96, 56, 24), (168, 74, 28), (40, 64, 170), (28, 30, 22), (205, 185, 40)], np.float32
)
_FOREIGN_PHOTOS = ("coffee", "rocket", "astronaut", "chelsea", "camera")
_SPLIT_IDS = {"train": 0, "test_good": 1, **{t: 2 + i for i, t in enumerate(DEFECT_TYPES)}}


# -- source photographs --------------------------------------------------------------------------
def _tinted(gray: np.ndarray, category: str) -> np.ndarray:
    """``float32 (H, W)`` gray in [0, 1] -> ``float32 (H, W, 3)`` RGB in [0, 255]."""
    return gray[:, :, None] * np.asarray(_TINTS[category], np.float32) * np.float32(255.0)


def _render_crop(
    category: str, cols: tuple[int, int], rng: np.random.Generator, size: int
) -> np.ndarray:
    """One random crop of the category photo from columns ``cols``: ``uint8 (size, size, 3)``."""
    crop = random_crop(photo(category), cols, CROP_RANGE, rng, size, _ROTATE[category])
    gamma, contrast, brightness = 1.0 + rng.uniform(-JITTER, JITTER, size=3)
    crop = np.clip(crop, 0.0, 1.0) ** gamma
    mean = float(crop.mean())
    crop = (crop - mean) * contrast + mean + (brightness - 1.0)
    rgb = _tinted(np.clip(crop, 0.0, 1.0).astype(np.float32), category)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# -- defect shapes ---------------------------------------------------------------------------------
def _scratch(clean: np.ndarray, rng: np.random.Generator, large: bool, category: str):
    size = clean.shape[0]
    scale = size / 256.0
    length = size * (rng.uniform(0.4, 0.7) if large else rng.uniform(0.15, 0.3))
    thickness = max(1, round(scale * (rng.integers(3, 6) if large else rng.integers(2, 4))))
    n_seg = int(rng.integers(2, 5))
    for _ in range(MAX_ATTEMPTS):  # redraw until the whole scratch lies inside the image
        point = rng.uniform(0.1 * size, 0.9 * size, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        pts = [point.copy()]
        for _ in range(n_seg):
            angle += rng.uniform(-0.5, 0.5)
            point = point + (length / n_seg) * np.array([np.cos(angle), np.sin(angle)])
            pts.append(point.copy())
        poly = np.rint(np.array(pts)).astype(np.int32)
        if poly.min() >= thickness and poly.max() < size - thickness:
            break
    support = np.zeros((size, size), np.uint8)
    cv2.polylines(support, [poly], False, 1, thickness=thickness, lineType=cv2.LINE_8)
    inside = support.astype(bool)
    local = float(clean[inside].mean()) if inside.any() else 128.0
    value = (
        rng.uniform(5, 30) if local > 110 else rng.uniform(225, 250)
    )  # contrast with surroundings
    target = np.full(clean.shape, value, np.float32)
    return support.astype(np.float32), target


def _hole(clean: np.ndarray, rng: np.random.Generator, large: bool, category: str):
    size = clean.shape[0]
    a = size * (rng.uniform(0.09, 0.15) if large else rng.uniform(0.04, 0.07))
    b = a * rng.uniform(0.6, 1.0)
    margin = a + 2
    cx, cy = rng.uniform(margin, size - margin, size=2)
    phi = rng.uniform(0, np.pi)
    support = np.zeros((size, size), np.uint8)
    cv2.ellipse(
        support,
        (round(cx), round(cy)),
        (round(a), round(b)),
        np.degrees(phi),
        0,
        360,
        1,
        thickness=-1,
        lineType=cv2.LINE_8,
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = ((xx - cx) * np.cos(phi) + (yy - cy) * np.sin(phi)) / a
    v = (-(xx - cx) * np.sin(phi) + (yy - cy) * np.cos(phi)) / b
    rho = np.clip(np.sqrt(u * u + v * v), 0.0, 1.0)
    light = rng.uniform(0, 2 * np.pi)
    lit_rim = np.clip(
        np.cos(light) * u + np.sin(light) * v, 0.0, None
    )  # one inner wall catches light
    value = rng.uniform(8, 25) + 40.0 * rho**2 + 35.0 * lit_rim * rho
    target = value[:, :, None] * np.array([1.0, 0.9, 0.8], np.float32)
    alpha = support * np.where(rho > 0.85, 1.0 - 2.5 * (rho - 0.85), 1.0)  # soft rim, >= 0.6
    return alpha.astype(np.float32), target.astype(np.float32)


def _stain(clean: np.ndarray, rng: np.random.Generator, large: bool, category: str):
    size = clean.shape[0]
    radius = size * (rng.uniform(0.10, 0.16) if large else rng.uniform(0.05, 0.08))
    support = blob(rng, size, radius)
    depth = cv2.distanceTransform(support, cv2.DIST_L2, 3)
    depth = np.clip(depth / max(float(depth.max()), 1.0) * 2.0, 0.0, 1.0)
    strength = rng.uniform(0.5, 0.7)
    alpha = support * strength * (0.7 + 0.3 * depth)  # >= 0.35 everywhere in the blob
    colour = _STAIN_COLOURS[int(rng.integers(len(_STAIN_COLOURS)))]
    target = np.broadcast_to(colour, clean.shape).astype(np.float32)
    return alpha.astype(np.float32), target


def _patch(clean: np.ndarray, rng: np.random.Generator, large: bool, category: str):
    size = clean.shape[0]
    radius = size * (rng.uniform(0.11, 0.17) if large else rng.uniform(0.06, 0.09))
    support = blob(rng, size, radius)
    others = [t for t in TEXTURES if t != category]
    name = (others + list(_FOREIGN_PHOTOS))[int(rng.integers(len(others) + len(_FOREIGN_PHOTOS)))]
    picture = photo(name)
    source = _tinted(picture, name) if name in TEXTURES else picture * np.float32(255.0)
    if source.ndim == 2:
        source = np.repeat(source[:, :, None], 3, axis=2)
    h, w = source.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) // 2 + 1))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    piece = np.ascontiguousarray(source[y0 : y0 + side, x0 : x0 + side])
    target = cv2.resize(piece, (size, size), interpolation=cv2.INTER_LINEAR)
    # The piece is stretched over the whole frame and shown through the blob only.
    return support.astype(np.float32), target.astype(np.float32)


_DEFECTS: dict[str, Callable] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "patch": _patch,
}


def _make_defect(
    clean: np.ndarray, defect: str, rng: np.random.Generator, large: bool, category: str
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a visible defect of type ``defect`` on ``clean``: ``(image uint8, mask bool)``."""
    size = clean.shape[0]
    min_area = max(8, int(MIN_AREA_FRACTION * size * size))
    for _ in range(MAX_ATTEMPTS):
        alpha, target = _DEFECTS[defect](clean, rng, large, category)
        out, mask = composite(clean, alpha, target)
        if int(mask.sum()) >= min_area and mean_change(clean, out, mask) >= MIN_CONTRAST:
            return out, mask
    raise AssertionError(f"could not draw a visible {defect} in {MAX_ATTEMPTS} attempts")


# -- the builder ---------------------------------------------------------------------------------
def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """An independent random stream per image, so images do not depend on each other's draws
    (the split as a small int: the streams predate ``image_rng``'s hashing of names)."""
    return image_rng(seed, category, _SPLIT_IDS[split], index)


def _check_args(categories, defect_types, n_train, n_test_good, n_test_defect, image_size) -> None:
    check_names(categories, TEXTURES, "demo category")
    check_names(defect_types, DEFECT_TYPES, "defect type")
    if not categories or not defect_types:
        raise ConfigError(note("nothing to build", "give at least one category and defect type"))
    check_counts(n_train, n_test_good, n_test_defect, image_size)


def build_category(
    out: Path,
    category: str,
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    image_size: int,
    seed: int,
    defect_types: Sequence[str] = DEFECT_TYPES,
) -> dict[str, int]:
    """Write one category under ``out/<category>``; returns the image count per split."""

    def good(split: str, i: int) -> np.ndarray:
        cols, key = (TRAIN_COLS, "train") if split == "train" else (TEST_COLS, "test_good")
        return _render_crop(category, cols, _rng(seed, category, key, i), image_size)

    def defective(defect: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(seed, category, defect, i)
        clean = _render_crop(category, TEST_COLS, rng, image_size)
        return _make_defect(clean, defect, rng, large=bool(i % 2), category=category)

    defects = spread_counts(n_test_defect, defect_types)
    return write_category(out / category, n_train, n_test_good, defects, good, defective)


def build_demo_dataset(
    out: str | Path,
    categories: Sequence[str] = TEXTURES,
    n_train: int = 72,
    n_test_good: int = 16,
    n_test_defect: int = 20,
    image_size: int = 256,
    seed: int = 0,
    force: bool = False,
    defect_types: Sequence[str] = DEFECT_TYPES,
) -> Path:
    """Build the demo dataset in MVTec AD layout.

    Args:
        out: dataset root to create (must be absent or empty unless ``force``).
        categories: texture names from ``TEXTURES``.
        n_train: good training images per category.
        n_test_good: good test images per category.
        n_test_defect: defective test images per category, spread over ``defect_types``
            (alternating small and large defects).
        image_size: side of the square PNG images.
        seed: random seed; the same arguments give byte-identical files.
        force: replace this builder's category folders and README in a non-empty ``out``.
        defect_types: defect kinds from ``DEFECT_TYPES``.

    Returns:
        ``out`` as a Path (the root to pass as ``--data``).

    Raises:
        OutputExistsError: ``out`` is not empty and ``force`` is False.
        ConfigError: an unknown category / defect type or an invalid count or size.
    """
    out = Path(out)
    categories = list(categories)
    defect_types = list(defect_types)
    _check_args(categories, defect_types, n_train, n_test_good, n_test_defect, image_size)
    prepare_output(out, categories, force)
    summary = {}
    for category in categories:
        summary[category] = build_category(
            out, category, n_train, n_test_good, n_test_defect, image_size, seed, defect_types
        )
        logger.info("demo category %s: %s", category, summary[category])
    (out / "README.txt").write_text(
        _readme(categories, defect_types, n_train, n_test_good, n_test_defect, image_size, seed),
        encoding="utf-8",
    )
    return out


def _readme(categories, defect_types, n_train, n_test_good, n_test_defect, image_size, seed) -> str:
    return f"""stpm-edge demo dataset (MVTec AD layout), written by stpm_edge.data.demo.build_demo_dataset

Arguments: categories={",".join(categories)} n_train={n_train} n_test_good={n_test_good}
n_test_defect={n_test_defect} image_size={image_size} seed={seed} defect_types={",".join(defect_types)}

Images: random crops (side {CROP_RANGE[0]}-{CROP_RANGE[1]} px) of scikit-image's bundled texture
photographs (skimage.data.<category>(), 512x512 gray), resized to {image_size}x{image_size}, with
random flips/rotations, +-{JITTER:.0%} brightness/contrast/gamma and a per-category colour tint.
Training images come from photo columns {TRAIN_COLS[0]}-{TRAIN_COLS[1] - 1}, test images from
columns {TEST_COLS[0]}-{TEST_COLS[1] - 1}, so test images never repeat training pixels.

Defects (test/<type>/, alternating small and large): scratch (hard-edged polyline), hole (shaded
dark ellipse), stain (coloured blob, alpha >= 0.35), patch (piece of another photograph in an
irregular shape). Masks (ground_truth/<type>/<stem>_mask.png, 0/255) are exact: nonzero exactly
where the image differs from its clean render by >= {MASK_TOL} grey levels; the mean change over a
mask is >= {MIN_CONTRAST:.0f} grey levels.

Synthetic data for demos and tests: scores on it say nothing about real inspection tasks.
The same arguments rebuild byte-identical files: stpm-data demo --out DIR --seed {seed}
"""
