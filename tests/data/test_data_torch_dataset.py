"""Tests for stpm_edge.data.torch_dataset: one resize + normalise, masks, the in-memory cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stpm_edge.data.mvtec import Sample
from stpm_edge.data.torch_dataset import ImageDataset, preprocess, resize_mask
from stpm_edge.errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def test_preprocess_constant_image_values():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:] = (255, 0, 128)
    out = preprocess(rgb, 16, MEAN, STD)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    expected = (np.array([255, 0, 128]) / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(out[:, 5, 7], expected, rtol=1e-6)


def test_preprocess_uses_bilinear_resize():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = preprocess(rgb, 24, (0, 0, 0), (1, 1, 1))
    expected = cv2.resize(rgb, (24, 24), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    area = cv2.resize(rgb, (24, 24), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / 255.0
    assert not np.allclose(out, area, atol=1e-6)


def test_preprocess_rejects_wrong_input():
    with pytest.raises(DataError, match="uint8"):
        preprocess(np.zeros((8, 8), np.uint8), 8, MEAN, STD)
    with pytest.raises(DataError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), np.float32), 8, MEAN, STD)


def test_resize_mask_stays_binary():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 5:15] = True
    out = resize_mask(mask, 20)
    assert out.shape == (1, 20, 20) and out.dtype == np.float32
    assert set(np.unique(out)) == {0.0, 1.0}
    assert out[0, 10, 5] == 1.0 and out[0, 2, 15] == 0.0


def _write(path: Path, array: np.ndarray) -> Path:
    cv2.imwrite(str(path), array)
    return path


@pytest.fixture
def samples(tmp_path) -> list[Sample]:
    good = _write(tmp_path / "good.png", np.full((32, 48, 3), 200, np.uint8))
    bad = _write(tmp_path / "bad.png", np.full((32, 48, 3), 20, np.uint8))
    mask = np.zeros((32, 48), np.uint8)
    mask[:16, :24] = 255  # top-left quarter
    mask_path = _write(tmp_path / "bad_mask.png", mask)
    return [Sample(good, 0, "good", None), Sample(bad, 1, "crack", mask_path)]


def test_dataset_items(samples):
    ds = ImageDataset(samples, 16, MEAN, STD, with_masks=True)
    assert len(ds) == 2
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)
    assert item["label"] == 1 and item["index"] == 1
    mask = item["mask"]
    assert mask.shape == (1, 16, 16) and mask.dtype == torch.float32
    assert (
        mask[0, :8, :8].min() == 1.0 and mask[0, 8:, :].max() == 0.0 and mask[0, :, 8:].max() == 0.0
    )
    assert ds[0]["mask"].sum() == 0 and ds[0]["label"] == 0
    expected = (20 / 255.0 - MEAN[0]) / STD[0]
    assert torch.allclose(item["image"][0], torch.full((16, 16), expected), atol=1e-6)


def test_dataset_without_masks_and_dataloader(samples):
    ds = ImageDataset(samples, 16, MEAN, STD)
    assert "mask" not in ds[0]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert batch["label"].tolist() == [0, 1]


def test_cache_avoids_rereading(samples):
    ds = ImageDataset(samples, 16, MEAN, STD, with_masks=True, cache=True)
    first = ds[1]
    samples[1].path.unlink()
    samples[1].mask_path.unlink()
    again = ds[1]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    uncached = ImageDataset(samples, 16, MEAN, STD)
    with pytest.raises(DataError, match="bad.png"):
        uncached[1]


def test_mask_size_mismatch_on_load(samples, tmp_path):
    _write(tmp_path / "bad_mask.png", np.zeros((10, 10), np.uint8))
    ds = ImageDataset(samples, 16, MEAN, STD, with_masks=True)
    with pytest.raises(DataError, match="bad_mask.png is 10x10") as info:
        ds[1]
    assert "bad.png is 48x32" in str(info.value)


def test_rejects_bad_normalisation(samples):
    with pytest.raises(DataError, match="normalisation"):
        ImageDataset(samples, 16, (0.5, 0.5), (1, 1, 1))
