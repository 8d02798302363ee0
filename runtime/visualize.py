"""Heat-map overlays and defect regions, for the torch-free runtime (numpy + OpenCV only).

Used by the detector (``Prediction.overlay`` / ``Prediction.regions``) and, through
``stpm_edge.plots``, by the evaluation report, so a saved report and a live camera view colour a
map the same way: values in ``[vmin, vmax]`` are mapped linearly onto OpenCV's JET colormap and
blended over the image. Never import torch or matplotlib here.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from stpm_edge.errors import DataError, note

__all__ = ["draw_regions", "find_regions", "heatmap_overlay", "normalize_map", "scale_regions"]

Region = tuple[int, int, int, int, int]  # x, y, w, h, area (pixels)


def _as_2d_map(anomaly_map: np.ndarray) -> np.ndarray:
    """(H, W), (1, H, W) or (1, 1, H, W) float -> (H, W) float32."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise DataError(
            note(
                f"anomaly map has shape {m.shape}", "expected (H, W) or (1, H, W); one map per call"
            )
        )
    return m


def normalize_map(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map ``[vmin, vmax]`` linearly onto ``[0, 255]`` (clipped).

    Args:
        anomaly_map: (H, W) float anomaly map (raw units).
        vmin, vmax: the values shown as the coldest / hottest colour; ``vmax > vmin``.

    Returns:
        (H, W) uint8.
    """
    if not vmax > vmin:
        raise DataError(
            note(
                f"colour range vmin={vmin}, vmax={vmax} is empty",
                "expected vmax > vmin, e.g. the calibration's score_min and score_max",
            )
        )
    m = _as_2d_map(anomaly_map)
    scaled = (m - np.float32(vmin)) * np.float32(255.0 / (vmax - vmin))
    return np.clip(scaled, 0.0, 255.0).round().astype(np.uint8)


def heatmap_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    color_order: str = "RGB",
) -> np.ndarray:
    """Blend a JET-coloured anomaly map over an image.

    Args:
        image: (H, W, 3) uint8 in ``color_order`` (``"RGB"`` for the evaluation report,
            ``"BGR"`` for OpenCV frames).
        anomaly_map: (h, w) float; resized bilinearly to (H, W) when its size differs (the model
            size vs the frame size).
        vmin, vmax: map values shown as the coldest / hottest colour.
        alpha: weight of the heat map (0 = image only, 1 = heat map only).
        color_order: ``"RGB"`` or ``"BGR"``; the output uses the same order as the input.

    Returns:
        (H, W, 3) uint8, a new array.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DataError(
            note(
                f"overlay image has shape {img.shape} and dtype {img.dtype}",
                "expected (H, W, 3) uint8",
            )
        )
    if color_order not in ("RGB", "BGR"):
        raise DataError(note(f"color_order={color_order!r}", "expected 'RGB' or 'BGR'"))
    m = _as_2d_map(anomaly_map)
    height, width = img.shape[:2]
    if m.shape != (height, width):
        m = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(normalize_map(m, vmin, vmax), cv2.COLORMAP_JET)  # BGR
    if color_order == "RGB":
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(heat, float(alpha), np.ascontiguousarray(img), 1.0 - alpha, 0.0)


def find_regions(anomaly_map: np.ndarray, threshold: float, min_area: int = 16) -> list[Region]:
    """Connected regions of ``anomaly_map >= threshold`` (8-connectivity), largest first.

    Uses ``cv2.connectedComponentsWithStats`` rather than contours: the area is the exact number
    of pixels (a contour's polygon area loses half a pixel along the border and counts holes).

    Args:
        anomaly_map: (H, W) float (raw units, e.g. the graph's anomaly_map for one image).
        threshold: raw map value; a pixel belongs to a region iff ``value >= threshold``.
        min_area: smaller regions (in map pixels) are dropped as noise.

    Returns:
        list of ``(x, y, w, h, area)`` ints in map pixels; see :func:`scale_regions` for frame
        pixels.
    """
    binary = (_as_2d_map(anomaly_map) >= threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    regions = [
        tuple(int(v) for v in stats[i, :5]) for i in range(1, count) if stats[i, 4] >= min_area
    ]
    return sorted(regions, key=lambda r: r[4], reverse=True)


def scale_regions(
    regions: Iterable[Region], sx: float, sy: float, dx: int = 0, dy: int = 0
) -> list[Region]:
    """Map regions from map pixels to frame pixels: scale by (sx, sy), then shift by (dx, dy).

    ``dx, dy`` is the ROI's top-left corner when the model saw a crop of the frame.
    """
    out = []
    for x, y, w, h, area in regions:
        out.append(
            (
                int(round(x * sx)) + dx,
                int(round(y * sy)) + dy,
                max(1, int(round(w * sx))),
                max(1, int(round(h * sy))),
                int(round(area * sx * sy)),
            )
        )
    return out


def draw_regions(
    bgr: np.ndarray,
    regions: Iterable[Region],
    color: tuple[int, int, int] = (0, 0, 255),
    thickness: int = 2,
) -> np.ndarray:
    """Draw each region's bounding box on a copy of ``bgr``.

    Args:
        bgr: (H, W, 3) uint8 image (any colour order; ``color`` is in that order, red for BGR).
        regions: ``(x, y, w, h, area)`` boxes in the image's pixels.

    Returns:
        (H, W, 3) uint8, a new array (the input is left untouched).
    """
    out = np.array(bgr, dtype=np.uint8, copy=True)
    for x, y, w, h, _ in regions:
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), color, thickness)
    return out
