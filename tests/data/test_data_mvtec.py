"""Tests for stpm_edge.data.mvtec: layout checks, clear errors, skip_bad, the seeded split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stpm_edge.data.mvtec import (
    ImageFolderSource,
    MVTecCategory,
    Sample,
    load_training_source,
    split_train_val,
)
from stpm_edge.errors import ConfigError, DataError


def _png(path: Path, h: int = 16, w: int = 16, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


def _mask(path: Path, h: int = 16, w: int = 16) -> Path:
    mask = np.zeros((h, w), np.uint8)
    mask[4:8, 4:8] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask)
    return path


def make_mvtec(root: Path, category: str = "widget", n_train: int = 3) -> Path:
    """A tiny valid MVTec tree: 3 train, 2 test/good, 2 crack + 1 dent with masks."""
    cat = root / category
    for i in range(n_train):
        _png(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        _png(cat / "test" / "good" / f"{i:03d}.png")
    for defect, n in (("crack", 2), ("dent", 1)):
        for i in range(n):
            _png(cat / "test" / defect / f"{i:03d}.png", value=30)
            _mask(cat / "ground_truth" / defect / f"{i:03d}_mask.png")
    return cat


def test_valid_layout(tmp_path):
    make_mvtec(tmp_path)
    ds = MVTecCategory(tmp_path, "widget").validate()
    train = ds.train_good()
    assert [s.path.name for s in train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.mask_path is None and s.defect_type == "good" for s in train)
    test = ds.test()
    assert [s.defect_type for s in test] == ["good", "good", "crack", "crack", "dent"]
    assert [s.label for s in test] == [0, 0, 1, 1, 1]
    crack = test[2]
    assert crack.mask_path == tmp_path / "widget" / "ground_truth" / "crack" / "000_mask.png"
    assert ds.defect_types == ["crack", "dent"]
    assert ds.counts() == {"train/good": 3, "test/good": 2, "test/crack": 2, "test/dent": 1}
    assert ds.skipped == 0


def test_sample_is_frozen():
    sample = Sample(Path("a.png"), 0, "good", None)
    with pytest.raises(AttributeError):
        sample.label = 1  # type: ignore[misc]


def test_root_missing(tmp_path):
    with pytest.raises(DataError, match="dataset root not found.*nowhere"):
        MVTecCategory(tmp_path / "nowhere", "widget")


def test_misspelt_category_suggests(tmp_path):
    make_mvtec(tmp_path, "bottle")
    make_mvtec(tmp_path, "cable")
    with pytest.raises(DataError, match="bottel") as info:
        MVTecCategory(tmp_path, "bottel")
    assert "did you mean 'bottle'" in str(info.value)
    assert "bottle, cable" in str(info.value)


def test_category_folder_given_as_root(tmp_path):
    make_mvtec(tmp_path, "widget")
    with pytest.raises(DataError, match="pass its parent"):
        MVTecCategory(tmp_path / "widget", "widget")


def test_empty_train_folder(tmp_path):
    cat = make_mvtec(tmp_path, n_train=0)
    (cat / "train" / "good").mkdir(parents=True)
    (cat / "train" / "good" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="train.good has no images"):
        MVTecCategory(tmp_path, "widget")


def test_missing_train_folder(tmp_path):
    make_mvtec(tmp_path, n_train=0)
    with pytest.raises(DataError, match="is missing"):
        MVTecCategory(tmp_path, "widget")


def test_missing_test_folder(tmp_path):
    _png(tmp_path / "widget" / "train" / "good" / "000.png")
    with pytest.raises(DataError, match="test folder missing"):
        MVTecCategory(tmp_path, "widget")


def test_missing_mask_names_expected_path(tmp_path):
    cat = make_mvtec(tmp_path)
    (cat / "ground_truth" / "dent" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"mask missing for defect image .*dent.000\.png") as info:
        MVTecCategory(tmp_path, "widget")
    assert str(cat / "ground_truth" / "dent" / "000_mask.png") in str(info.value)


def test_mask_size_mismatch_names_both_files(tmp_path):
    cat = make_mvtec(tmp_path)
    _mask(cat / "ground_truth" / "crack" / "001_mask.png", h=16, w=20)
    ds = MVTecCategory(tmp_path, "widget")  # listing is cheap and does not decode
    with pytest.raises(DataError, match="001_mask.png is 20x16") as info:
        ds.validate()
    assert str(cat / "test" / "crack" / "001.png") in str(info.value)


def test_corrupt_image_caught_by_validate(tmp_path):
    cat = make_mvtec(tmp_path)
    (cat / "train" / "good" / "001.png").write_bytes(b"garbage")
    ds = MVTecCategory(tmp_path, "widget")
    with pytest.raises(DataError, match="cannot decode.*001.png"):
        ds.validate()


def test_skip_bad_counts_and_drops(tmp_path, caplog):
    cat = make_mvtec(tmp_path)
    (cat / "ground_truth" / "dent" / "000_mask.png").unlink()  # missing mask
    (cat / "train" / "good" / "001.png").write_bytes(b"garbage")  # corrupt
    _mask(cat / "ground_truth" / "crack" / "001_mask.png", h=8, w=8)  # size mismatch
    ds = MVTecCategory(tmp_path, "widget", skip_bad=True)
    assert ds.skipped == 1
    ds.validate()
    assert ds.skipped == 3
    assert [s.path.name for s in ds.train_good()] == ["000.png", "002.png"]
    assert [(s.defect_type, s.path.name) for s in ds.test() if s.label] == [("crack", "000.png")]
    assert ds.defect_types == ["crack"]
    assert "skipping bad sample" in caplog.text


def test_skip_bad_with_nothing_left(tmp_path):
    cat = make_mvtec(tmp_path, n_train=1)
    (cat / "train" / "good" / "000.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable training image"):
        MVTecCategory(tmp_path, "widget", skip_bad=True).validate()


def test_image_folder_source(tmp_path):
    for name in ["b.png", "a.jpg"]:
        _png(tmp_path / "imgs" / name)
    src = ImageFolderSource(tmp_path / "imgs").validate()
    assert [s.path.name for s in src.train_good()] == ["a.jpg", "b.png"]
    assert src.test() == [] and src.counts() == {"train/good": 2}


def test_image_folder_source_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in"):
        ImageFolderSource(tmp_path / "empty")
    make_mvtec(tmp_path / "root")
    with pytest.raises(DataError, match="--category widget"):
        ImageFolderSource(tmp_path / "root" / "widget")
    with pytest.raises(DataError, match="MVTec root"):
        ImageFolderSource(tmp_path / "root")


def test_load_training_source_dispatch(tmp_path):
    make_mvtec(tmp_path)
    assert isinstance(load_training_source(tmp_path, "widget"), MVTecCategory)
    folder = tmp_path / "widget" / "train" / "good"
    assert isinstance(load_training_source(folder, None), ImageFolderSource)


def _samples(n: int) -> list[Sample]:
    return [Sample(Path(f"{i:03d}.png"), 0, "good", None) for i in range(n)]


def test_split_is_deterministic_and_disjoint():
    samples = _samples(20)
    train, val = split_train_val(samples, 0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(samples)
    assert split_train_val(samples, 0.2, seed=3) == (train, val)
    assert train == sorted(train, key=lambda s: s.path)  # input order kept
    other = [split_train_val(samples, 0.2, seed=s)[1] for s in range(1, 6)]
    assert any(v != val for v in other)


@pytest.mark.parametrize(("n", "n_val"), [(0, 0), (1, 0), (2, 1), (3, 1), (10, 2)])
def test_split_sizes(n, n_val):
    train, val = split_train_val(_samples(n), 0.2, seed=0)
    assert len(val) == n_val and len(train) == n - n_val


def test_split_rejects_bad_fraction():
    with pytest.raises(ConfigError, match="val_fraction"):
        split_train_val(_samples(4), 1.0)
