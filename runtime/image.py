"""The one image pipeline, torch-free (numpy + OpenCV): what training, evaluation, export, the
runtime, the camera, the benchmarks and the demo all use to turn a file or a frame into pixels.

The rules (DESIGN.md §8), each defined once here:

- **Decoding**: files are read by Python (``np.fromfile``, works for non-ASCII paths on every OS)
  and decoded by ``cv2.imdecode(..., IMREAD_UNCHANGED)``. Bytes and arrays take the same route.
- **EXIF orientation is ignored**: pixels are used as stored. A camera frame carries no EXIF, so
  a file saved by the camera must give the model the same pixels as the live frame; applying the
  tag would rotate some training files but never the frames (``IMREAD_UNCHANGED`` ignores it).
- **One rule to 8 bits** (:func:`to_uint8`): uint8 as is; uint16 ``round(v / 257)`` (the exact
  inverse of the usual 8 -> 16 bit widening ``v * 257``, so 65535 -> 255); float (TIFF) taken as
  ``[0, 1]``, clipped, then ``round(v * 255)``. Any other sample type is a :class:`DataError`.
- **Channels**: gray -> 3 equal channels; gray + alpha and BGRA: alpha dropped; palette images are
  expanded by the decoder. Arrays are in OpenCV order (BGR), as ``cv2`` and cameras give them.
- **Resize** (:func:`resize_image`): ``cv2.resize`` bilinear (``INTER_LINEAR``), per channel, so
  the colour order does not change the result. Masks: nearest neighbour.
- **Normalisation** (:func:`normalize`): ``(x / 255 - mean) / std`` in float32 on RGB, with the
  mean/std of the model (checkpoint ``config`` or graph ``stpm.mean``/``stpm.std``); no constants.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from stpm_edge.errors import DataError, note

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
INPUT_FORMATS = ("uint8_nhwc", "float32_nchw")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray


# -- files ------------------------------------------------------------------------------------
def is_image_file(path: Path) -> bool:
    """True for a visible regular file whose suffix (any case) is in ``IMAGE_SUFFIXES``."""
    # Hidden files (".DS_Store", macOS "._x.png" resource forks) are never images.
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    )


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (not recursive), sorted by name.

    Raises:
        DataError: ``folder`` does not exist or is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "not a directory" if folder.exists() else "not found"
        raise DataError(note(f"image folder {what}: {folder}", "check the folder path"))
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(note(f"image file not found: {path}", "check the path and the dataset"))
    if not path.is_file():
        raise DataError(note(f"not a file: {path}", "expected an image file, got a directory"))
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(note(f"cannot read {path}: {exc}", "check the file permissions")) from exc


def decode_raw(src: ImageSource) -> np.ndarray:
    """Decode as stored: any sample type, 1-4 channels in OpenCV order, EXIF orientation ignored.

    Args:
        src: a file path, the encoded bytes of a file, or an already decoded array (returned as is).

    Raises:
        DataError: missing, unreadable, empty or undecodable input (naming the file).
    """
    if isinstance(src, np.ndarray):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        name, buffer = "image bytes", np.frombuffer(src, dtype=np.uint8)
    else:
        name, buffer = str(src), _read_file(Path(src))
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if array is None:  # OpenCV fails silently
        raise DataError(
            note(
                f"cannot decode {name} ({buffer.size} bytes)",
                f"the file is empty, truncated or not an image of a supported format "
                f"({', '.join(IMAGE_SUFFIXES)}); re-export or delete it "
                "(dataset tools accept skip_bad / --skip-bad to skip such files)",
            )
        )
    return array


# -- the one 8-bit rule and colour order ------------------------------------------------------
def to_uint8(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Any supported sample type -> uint8 with a fixed, content-independent rule (module doc)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # round(v / 257) in integers: the exact inverse of the 8 -> 16 bit widening v * 257
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype in (np.float16, np.float32, np.float64):
        scaled = np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * np.float32(255.0)
        return (scaled + np.float32(0.5)).astype(np.uint8)
    raise DataError(
        note(
            f"unsupported sample type {array.dtype} in {name}",
            "expected 8-bit or 16-bit unsigned integers, or float in [0, 1]; convert to 8-bit PNG",
        )
    )


def to_bgr(frame: np.ndarray, name: str = "frame") -> np.ndarray:
    """An OpenCV-ordered array (gray, gray+alpha, BGR, BGRA; any supported depth) -> uint8 BGR."""
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        raise DataError(
            note(
                f"cannot use a {name} of type {type(frame).__name__} shape "
                f"{getattr(frame, 'shape', None)}",
                "expected an OpenCV image: (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA",
            )
        )
    array = to_uint8(frame, name)
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels == 1:
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2BGR)
    if channels == 2:  # gray + alpha: drop alpha
        return cv2.cvtColor(np.ascontiguousarray(array[:, :, 0]), cv2.COLOR_GRAY2BGR)
    if channels == 3:
        return np.ascontiguousarray(array)
    if channels == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    raise DataError(note(f"{name} with {channels} channels", "expected 1, 2, 3 or 4 channels"))


def bits_to_uint8(array: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit samples (LSB-aligned, e.g. a Mono12 camera buffer) -> uint8 by the
    16-bit rule generalised: full scale to full scale, ``round(v * 255 / (2**bits - 1))``
    (bits=16 is exactly ``round(v / 257)``; bits=8 is the identity)."""
    if not 8 <= bits <= 16:
        raise DataError(note(f"{bits}-bit samples", "expected 8 to 16 bits per sample"))
    full = (1 << bits) - 1
    wide = np.minimum(array.astype(np.uint32), full)  # stray high bits must not wrap around
    return ((wide * 255 + full // 2) // full).astype(np.uint8)


# GenICam pixel format (PFNC name or Basler's "...Packed" alias) -> (bits per sample, channel
# order of the buffer); the buffer arrives as (H, W) or (H, W, C) samples, LSB-aligned.
PIXEL_FORMATS: dict[str, tuple[int, str]] = {
    "Mono8": (8, "GRAY"),
    "Mono10": (10, "GRAY"),
    "Mono12": (12, "GRAY"),
    "Mono16": (16, "GRAY"),
    "BGR8": (8, "BGR"),
    "BGR8Packed": (8, "BGR"),
    "RGB8": (8, "RGB"),
    "RGB8Packed": (8, "RGB"),
    "BGRa8": (8, "BGRA"),
    "BGRA8Packed": (8, "BGRA"),
}


def camera_to_bgr(buffer: np.ndarray, pixel_format: str) -> np.ndarray:
    """A machine-vision camera buffer in ``pixel_format`` -> uint8 BGR (H, W, 3) by the one rule
    (:func:`bits_to_uint8` for deeper samples, gray -> 3 equal channels as for files)."""
    if pixel_format not in PIXEL_FORMATS:
        raise DataError(
            note(
                f"camera pixel format {pixel_format} is not supported",
                f"set the camera's pixel_format to one of {sorted(PIXEL_FORMATS)}",
            )
        )
    bits, order = PIXEL_FORMATS[pixel_format]
    array = buffer if bits == 8 and buffer.dtype == np.uint8 else bits_to_uint8(buffer, bits)
    if order == "RGB":
        array = swap_rb(array)
    return to_bgr(array, f"{pixel_format} frame")


def swap_rb(image: np.ndarray) -> np.ndarray:
    """BGR <-> RGB on the last axis (one image or a batch), C-contiguous."""
    return np.ascontiguousarray(image[..., ::-1])


def decode_bgr(src: ImageSource) -> np.ndarray:
    """A path, bytes or OpenCV array -> uint8 BGR (H, W, 3): the frame the runtime feeds."""
    return to_bgr(decode_raw(src), _name(src))


def decode_image(src: ImageSource) -> np.ndarray:
    """A path, bytes or OpenCV array -> uint8 RGB (H, W, 3): the image training sees."""
    return swap_rb(decode_bgr(src))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> uint8 RGB (H, W, 3) (see the module doc for every rule applied)."""
    return decode_image(Path(path))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A ground-truth mask file -> bool (H, W); any nonzero colour channel marks a defect pixel."""
    array = decode_raw(Path(path))
    if array.ndim == 3:
        colour = array[:, :, : 3 if array.shape[2] >= 3 else 1]
        return np.ascontiguousarray(np.any(colour != 0, axis=2))
    return np.ascontiguousarray(array != 0)


def _name(src: ImageSource) -> str:
    """How error messages name ``src``."""
    if isinstance(src, np.ndarray):
        return "frame"
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "image bytes"
    return str(src)


# -- geometry and model input -----------------------------------------------------------------
def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def resize_image(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """uint8 (H, W, 3) (any colour order) -> uint8 (h, w, 3); ``size`` is S or ``(h, w)``.

    ``INTER_LINEAR`` on purpose (not INTER_AREA): the one resize of training and deployment.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            note(
                "resize_image expects a 3-channel 8-bit image",
                f"expected uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}",
            )
        )
    height, width = _hw(size)
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """bool (H, W) -> bool (h, w), nearest neighbour (no new values)."""
    height, width = _hw(size)
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized > 0


def jpeg_round_trip(images: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> the same images JPEG-encoded at ``quality`` (1-100) and decoded,
    as a frame that went through an MJPG camera or a compressed stream arrives (4:2:0 chroma)."""
    if not 1 <= int(quality) <= 100:
        raise DataError(note(f"JPEG quality {quality} is out of range", "use 1-100"))
    out = np.empty_like(images)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    for i, image in enumerate(images):
        ok, buffer = cv2.imencode(".jpg", swap_rb(np.ascontiguousarray(image)), params)
        if not ok:
            raise DataError(note(f"OpenCV could not JPEG-encode image {i}", "check its shape"))
        out[i] = swap_rb(cv2.imdecode(buffer, cv2.IMREAD_COLOR))
    return out


def normalize(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W), or a batch (N, H, W, 3) -> (N, 3, H, W), as
    ``(x / 255 - mean) / std`` in float32 (mean/std: the model's, in ``[0, 1]`` units)."""
    channels_first = np.moveaxis(rgb, -1, -3)
    if rgb.dtype != np.uint8:  # not what callers pass, but the formula holds for any values
        return np.ascontiguousarray(_normalized(channels_first, mean, std, axis=-3))
    # An 8-bit channel has 256 values: look them up in a table made by the same float32 formula
    # (bit-identical to computing it per pixel, 2.7x faster on a 256 px image; training
    # normalises every image every epoch).
    table = _normalized(np.arange(256, dtype=np.uint8)[None, :], mean, std, axis=0)
    out = np.empty(channels_first.shape, dtype=np.float32)
    for c in range(3):
        np.take(table[c], channels_first[..., c, :, :], out=out[..., c, :, :])
    return out


def _normalized(
    values: np.ndarray, mean: Sequence[float], std: Sequence[float], axis: int
) -> np.ndarray:
    """``(values / 255 - mean) / std`` in float32, the channels along ``axis`` (first of 3)."""
    shape = [1] * values.ndim
    shape[axis] = 3
    mean_a = np.asarray(mean, dtype=np.float32).reshape(shape)
    std_a = np.asarray(std, dtype=np.float32).reshape(shape)
    return (values.astype(np.float32) / np.float32(255.0) - mean_a) / std_a


def to_model_input(
    images: Sequence[np.ndarray] | np.ndarray,
    size: int | Sequence[int],
    input_format: str = "uint8_nhwc",
    color_order: str = "BGR",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    order: str = "BGR",
) -> np.ndarray:
    """Decoded 8-bit images -> the exported graph's ``image`` input (the one conversion).

    Args:
        images: uint8 3-channel images (any sizes) in channel order ``order`` (``"BGR"`` for
            camera frames, ``"RGB"`` for :func:`read_image` results).
        size: the graph's input side S or ``(H, W)``; images are resized with :func:`resize_image`.
        input_format: ``"uint8_nhwc"`` -> uint8 (N, H, W, 3) in ``color_order``;
            ``"float32_nchw"`` -> float32 (N, 3, H, W) normalised RGB (needs ``mean``, ``std``).
    """
    if input_format not in INPUT_FORMATS:
        raise DataError(note(f"unknown input format {input_format!r}", f"use {INPUT_FORMATS}"))
    if len(images) == 0:
        raise DataError("to_model_input got no images")
    batch = np.stack([resize_image(image, size) for image in images])
    if input_format == "uint8_nhwc":
        return swap_rb(batch) if color_order.upper() != order.upper() else batch
    if mean is None or std is None:
        raise DataError(note("a float32_nchw input needs mean and std", "take the model's"))
    return normalize(swap_rb(batch) if order.upper() == "BGR" else batch, mean, std)


# -- synthetic frames -------------------------------------------------------------------------
def synthetic_frames(
    count: int, height: int, width: int, seed: int = 0, extremes: bool = False
) -> list[np.ndarray]:
    """``count`` uint8 BGR frames (H, W, 3), deterministic in ``seed``.

    Smooth low-frequency noise with a little grain, so JPEG sizes and decode times stay
    realistic (pure per-pixel noise is unrealistically slow to decode). ``extremes=True`` starts
    with the hard inputs for numerics checks: all black, all white, per-pixel noise, a gradient.
    """
    rng = np.random.default_rng(seed)
    frames: list[np.ndarray] = []
    if extremes:
        ramp = (
            np.linspace(0, 255, height, dtype=np.float32)[:, None]
            + np.linspace(0, 255, width, dtype=np.float32)[None, :]
        ) / 2
        frames += [
            np.zeros((height, width, 3), np.uint8),
            np.full((height, width, 3), 255, np.uint8),
            rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            np.repeat(ramp.astype(np.uint8)[:, :, None], 3, axis=2),
        ]
    while len(frames) < count:
        coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), np.uint8)
        frame = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        grain = rng.integers(-8, 9, frame.shape, dtype=np.int16)
        frames.append(np.clip(frame.astype(np.int16) + grain, 0, 255).astype(np.uint8))
    return frames[:count]
