"""Tests for stpm_edge.data.demo: valid MVTec layout, exact visible masks, determinism, no overwrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stpm_edge.data import demo
from stpm_edge.data.demo import (
    DEFECT_TYPES,
    MIN_CONTRAST,
    PHOTO_SIDE,
    TEST_COLS,
    TRAIN_COLS,
    _render_crop,
    _rng,
    build_demo_dataset,
    composite,
)
from stpm_edge.data.io import read_image, read_mask
from stpm_edge.data.mvtec import MVTecCategory
from stpm_edge.errors import ConfigError, OutputExistsError

SMALL = {"n_train": 4, "n_test_good": 2, "n_test_defect": 8, "image_size": 128, "seed": 5}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "ds", ["gravel"], **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_is_valid_mvtec(demo_root):
    ds = MVTecCategory(demo_root, "gravel").validate()
    assert ds.counts() == {
        "train/good": 4,
        "test/good": 2,
        **{f"test/{t}": 2 for t in sorted(DEFECT_TYPES)},
    }
    assert ds.defect_types == sorted(DEFECT_TYPES)
    assert (demo_root / "README.txt").read_text().startswith("stpm-edge demo dataset")
    for sample in ds.train_good() + ds.test():
        image = read_image(sample.path)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert image.std() > 10  # a real texture, not a flat image


def test_masks_are_exact_and_visible(demo_root):
    """Re-render each clean crop from its random stream: pixels differ exactly on the mask."""
    size = SMALL["image_size"]
    for defect in DEFECT_TYPES:
        areas = []
        for i in range(2):
            clean = _render_crop(
                "gravel", TEST_COLS, _rng(SMALL["seed"], "gravel", defect, i), size
            )
            image = read_image(demo_root / "gravel" / "test" / defect / f"{i:03d}.png")
            mask = read_mask(demo_root / "gravel" / "ground_truth" / defect / f"{i:03d}_mask.png")
            changed = np.any(image != clean, axis=2)
            np.testing.assert_array_equal(changed, mask, err_msg=f"{defect} {i}")
            assert mask.sum() > 0
            change = np.abs(image.astype(int) - clean.astype(int)).max(axis=2)[mask].mean()
            assert change >= MIN_CONTRAST, (defect, i, change)
            areas.append(int(mask.sum()))
        assert areas[1] > areas[0], f"{defect}: the odd index is the large variant"


def test_test_images_never_repeat_training_pixels(tmp_path, monkeypatch):
    """On a photo whose training columns are dark, test columns bright and the rest mid-gray,
    every training image is all dark and every good test image all bright (defect images are
    re-rendered from the test columns in the test above)."""
    photo = np.full((PHOTO_SIDE, PHOTO_SIDE), 0.5, np.float32)
    photo[:, TRAIN_COLS[0] : TRAIN_COLS[1]] = 0.25
    photo[:, TEST_COLS[0] : TEST_COLS[1]] = 0.75
    real_photo = demo.photo
    monkeypatch.setattr(demo, "photo", lambda name: photo if name == "gravel" else real_photo(name))
    args = {**SMALL, "n_train": 12, "n_test_good": 12, "n_test_defect": 4}
    root = build_demo_dataset(tmp_path / "ds", ["gravel"], **args)
    red = 0.97 * 255  # gravel's tint of the red channel
    for folder, low, high in (("train/good", 0.15, 0.35), ("test/good", 0.65, 0.85)):
        paths = sorted((root / "gravel" / folder).glob("*.png"))
        assert len(paths) == 12
        for path in paths:
            level = read_image(path)[..., 0] / red  # jitter moves it by a few per cent only
            assert low <= level.min() and level.max() <= high, (path.name, level.min(), level.max())


def test_composite_mask_is_exact():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    alpha = np.zeros((16, 16), np.float32)
    alpha[4:8, 4:8] = 1.0
    alpha[0, 0] = 0.001  # too faint to change a grey level: must not enter the mask
    target = np.where(clean > 127, 0, 255).astype(np.float32)  # every channel changes a lot
    out, mask = composite(clean, alpha, target)
    assert mask.sum() == 16 and mask[4:8, 4:8].all()
    np.testing.assert_array_equal(out[~mask], clean[~mask])
    out0, mask0 = composite(clean, np.zeros((16, 16), np.float32), target)
    assert not mask0.any() and np.array_equal(out0, clean)


def test_deterministic_bytes(demo_root, tmp_path):
    again = build_demo_dataset(tmp_path / "again", ["gravel"], **SMALL)
    assert _files(again) == _files(demo_root)
    other = build_demo_dataset(tmp_path / "other", ["gravel"], **{**SMALL, "seed": 6})
    assert (
        _files(other)["gravel/train/good/000.png"] != _files(demo_root)["gravel/train/good/000.png"]
    )


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    args = {**SMALL, "n_train": 1, "n_test_good": 0, "n_test_defect": 1}
    with pytest.raises(OutputExistsError, match="--force"):
        build_demo_dataset(out, ["brick"], **args)
    assert not (out / "brick").exists()
    build_demo_dataset(out, ["brick"], force=True, **args)
    assert (out / "keep.txt").read_text() == "user file"
    assert sorted(p.name for p in (out / "brick" / "test").iterdir()) == ["scratch"]
    (out / "brick" / "stale.txt").write_text("old")
    build_demo_dataset(out, ["brick"], force=True, **args)
    assert not (out / "brick" / "stale.txt").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown demo category 'wood'"):
        build_demo_dataset(tmp_path / "a", ["wood"])
    with pytest.raises(ConfigError, match="n_train"):
        build_demo_dataset(tmp_path / "b", ["grass"], n_train=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
