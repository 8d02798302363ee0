"""Frame -> graph input (runtime/preprocess.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import fake_metadata

from stpm_edge.errors import ConfigError, DataError
from stpm_edge.runtime.metadata import parse_metadata
from stpm_edge.runtime.preprocess import parse_roi, prepare_batch, to_bgr


def _info(size=32, input_format="uint8_nhwc", color_order="BGR"):
    return parse_metadata(fake_metadata(size, input_format, color_order))


def _frame(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_uint8_bgr_resize_matches_cv2() -> None:
    frames = [_frame(seed=0), _frame(80, 40, seed=1)]
    batch = prepare_batch(frames, _info())
    assert batch.dtype == np.uint8 and batch.shape == (2, 32, 32, 3) and batch.flags.c_contiguous
    expected = cv2.resize(frames[1], (32, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(batch[1], expected)


def test_rgb_graph_swaps_channels() -> None:
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[..., 0] = 200  # blue in BGR
    bgr = prepare_batch([frame], _info(color_order="BGR"))
    rgb = prepare_batch([frame], _info(color_order="RGB"))
    assert bgr[0, 0, 0].tolist() == [200, 0, 0]
    assert rgb[0, 0, 0].tolist() == [0, 0, 200]


def test_roi_crop_first() -> None:
    frame = np.zeros((100, 120, 3), np.uint8)
    frame[10:42, 20:52] = 255
    batch = prepare_batch([frame], _info(), roi=(20, 10, 32, 32))
    assert batch.min() == 255  # the crop is exactly the white square, no resize needed
    with pytest.raises(ConfigError, match="does not fit in a 120x100 frame"):
        prepare_batch([frame], _info(), roi=(100, 10, 32, 32))


def test_float_path_normalises_rgb_nchw() -> None:
    info = _info(input_format="float32_nchw")
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[..., 2] = 255  # red in BGR
    batch = prepare_batch([frame], info)
    assert batch.dtype == np.float32 and batch.shape == (1, 3, 32, 32)
    mean, std = np.array(info.mean), np.array(info.std)
    expected = (np.array([1.0, 0.0, 0.0]) - mean) / std  # RGB order
    np.testing.assert_allclose(batch[0, :, 5, 5], expected, rtol=1e-5)


def test_gray_bgra_uint16_to_bgr() -> None:
    gray = np.full((10, 12), 7, np.uint8)
    assert to_bgr(gray).shape == (10, 12, 3)
    assert to_bgr(gray[..., None]).shape == (10, 12, 3)
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[..., 1] = 9
    assert to_bgr(bgra)[0, 0].tolist() == [0, 9, 0]
    # the one 8-bit rule of training: round(v / 257), not v >> 8 (0x12FF >> 8 would give 0x12)
    assert to_bgr(np.full((4, 4), 0x12FF, np.uint16))[0, 0].tolist() == [0x13] * 3
    assert to_bgr(np.full((4, 4, 3), 0.5, np.float32))[0, 0].tolist() == [128] * 3
    with pytest.raises(DataError, match="sample type int32"):
        to_bgr(np.zeros((4, 4, 3), np.int32))
    batch = prepare_batch([gray, bgra], _info())
    assert batch.shape == (2, 32, 32, 3)


def test_parse_roi() -> None:
    assert parse_roi("1,2,30,40") == (1, 2, 30, 40)
    assert parse_roi(None) is None
    with pytest.raises(ConfigError, match="four integers"):
        parse_roi("1,2,3")
    with pytest.raises(ConfigError, match="w, h > 0"):
        parse_roi("0,0,0,10")
