"""Tests for stpm_edge.data.bench: MVTec layout, exact masks, determinism, pose variation, CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stpm_edge.cli.data import main
from stpm_edge.data.bench import CATEGORIES, build_bench_dataset, shoot
from stpm_edge.data.io import read_image, read_mask
from stpm_edge.data.mvtec import MVTecCategory
from stpm_edge.data.synth.common import MASK_TOL, image_rng
from stpm_edge.data.synth.defects import SURFACE_DEFECTS
from stpm_edge.errors import ConfigError, OutputExistsError

SIZE = 128
CATS = ["grass", "gear"]  # one photo texture, one rendered part


def _small(category: str) -> dict:
    """Two images per defect type: index 0 the small/faint variant, index 1 the large one."""
    return {"n_train": 3, "n_test_good": 2, "n_test_defect": 2 * len(CATEGORIES[category])}


@pytest.fixture(scope="module")
def bench_roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bench")
    return {
        c: build_bench_dataset(base / c, [c], image_size=SIZE, seed=3, **_small(c)) for c in CATS
    }


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("category", CATS)
def test_layout_is_valid_mvtec(bench_roots, category):
    ds = MVTecCategory(bench_roots[category], category).validate()
    types = CATEGORIES[category]
    assert ds.counts() == {
        "train/good": 3,
        "test/good": 2,
        **{f"test/{t}": 2 for t in sorted(types)},
    }
    assert ds.defect_types == sorted(types)
    assert (bench_roots[category] / "README.txt").read_text().startswith("stpm-edge benchmark")
    for sample in ds.train_good() + ds.test():
        image = read_image(sample.path)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert image.std() > 10  # a textured scene, not a flat image


def test_categories_cover_the_defect_families():
    """Photo textures and parts; thin, faint, geometric and foreign-matter defects all present."""
    assert {"brick", "grass", "gravel", "gear", "washer", "pcb", "label"} <= set(CATEGORIES)
    families = {t for types in CATEGORIES.values() for t in types}
    assert {"scratch", "stain_colour", "stain_intensity", "crack", "contamination"} <= families
    assert {"missing", "extra"} <= families
    assert {"deformation", "misplaced", "misprint"} <= families
    assert all(len(types) >= 4 for types in CATEGORIES.values())


@pytest.mark.parametrize("category", CATS)
def test_masks_are_exactly_the_changed_pixels(bench_roots, category):
    """Re-render each clean shot from its random stream: the image differs from it exactly on the
    mask, by >= MASK_TOL there, and a part's surface defect stays on the part."""
    root = bench_roots[category] / category
    faint = []
    for defect in CATEGORIES[category]:
        for i in range(2):
            shot = shoot(category, "test", image_rng(3, category, f"test/{defect}", i), SIZE)
            image = read_image(root / "test" / defect / f"{i:03d}.png")
            mask = read_mask(root / "ground_truth" / defect / f"{i:03d}_mask.png")
            change = np.abs(image.astype(int) - shot.image.astype(int)).max(axis=2)
            np.testing.assert_array_equal(change > 0, mask, err_msg=f"{defect} {i}")
            assert mask.sum() >= 6 and change[mask].min() >= MASK_TOL
            if defect in SURFACE_DEFECTS:
                assert not (mask & ~shot.region).any(), f"{defect} {i} leaves the surface"
            faint.append((defect, i, change[mask].mean()))
    # The benchmark is meant to be hard: a faint stain changes pixels by less than 20 levels.
    assert max(c for d, i, c in faint if d.startswith("stain") and i == 0) < 20


def test_deterministic_bytes_and_prefix(bench_roots, tmp_path):
    again = build_bench_dataset(
        tmp_path / "again", ["gear"], image_size=SIZE, seed=3, **_small("gear")
    )
    assert _files(again) == _files(bench_roots["gear"])
    more = {**_small("gear"), "n_train": 5}
    longer = _files(
        build_bench_dataset(tmp_path / "more", ["gear"], image_size=SIZE, seed=3, **more)
    )
    first = _files(bench_roots["gear"])
    assert all(longer[k] == v for k, v in first.items() if k != "README.txt")
    other = _files(
        build_bench_dataset(tmp_path / "other", ["gear"], image_size=SIZE, seed=4, **_small("gear"))
    )
    assert other["gear/train/good/000.png"] != first["gear/train/good/000.png"]


def _label_pose(image: np.ndarray) -> tuple[float, float, float]:
    """Centre and tilt of the bright paper label in a label image."""
    paper = (image.min(axis=2) > 170).astype(np.uint8)
    contours, _ = cv2.findContours(paper, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    (cx, cy), _, angle = cv2.minAreaRect(max(contours, key=cv2.contourArea))
    return cx, cy, (angle + 45.0) % 90.0 - 45.0  # tilt folded to [-45, 45)


def test_parts_vary_in_pose():
    """Label shots are shifted and tilted (+-4 px-ish, +-4 degrees); gear shots turn freely."""
    poses = np.array(
        [
            _label_pose(shoot("label", "train", image_rng(0, "label", "train", i), SIZE).image)
            for i in range(10)
        ]
    )
    assert poses[:, 0].std() > 1.0 and poses[:, 1].std() > 1.0  # pixels
    assert poses[:, 2].std() > 1.0 and np.abs(poses[:, 2]).max() <= 5.0  # degrees
    gears = [shoot("gear", "train", image_rng(0, "gear", "train", i), SIZE).image for i in range(2)]
    diff = np.abs(gears[0].astype(int) - gears[1].astype(int)).max(axis=2)
    assert (diff > 60).mean() > 0.05  # teeth and holes in other places, not just noise


def test_refuses_to_overwrite_and_bad_arguments(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(OutputExistsError, match="--force"):
        build_bench_dataset(out, ["pcb"], n_train=1, n_test_good=0, n_test_defect=0)
    build_bench_dataset(out, ["pcb"], n_train=1, n_test_good=0, n_test_defect=0, force=True)
    assert (out / "keep.txt").read_text() == "user file"
    with pytest.raises(ConfigError, match="unknown benchmark category 'wood'"):
        build_bench_dataset(tmp_path / "a", ["wood"])
    with pytest.raises(ConfigError, match="n_train"):
        build_bench_dataset(tmp_path / "b", ["gear"], n_train=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_bench_then_check(tmp_path, capsys):
    out = tmp_path / "ds"
    args = [
        "--categories",
        "washer",
        "--n-train",
        "2",
        "--n-test-good",
        "1",
        "--n-test-defect",
        "5",
    ]
    assert main(["bench", "--out", str(out), *args, "--image-size", "96"]) == 0
    assert "benchmark dataset written" in capsys.readouterr().out
    assert main(["check", "--data", str(out), "--category", "washer"]) == 0
    assert "test/deformation" in capsys.readouterr().out
    assert main(["bench", "--out", str(tmp_path / "x"), "--categories", "wood"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark category" in err and "Note:" in err


def test_texture_test_crops_never_repeat_training_pixels(monkeypatch):
    """On a photo whose training columns are dark, test columns bright and the rest mid-gray,
    training shots are all dark and test shots all bright (jitter moves levels by ~15 % at most)."""
    from stpm_edge.data.synth import textures

    photo = np.full((512, 512), 0.5, np.float32)
    photo[:, textures.TRAIN_COLS[0] : textures.TRAIN_COLS[1]] = 0.25
    photo[:, textures.TEST_COLS[0] : textures.TEST_COLS[1]] = 0.75
    monkeypatch.setattr(textures, "photo", lambda name: photo)
    green = 255.0  # grass's tint keeps the green channel
    for split, low, high in (("train", 0.18, 0.32), ("test", 0.6, 0.9)):
        for i in range(12):
            level = shoot("grass", split, image_rng(0, "grass", split, i), 64).image[..., 1] / green
            assert low <= level.min() and level.max() <= high, (split, i, level.min(), level.max())


def test_stains_change_only_colour_or_only_intensity(bench_roots):
    """Inside an intensity stain every channel is scaled alike (a grey-level change only); inside
    a colour stain the channels move apart while the mean level about stays."""
    root = bench_roots["grass"] / "grass"
    for i in range(2):
        ratios = {}
        for defect in ("stain_intensity", "stain_colour"):
            shot = shoot("grass", "test", image_rng(3, "grass", f"test/{defect}", i), SIZE)
            image = read_image(root / "test" / defect / f"{i:03d}.png").astype(float)
            mask = read_mask(root / "ground_truth" / defect / f"{i:03d}_mask.png")
            clean = shot.image.astype(float)
            ratios[defect] = image[mask].sum(axis=0) / clean[mask].sum(axis=0)  # per channel
        intensity, colour = ratios["stain_intensity"], ratios["stain_colour"]
        assert np.ptp(intensity) < 0.01 and abs(intensity.mean() - 1.0) > 0.03, intensity
        assert np.ptp(colour) > 0.03 and abs(colour.mean() - 1.0) < 0.5 * np.ptp(colour), colour
