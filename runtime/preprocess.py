"""Frames (OpenCV BGR) -> the graph's input batch, with numpy and OpenCV only.

Conversion to 8 bits, resizing and normalisation are the image module's (``image.py``), the same
functions training uses, so a frame and the same picture read from a file give the graph
bit-identical input. The normalisation of ``float32_nchw`` graphs uses the graph's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stpm_edge.errors import ConfigError, DataError, note

from .image import to_bgr, to_model_input
from .metadata import ModelInfo

__all__ = ["Roi", "crop_roi", "parse_roi", "prepare_batch", "to_bgr"]

Roi = tuple[int, int, int, int]


def parse_roi(text: str | Sequence[int] | None) -> Roi | None:
    """``"x,y,w,h"`` (or a 4-sequence) -> ``(x, y, w, h)`` ints; ``None`` stays ``None``."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        x, y, w, h = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(
            note(f"invalid ROI {text!r}", "expected four integers x,y,w,h, e.g. 100,50,640,480")
        ) from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ConfigError(note(f"invalid ROI {text!r}", "x, y >= 0 and w, h > 0"))
    return (x, y, w, h)


def crop_roi(frame: np.ndarray, roi: Roi | None) -> np.ndarray:
    """Crop ``(x, y, w, h)`` from ``frame``; the ROI must lie inside the frame."""
    if roi is None:
        return frame
    x, y, w, h = roi
    height, width = frame.shape[:2]
    if x + w > width or y + h > height:
        raise ConfigError(
            note(
                f"ROI {roi} does not fit in a {width}x{height} frame",
                "x + w must be <= frame width and y + h <= frame height",
            )
        )
    return frame[y : y + h, x : x + w]


def prepare_batch(
    frames_bgr: Sequence[np.ndarray], info: ModelInfo, roi: Roi | None = None
) -> np.ndarray:
    """Build the graph input for a list of frames.

    Args:
        frames_bgr: OpenCV frames: BGR (H, W, 3), gray or BGRA, 8/16-bit or float, converted by
            :func:`image.to_bgr` (the one 8-bit rule).
        info: the model's metadata (input size, format, colour order, mean/std).
        roi: optional fixed crop ``(x, y, w, h)`` in frame pixels, applied first.

    Returns:
        ``uint8 (N, H, W, 3)`` in ``info.color_order`` for ``uint8_nhwc`` graphs, or
        ``float32 (N, 3, H, W)`` normalised RGB for ``float32_nchw`` graphs.
    """
    if len(frames_bgr) == 0:
        raise DataError("prepare_batch got no frames")
    crops = [crop_roi(to_bgr(frame), roi) for frame in frames_bgr]
    return to_model_input(
        crops,
        info.input_size,
        info.input_format,
        info.color_order,
        info.mean,
        info.std,
        order="BGR",
    )
