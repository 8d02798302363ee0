"""Photo-texture surfaces: random crops of scikit-image's bundled 512x512 texture photographs.

Training crops come from photo columns ``TRAIN_COLS``, test crops from ``TEST_COLS`` (a 16-px gap
between), so no test image repeats training pixels. Each crop gets what a real line camera adds:
+-5 % gain/contrast/gamma, a linear illumination gradient of up to +-6 % across the frame, and a
white-balance wobble of +-2 % per channel on top of the category's tint.
"""

from __future__ import annotations

import numpy as np

from stpm_edge.data.synth.common import photo, random_crop

TRAIN_COLS = (0, 296)
TEST_COLS = (312, 512)
CROP_RANGE = (144, 200)  # crop side in photo pixels, the same for train and test
JITTER = 0.05
GRADIENT = 0.06
WHITE_BALANCE = 0.02

# Per texture: RGB tint of the gray photo, and whether 90-degree turns keep it the same product
# (brick courses run one way).
TEXTURE_SPECS: dict[str, tuple[tuple[float, float, float], bool]] = {
    "brick": ((1.0, 0.78, 0.66), False),
    "grass": ((0.80, 1.0, 0.66), True),
    "gravel": ((0.97, 0.94, 0.88), True),
}


def illumination(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """A linear light gradient, 1 +- ``strength`` across the frame: ``float32 (S, S)``."""
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    field = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    return (1.0 + rng.uniform(0, strength) * field / np.sqrt(2)).astype(np.float32)


def render_texture(name: str, split: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One jittered crop of texture ``name`` for ``split`` ("train" or "test"): ``uint8 (S, S, 3)``."""
    tint, rotate = TEXTURE_SPECS[name]
    cols = TRAIN_COLS if split == "train" else TEST_COLS
    crop = random_crop(photo(name), cols, CROP_RANGE, rng, size, rotate)
    gamma, contrast, gain = 1.0 + rng.uniform(-JITTER, JITTER, size=3)
    crop = np.clip(crop, 0.0, 1.0) ** gamma
    mean = float(crop.mean())
    crop = ((crop - mean) * contrast + mean) * gain * illumination(rng, size, GRADIENT)
    colour = np.asarray(tint, np.float32) * (1.0 + rng.uniform(-1, 1, 3) * WHITE_BALANCE)
    rgb = np.clip(crop, 0.0, 1.0)[:, :, None] * colour.astype(np.float32) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
