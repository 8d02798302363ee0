"""The benchmark dataset: harder and larger than the demo, for choosing training recipes.

``stpm-data bench --out DIR`` writes seven categories in MVTec AD layout, offline, from a seed::

    OUT/README.txt
    OUT/<category>/train/good/000.png ...            80 good training images (default)
    OUT/<category>/test/good/000.png ...             50 good test images
    OUT/<category>/test/<defect>/000.png ...         60 defective images, spread over the types
    OUT/<category>/ground_truth/<defect>/000_mask.png

Categories (256x256 RGB PNG by default):

- ``brick``, ``grass``, ``gravel`` (photo textures): crops of scikit-image's bundled texture
  photographs, training crops and test crops from disjoint photo columns, with gain / contrast /
  gamma, white-balance and illumination-gradient jitter (``synth/textures.py``). Defects:
  ``scratch``, ``stain_colour``, ``stain_intensity``, ``crack``, ``contamination``.
- ``gear``, ``washer``, ``pcb``, ``label`` (rendered parts, ``synth/parts.py``): drawn with OpenCV
  in a random pose (gear and washer any rotation, pcb +-3 degrees, label +-4 degrees; +-4 % shift,
  +-3 % scale), lit with a random gain and light gradient, with sensor noise. Defects (each part
  also has ``stain_colour`` and ``stain_intensity``): gear ``missing`` (teeth), ``deformation``
  (bent or broken tooth), ``scratch``, ``contamination``; washer ``missing`` (chipped rim),
  ``deformation`` (dented rim), ``crack``, ``scratch``; pcb ``missing``, ``extra``,
  ``misplaced`` (components), ``contamination``; label ``missing`` (character or bar),
  ``misprint``, ``scratch``, ``contamination``.

Surface defects (``synth/defects.py``) are made hard on purpose: 1-2 px scratches and cracks,
stains that only move the colour (5-20 %) or only scale the intensity (8-25 %) under soft edges
(the texture stays; separate types, so a model's blind spot for one shows in the table),
particle clusters of 1-3 px dots and single fibres. Even indices are the small/faint variant,
odd indices the large/strong one.

Masks: ``ground_truth`` is nonzero exactly where some channel of the defective image differs from
the clean render of the same shot by >= ``MASK_TOL`` (3) grey levels; smaller changes are undone,
so every pixel outside the mask is byte-identical to the clean render. For geometric defects the
clean and defective images are the same scene (pose, light, noise) rendered from the nominal and
the modified geometry. A drawn defect is redrawn until it covers at least 6 pixels and changes
them by a minimum mean amount (4 / 6 grey levels for colour / intensity stains, 8 for scratches,
15 for geometric ones, 20 for cracks and contamination).

Deterministic: each image has its own random stream keyed by seed, category, split and index, so
the same arguments write byte-identical files (with the same numpy and OpenCV versions) and a
smaller count gives a prefix of a larger one. Building all seven default categories (1,330 images, 140 MB) took 23 s of CPU time (53 s wall on
a busy 2-core machine): ``time stpm-data bench --out DIR``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stpm_edge.data.synth.common import (
    check_counts,
    check_names,
    exact_change,
    image_rng,
    mean_change,
    prepare_output,
    spread_counts,
    write_category,
)
from stpm_edge.data.synth.defects import SURFACE_DEFECTS, draw_surface_defect
from stpm_edge.data.synth.parts import PARTS, Scene, render
from stpm_edge.data.synth.textures import TEXTURE_SPECS, render_texture
from stpm_edge.errors import ConfigError, note

logger = logging.getLogger(__name__)

TEXTURE_DEFECTS = ("scratch", "stain_colour", "stain_intensity", "crack", "contamination")
CATEGORIES: dict[str, tuple[str, ...]] = {
    **{name: TEXTURE_DEFECTS for name in TEXTURE_SPECS},
    **{name: (*part.defects, *part.surface_defects) for name, part in PARTS.items()},
}
MIN_GEOMETRIC_CHANGE = 15.0  # mean grey-level change over the mask of a geometric defect
MIN_AREA_PX = 6
MAX_ATTEMPTS = 60


@dataclass(frozen=True)
class Shot:
    """One clean image and what is needed to draw a defect into it."""

    image: np.ndarray  # uint8 (S, S, 3)
    region: np.ndarray  # bool (S, S): where a surface defect may lie
    scene: Scene | None = None  # parts only


def shoot(category: str, split: str, rng: np.random.Generator, size: int) -> Shot:
    """A clean image of ``category`` for ``split`` ("train" or "test")."""
    if category in TEXTURE_SPECS:
        image = render_texture(category, split, rng, size)
        return Shot(image, np.ones(image.shape[:2], bool))
    part = PARTS[category]
    scene = part.scene(rng)
    image, surface = render(part, part.nominal(), scene, size)
    return Shot(image, surface, scene)


def add_defect(
    category: str, shot: Shot, defect: str, rng: np.random.Generator, large: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a ``defect`` into ``shot``: ``(image uint8 (S, S, 3), mask bool (S, S))``."""
    if defect in SURFACE_DEFECTS:
        return draw_surface_defect(shot.image, defect, shot.region, rng, large)
    part = PARTS[category]
    assert shot.scene is not None
    size = shot.image.shape[0]
    for _ in range(MAX_ATTEMPTS):
        geometry = part.defects[defect](part.nominal(), rng, large)
        out, mask = exact_change(shot.image, render(part, geometry, shot.scene, size)[0])
        changed = mean_change(shot.image, out, mask)
        if int(mask.sum()) >= MIN_AREA_PX and changed >= MIN_GEOMETRIC_CHANGE:
            return out, mask
    raise AssertionError(f"could not draw a visible {defect} on {category} in {MAX_ATTEMPTS} tries")


def build_category(
    out: Path,
    category: str,
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    size: int,
    seed: int,
) -> dict[str, int]:
    """Write one category under ``out/<category>``; returns the image count per split."""

    def good(split: str, i: int) -> np.ndarray:
        key = "train" if split == "train" else "test/good"
        return shoot(category, split, image_rng(seed, category, key, i), size).image

    def defective(defect: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = image_rng(seed, category, f"test/{defect}", i)
        return add_defect(category, shoot(category, "test", rng, size), defect, rng, i % 2 == 1)

    defects = spread_counts(n_test_defect, CATEGORIES[category])
    return write_category(out / category, n_train, n_test_good, defects, good, defective)


def _check_args(
    categories: Sequence[str], n_train: int, n_test_good: int, n_test_defect: int, size: int
) -> None:
    if not categories:
        raise ConfigError(
            note("no benchmark category given", f"choose from {', '.join(CATEGORIES)}")
        )
    check_names(categories, CATEGORIES, "benchmark category")
    check_counts(n_train, n_test_good, n_test_defect, size)


def build_bench_dataset(
    out: str | Path,
    categories: Sequence[str] = tuple(CATEGORIES),
    n_train: int = 80,
    n_test_good: int = 50,
    n_test_defect: int = 60,
    image_size: int = 256,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Build the benchmark dataset in MVTec AD layout.

    Args:
        out: dataset root to create (must be absent or empty unless ``force``).
        categories: names from ``CATEGORIES``.
        n_train: good training images per category.
        n_test_good: good test images per category.
        n_test_defect: defective test images per category, spread over its defect types.
        image_size: side of the square PNG images.
        seed: random seed; the same arguments give byte-identical files.
        force: replace this builder's category folders and README in a non-empty ``out``.

    Returns:
        ``out`` as a Path (the root to pass as ``--data``).

    Raises:
        OutputExistsError: ``out`` is not empty and ``force`` is False.
        ConfigError: an unknown category, an invalid count or size.
    """
    out = Path(out)
    categories = list(categories)
    _check_args(categories, n_train, n_test_good, n_test_defect, image_size)
    prepare_output(out, categories, force)
    for category in categories:
        counts = build_category(
            out, category, n_train, n_test_good, n_test_defect, image_size, seed
        )
        logger.info("bench category %s: %s", category, counts)
    args = (
        f"categories={','.join(categories)} n_train={n_train} n_test_good={n_test_good} "
        f"n_test_defect={n_test_defect} image_size={image_size} seed={seed}"
    )
    (out / "README.txt").write_text(_README.format(args=args, seed=seed), encoding="utf-8")
    return out


_README = """stpm-edge benchmark dataset (MVTec AD layout), written by stpm_edge.data.bench

Arguments: {args}

Photo textures (brick, grass, gravel: scikit-image photographs, train and test crops from disjoint
columns) and rendered parts (gear, washer, pcb, label: OpenCV drawings in random pose and light,
with sensor noise). Defect types are the folder names under test/; even indices are the small or
faint variant, odd ones the large or strong one. Masks (ground_truth/<type>/<stem>_mask.png,
0/255) are exact: nonzero exactly where the image differs from the clean render of the same shot
by >= 3 grey levels. Full description: the docstring of stpm_edge/data/bench.py.

Synthetic data for choosing recipes: scores on it say nothing about a real inspection task.
The same arguments rebuild byte-identical files: stpm-data bench --out DIR --seed {seed}
"""
