"""Image and mask files on disk -> numpy arrays: the data layer's names for the one image module.

Every rule (decoding, EXIF orientation, 16-bit and float to 8-bit, channels, suffixes) lives in
``stpm_edge.runtime.image`` (torch-free, shared with the runtime); these are re-exports so
dataset code and older imports keep working:

- ``read_image(path)`` -> ``uint8 (H, W, 3)`` RGB.
- ``read_mask(path)`` -> ``bool (H, W)``: any nonzero channel marks a defect pixel.
- ``list_images(folder)`` -> the sorted image files (suffix in ``IMAGE_SUFFIXES``, any case).
"""

from __future__ import annotations

from stpm_edge.runtime.image import (
    IMAGE_SUFFIXES,
    decode_raw,
    is_image_file,
    list_images,
    read_image,
    read_mask,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "decode_raw",
    "is_image_file",
    "list_images",
    "read_image",
    "read_mask",
]
