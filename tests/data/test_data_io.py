"""Tests for stpm_edge.data.io: every file flavour decodes to uint8 RGB, failures name the file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stpm_edge.data.io import IMAGE_SUFFIXES, list_images, read_image, read_mask
from stpm_edge.errors import DataError


def _gradient_rgb(h: int = 12, w: int = 20) -> np.ndarray:
    """uint8 (h, w, 3) RGB with distinct channels."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 12, yy * 20, 255 - xx * 12], axis=2).astype(np.uint8)


def test_gray_png_becomes_three_equal_channels(tmp_path):
    gray = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgb = read_image(tmp_path / "g.png")
    assert rgb.shape == (12, 20, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray)


def test_rgb_png_keeps_rgb_order(tmp_path):
    rgb = _gradient_rgb()
    cv2.imwrite(str(tmp_path / "c.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)


def test_rgba_drops_alpha(tmp_path):
    rgb = _gradient_rgb()
    alpha = np.full(rgb.shape[:2], 7, np.uint8)
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), alpha])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    out = read_image(tmp_path / "a.png")
    assert out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, rgb)


def test_16bit_png_is_rescaled(tmp_path):
    gray16 = np.array([[0, 257 * 100, 65535, 257 * 200 + 100]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), gray16)
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, 200])


def test_16bit_rgb_tiff(tmp_path):
    rgb8 = _gradient_rgb()
    bgr16 = cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "t.tif"), bgr16)
    np.testing.assert_array_equal(read_image(tmp_path / "t.tif"), rgb8)


@pytest.mark.parametrize("suffix", [".bmp", ".tiff"])
def test_lossless_formats_roundtrip(tmp_path, suffix):
    rgb = _gradient_rgb()
    cv2.imwrite(str(tmp_path / f"x{suffix}"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(tmp_path / f"x{suffix}"), rgb)


def test_jpeg_is_close(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:] = (200, 40, 90)
    cv2.imwrite(str(tmp_path / "j.JPG"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = read_image(tmp_path / "j.JPG")
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - rgb).max() <= 4  # JPEG is lossy, channel order must hold


def test_palette_png(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    indices = np.array([[0, 1], [1, 0]], np.uint8)
    img = image_module.fromarray(indices, mode="P")
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 255])


@pytest.mark.parametrize("content", [b"this is not a png at all", b""])
def test_corrupt_file_raises_naming_path(tmp_path, content):
    path = tmp_path / "broken_file.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match="broken_file.png"):
        read_image(path)
    with pytest.raises(DataError, match="broken_file.png"):
        read_mask(path)


def test_truncated_png_raises(tmp_path):
    cv2.imwrite(str(tmp_path / "full.png"), _gradient_rgb(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="not found.*nope.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="not a file"):
        read_image(tmp_path)


def test_read_mask_nonzero_is_defect(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 3:6] = 255
    mask[0, 0] = 1  # any nonzero value counts
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.bool_ and out.shape == (6, 8)
    np.testing.assert_array_equal(out, mask != 0)
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[1, 1, 2] = 255
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    assert read_mask(tmp_path / "c.png").sum() == 1


def test_list_images_sorted_case_insensitive(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.Tiff", "notes.txt", ".hidden.png", "z.npy"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.Tiff"]
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(DataError, match="missing_dir"):
        list_images(tmp_path / "missing_dir")


def test_gray_alpha_png(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    la = np.zeros((4, 5, 2), np.uint8)
    la[..., 0], la[..., 1] = 77, 9
    image_module.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out.shape == (4, 5, 3)
    assert (out == 77).all()


def test_float_tiff_is_taken_as_unit_range(tmp_path):
    gray = np.array([[0.0, 0.5, 1.0, 2.0]], np.float32)
    cv2.imwrite(str(tmp_path / "f.tiff"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tiff")[0, :, 0], [0, 128, 255, 255])
