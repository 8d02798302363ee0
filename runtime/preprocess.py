"""Frames (OpenCV BGR) -> the graph's input batch, with numpy and OpenCV only.

Resizing uses ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``, the same call training uses on
its RGB images (per-channel, so the channel order does not change the result). The normalisation
of ``float32_nchw`` graphs uses the mean/std stored in the graph's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from stpm_edge.errors import ConfigError, DataError, note

from .metadata import ModelInfo

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


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """Any OpenCV frame -> uint8 BGR (H, W, 3).

    Accepts gray (H, W) or (H, W, 1), BGR (H, W, 3) and BGRA (H, W, 4); uint16 frames are scaled
    to 8 bits.
    """
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        raise DataError(
            note(
                f"cannot use a frame of type {type(frame).__name__} shape "
                f"{getattr(frame, 'shape', None)}",
                "expected an OpenCV image: (H, W), (H, W, 3) BGR or (H, W, 4) BGRA",
            )
        )
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise DataError(
            note(f"frame dtype {frame.dtype} not supported", "expected uint8 or uint16")
        )
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.shape[2] == 3:
        return frame
    raise DataError(note(f"frame with {frame.shape[2]} channels", "expected 1, 3 or 4 channels"))


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
        frames_bgr: OpenCV frames (BGR uint8 (H, W, 3); gray and BGRA are converted).
        info: the model's metadata (input size, format, colour order, mean/std).
        roi: optional fixed crop ``(x, y, w, h)`` in frame pixels, applied first.

    Returns:
        ``uint8 (N, H, W, 3)`` in ``info.color_order`` for ``uint8_nhwc`` graphs, or
        ``float32 (N, 3, H, W)`` normalised RGB for ``float32_nchw`` graphs.
    """
    if len(frames_bgr) == 0:
        raise DataError("prepare_batch got no frames")
    height, width = info.input_size
    resized = []
    for frame in frames_bgr:
        image = crop_roi(to_bgr(frame), roi)
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        resized.append(image)
    batch = np.stack(resized)  # (N, H, W, 3) BGR uint8
    if info.input_format == "uint8_nhwc":
        if info.color_order == "RGB":
            batch = batch[..., ::-1]
        return np.ascontiguousarray(batch, dtype=np.uint8)
    rgb = batch[..., ::-1].astype(np.float32) / 255.0
    mean = np.asarray(info.mean, dtype=np.float32)
    std = np.asarray(info.std, dtype=np.float32)
    return np.ascontiguousarray(((rgb - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)
