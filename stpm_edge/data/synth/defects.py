"""Surface defects drawn on a clean image, each with an exact mask.

Every drawer returns ``(alpha float32 (S, S) in [0, 1], target float32 (S, S, 3))``; the caller
blends with ``common.composite`` so the mask is exactly the set of changed pixels. ``region``
(``bool (S, S)``) limits where a defect may lie: the whole frame for textures, the part's visible
surface for rendered parts. ``large`` picks the large/strong variant; the small one is meant to be
hard: a 1-px scratch that changes a pixel by ~10-30 grey levels, a stain that shifts colour by
5-9 % or intensity by 8-12 %, a handful of sub-3-px particles.

- ``scratch``: thin smooth polyline, brighter or darker than the surface (relative change).
- ``stain_colour``: soft-edged blob that only moves the colour (per-channel gains of about equal
  luminance; 5-9 %, large 10-20 %): the texture underneath stays.
- ``stain_intensity``: the same blob scaling all channels alike (8-12 %, large 15-25 %, darker
  or brighter): only the intensity changes, which channel-normalised features cannot see.
- ``crack``: jagged dark random-walk line, 1-2 px, sometimes with a branch.
- ``contamination``: a cluster of small dark/bright/coloured particles, or a thin fibre.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from stpm_edge.data.synth.common import blob, composite, mean_change

MAX_ATTEMPTS = 60
MIN_AREA_PX = 6
# Mean change over the mask (grey levels) a drawn defect must reach to count as visible.
MIN_CHANGE = {
    "scratch": 8.0,
    "stain_colour": 4.0,
    "stain_intensity": 6.0,
    "crack": 20.0,
    "contamination": 20.0,
}

Drawer = Callable[[np.ndarray, np.ndarray, np.random.Generator, bool], tuple]

_AA = 16  # supersampling factor for smooth thin lines (cv2 shift bits = 4)


def _line_alpha(size: int, points: np.ndarray, thickness: int) -> np.ndarray:
    """Anti-aliased polyline coverage in [0, 1]: ``float32 (S, S)``."""
    canvas = np.zeros((size, size), np.uint8)
    pts = np.rint(points * _AA).astype(np.int32)
    cv2.polylines(canvas, [pts], False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _start_point(region: np.ndarray, rng: np.random.Generator, margin: int) -> np.ndarray:
    """A random (x, y) inside ``region`` at least ``margin`` px from the border."""
    inner = np.zeros_like(region)
    inner[margin:-margin, margin:-margin] = region[margin:-margin, margin:-margin]
    ys, xs = np.nonzero(inner if inner.any() else region)
    k = int(rng.integers(len(xs)))
    return np.array([xs[k], ys[k]], np.float64) + rng.uniform(-0.5, 0.5, size=2)


def _walk(
    start: np.ndarray, rng: np.random.Generator, length: float, steps: int, turn: float
) -> np.ndarray:
    """A random-walk polyline from ``start``: ``float (steps + 1, 2)``."""
    angle = rng.uniform(0, 2 * np.pi)
    points = [start]
    for _ in range(steps):
        angle += rng.uniform(-turn, turn)
        points.append(points[-1] + (length / steps) * np.array([np.cos(angle), np.sin(angle)]))
    return np.array(points)


def scratch(clean: np.ndarray, region: np.ndarray, rng: np.random.Generator, large: bool):
    size = clean.shape[0]
    length = size * (rng.uniform(0.3, 0.55) if large else rng.uniform(0.12, 0.25))
    points = _walk(_start_point(region, rng, size // 10), rng, length, 6, 0.12)
    thickness = 2 if large and rng.random() < 0.5 else 1
    strength = rng.uniform(0.5, 0.8) if large else rng.uniform(0.3, 0.55)
    alpha = _line_alpha(size, points, thickness) * strength * region
    # Relative change: a bright scratch on a dark surface, a dark one on a bright surface.
    local = float(clean[alpha > 0].mean()) if (alpha > 0).any() else 128.0
    delta = rng.uniform(45, 80) * (1.0 if local < 140 else -1.0)
    return alpha, np.clip(clean.astype(np.float32) + delta, 0, 255)


def _stain_alpha(region: np.ndarray, rng: np.random.Generator, large: bool) -> np.ndarray:
    """Soft-edged irregular blob in [0, 1] limited to ``region``: ``float32 (S, S)``."""
    size = region.shape[0]
    radius = size * (rng.uniform(0.08, 0.14) if large else rng.uniform(0.04, 0.07))
    support = blob(rng, size, radius).astype(np.float32)
    return (cv2.GaussianBlur(support, (0, 0), radius * 0.35) * region).astype(np.float32)


def stain_colour(clean: np.ndarray, region: np.ndarray, rng: np.random.Generator, large: bool):
    """One channel up by ``shift``, the other two down by half of it: the hue moves, the
    luminance about stays, the texture underneath stays."""
    alpha = _stain_alpha(region, rng, large)
    shift = rng.uniform(0.10, 0.2) if large else rng.uniform(0.05, 0.09)
    gains = np.full(3, 1.0 - shift / 2, np.float32)
    gains[int(rng.integers(3))] = 1.0 + shift
    return alpha, np.clip(clean.astype(np.float32) * gains, 0, 255)


def stain_intensity(clean: np.ndarray, region: np.ndarray, rng: np.random.Generator, large: bool):
    """All channels scaled by the same gain (darker or brighter): only the intensity changes,
    which channel-normalised features cannot see."""
    alpha = _stain_alpha(region, rng, large)
    shift = rng.uniform(0.15, 0.25) if large else rng.uniform(0.08, 0.12)
    gain = 1.0 + shift * rng.choice([-1.0, 1.0])
    return alpha, np.clip(clean.astype(np.float32) * gain, 0, 255)


def crack(clean: np.ndarray, region: np.ndarray, rng: np.random.Generator, large: bool):
    size = clean.shape[0]
    length = size * (rng.uniform(0.25, 0.45) if large else rng.uniform(0.1, 0.2))
    start = _start_point(region, rng, size // 10)
    paths = [_walk(start, rng, length, 24, 0.6)]
    if large or rng.random() < 0.3:  # a branch from a point of the main crack
        paths.append(_walk(paths[0][int(rng.integers(6, 18))], rng, length * 0.4, 10, 0.6))
    thickness = 2 if large else 1
    alpha = np.max([_line_alpha(size, p, thickness) for p in paths], axis=0) * region
    darkness = rng.uniform(0.25, 0.5)
    return alpha.astype(np.float32), clean.astype(np.float32) * darkness


def contamination(clean: np.ndarray, region: np.ndarray, rng: np.random.Generator, large: bool):
    size = clean.shape[0]
    centre = _start_point(region, rng, size // 10)
    colour = rng.choice([25.0, 60.0, 230.0]) * np.ones(3, np.float32)
    if rng.random() < 0.3:  # a foreign colour: rust, blue fibre, ...
        colour = np.array([(150, 70, 30), (40, 60, 160), (200, 190, 60)][int(rng.integers(3))])
    if rng.random() < 0.35:  # a fibre / hair
        length = size * (rng.uniform(0.2, 0.35) if large else rng.uniform(0.08, 0.15))
        pts = _walk(centre, rng, length, 12, 0.35)
        alpha = _line_alpha(size, pts, 1) * rng.uniform(0.55, 0.9)
    else:  # a cluster of round particles, edges anti-aliased by their sub-pixel distance
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        alpha = np.zeros((size, size), np.float32)
        spread = size * (0.05 if large else 0.025)
        for _ in range(int(rng.integers(6, 14) if large else rng.integers(2, 6))):
            x, y = centre + rng.normal(0, spread, size=2)
            r = rng.uniform(0.8, 3.0 if large else 2.0)
            alpha = np.maximum(alpha, np.clip(r + 0.5 - np.hypot(xx - x, yy - y), 0.0, 1.0))
        alpha *= rng.uniform(0.7, 1.0)
    target = np.broadcast_to(np.asarray(colour, np.float32), clean.shape)
    return (alpha * region).astype(np.float32), target


SURFACE_DEFECTS: dict[str, Drawer] = {
    "scratch": scratch,
    "stain_colour": stain_colour,
    "stain_intensity": stain_intensity,
    "crack": crack,
    "contamination": contamination,
}


def draw_surface_defect(
    clean: np.ndarray, kind: str, region: np.ndarray, rng: np.random.Generator, large: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a ``kind`` defect inside ``region`` until it is visible: ``(image uint8, mask bool)``.

    Visible means at least ``MIN_AREA_PX`` changed pixels and a mean change over the mask of at
    least ``MIN_CHANGE[kind]`` grey levels.
    """
    region_f = region.astype(np.float32)
    for _ in range(MAX_ATTEMPTS):
        alpha, target = SURFACE_DEFECTS[kind](clean, region_f, rng, large)
        out, mask = composite(clean, alpha, target)
        if int(mask.sum()) >= MIN_AREA_PX and mean_change(clean, out, mask) >= MIN_CHANGE[kind]:
            return out, mask
    raise AssertionError(f"could not draw a visible {kind} in {MAX_ATTEMPTS} attempts")
