"""Image and mask files on disk -> numpy arrays, with errors that name the file.

Format:
- ``read_image(path)`` -> ``uint8 (H, W, 3)`` RGB, whatever the file holds: 8-bit gray, gray +
  alpha, RGB, RGBA (alpha dropped), palette (expanded by the decoder), 16-bit (rescaled with
  ``round(v / 257)`` so 65535 -> 255, a fixed mapping identical for every image), or float TIFF
  (taken as ``[0, 1]``).
- ``read_mask(path)`` -> ``bool (H, W)``: any nonzero channel marks a defect pixel.
- ``list_images(folder)`` -> the sorted image files (suffix in ``IMAGE_SUFFIXES``, any case).

Files are decoded with OpenCV from bytes read by Python (``cv2.imdecode``): this works for
non-ASCII paths on every OS, and a decode failure (OpenCV returns ``None`` silently) becomes a
``DataError`` naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from stpm_edge.errors import DataError, note

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".pgm",
    ".ppm",
)


def _decode(path: str | Path) -> np.ndarray:
    """Decode ``path`` with OpenCV as stored (any depth, any channel count)."""
    path = Path(path)
    if not path.exists():
        raise DataError(note(f"image file not found: {path}", "check the path and the dataset"))
    if not path.is_file():
        raise DataError(note(f"not a file: {path}", "expected an image file, got a directory"))
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(note(f"cannot read {path}: {exc}", "check the file permissions")) from exc
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if array is None:
        raise DataError(
            note(
                f"cannot decode image {path} ({buffer.size} bytes)",
                f"the file is empty, truncated or not an image of a supported format "
                f"({', '.join(IMAGE_SUFFIXES)}); re-export or delete it "
                "(dataset tools accept skip_bad / --skip-bad to skip such files)",
            )
        )
    return array


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """Map any supported sample depth to uint8 with a fixed (content-independent) rule."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # round(v / 257): the exact inverse of the usual 8->16 bit widening v * 257.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype in (np.float32, np.float64):
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise DataError(
        note(
            f"unsupported sample type {array.dtype} in {path}",
            "expected 8-bit or 16-bit integer, or float in [0, 1]; convert the file to 8-bit PNG",
        )
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: any file in ``IMAGE_SUFFIXES`` (gray, gray+alpha, RGB, RGBA, palette, 8/16-bit).

    Returns:
        ``uint8 (H, W, 3)`` C-contiguous RGB array.

    Raises:
        DataError: the file is missing, unreadable, corrupt or of an unsupported type.
    """
    path = Path(path)
    array = _to_uint8(_decode(path), path)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if array.ndim == 3 and array.shape[2] == 2:  # gray + alpha: drop alpha
        return np.ascontiguousarray(np.repeat(array[:, :, :1], 3, axis=2))
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if array.ndim == 3 and array.shape[2] == 4:  # BGRA: drop alpha
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    raise DataError(
        note(
            f"unsupported image layout {array.shape} in {path}",
            "expected gray, gray+alpha, RGB or RGBA",
        )
    )


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask.

    Args:
        path: an image file; any nonzero colour channel marks a defect pixel (alpha is ignored).

    Returns:
        ``bool (H, W)``, True where the pixel is defective.

    Raises:
        DataError: the file is missing, unreadable or corrupt.
    """
    path = Path(path)
    array = _decode(path)
    if array.ndim == 3:
        channels = array.shape[2]
        colour = array[:, :, : 3 if channels >= 3 else 1]
        return np.ascontiguousarray(np.any(colour != 0, axis=2))
    return np.ascontiguousarray(array != 0)


def is_image_file(path: Path) -> bool:
    """True for a visible regular file whose suffix (any case) is in ``IMAGE_SUFFIXES``."""
    # Hidden files (".DS_Store", macOS "._x.png" resource forks) are never images.
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    )


def list_images(folder: str | Path) -> list[Path]:
    """List the image files directly inside ``folder`` (not recursive), sorted by name.

    Raises:
        DataError: ``folder`` does not exist or is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "not a directory" if folder.exists() else "not found"
        raise DataError(note(f"image folder {what}: {folder}", "check the --data path"))
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)
