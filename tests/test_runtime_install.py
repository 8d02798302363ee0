"""The runtime flavour installs and runs without torch: ``pip install stpm-edge`` in a fresh venv.

The venv is built from a copy of the package sources (so no build files land in the checkout)
with no extras, then proven torch-free and used on a real exported model: ``stpm-camera`` over a
folder of test images must give the verdicts and scores of the same detector in the full
environment, ``stpm-doctor`` must pass, and ``stpm-train`` must say what to install.

Needs the package registry (numpy, OpenCV, ONNX Runtime, PyYAML and the build backend come from
it; pip's cache or a local wheel mirror makes it ~10-30 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stpm_edge.cli.common import TRAIN_INSTALL_HINT

REPO = Path(__file__).resolve().parents[1]
SOURCES = (
    "stpm_edge",
    "export",
    "runtime",
    "benchmarks",
    "setup.cfg",
    "pyproject.toml",
    "README.md",
)
TRAIN_ONLY = ("torch", "torchvision", "scipy", "skimage", "onnx", "onnxslim", "matplotlib")


def _run(argv: list, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install <copy of this project>`` (no extras)."""
    root = tmp_path_factory.mktemp("runtime-install")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "reports", "*.egg-info")
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    venv = root / "venv"
    start = time.perf_counter()
    made = _run([sys.executable, "-m", "venv", venv])
    assert made.returncode == 0, made.stderr
    pip = _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", src], timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    print(f"runtime venv: created and installed in {time.perf_counter() - start:.1f} s")
    return venv


def test_runtime_flavour_has_no_torch(runtime_venv: Path) -> None:
    code = (
        "import importlib.util, json; "
        f"print(json.dumps([m for m in {list(TRAIN_ONLY)!r} if importlib.util.find_spec(m)]))"
    )
    result = _run([runtime_venv / "bin" / "python", "-c", code])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []  # none of the training-only packages came along


def test_camera_in_the_runtime_venv_matches_the_full_install(
    runtime_venv: Path, exported_onnx: Path, demo_data, tmp_path: Path
) -> None:
    from stpm_edge.runtime import AnomalyDetector
    from stpm_edge.runtime.image import decode_bgr

    images = tmp_path / "images"
    images.mkdir()
    picked = demo_data.test_images()[::2]
    for i, path in enumerate(picked):
        shutil.copy2(path, images / f"{i:03d}_{path.parent.name}.png")
    log = tmp_path / "camera.jsonl"
    result = _run([runtime_venv / "bin" / "stpm-camera", "--model", exported_onnx, "--source",
                   images, "--log", log, "--backend", "ort-cpu", "--threads", "1",
                   "--stats-every", "0"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames = [r for r in map(json.loads, log.read_text().splitlines()) if "frame" in r]
    assert [Path(f["file"]).name for f in frames] == sorted(p.name for p in images.iterdir())
    # the same model and images in the full environment give the same verdicts and scores
    with AnomalyDetector(exported_onnx, backend="ort-cpu", threads=1) as det:
        expected = det.predict([decode_bgr(images / Path(f["file"]).name) for f in frames])
    assert [f["verdict"] for f in frames] == [p.verdict for p in expected]
    for f, p in zip(frames, expected, strict=True):
        assert f["score"] == pytest.approx(float(p.score), rel=1e-4, abs=1e-6)
    assert {"NG", "OK"} == {f["verdict"] for f in frames}  # both kinds were judged


def test_doctor_checks_the_detector_in_the_runtime_venv(
    runtime_venv: Path, exported_onnx: Path, demo_data, tmp_path: Path
) -> None:
    result = _run([runtime_venv / "bin" / "stpm-doctor", exported_onnx, "--images",
                   demo_data.test_dir / "good", "--backends", "ort-cpu", "--seconds", "0.2",
                   "--frames", "2", "--out", tmp_path / "doctor"])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "doctor" / "doctor.json").read_text())
    assert report["ok"] is True


def test_training_command_says_what_to_install(runtime_venv: Path, tmp_path: Path) -> None:
    for command in ("stpm-train", "stpm-export"):
        argv = ["--data", tmp_path] if command == "stpm-train" else [tmp_path / "x.ckpt", "-o",
                                                                      tmp_path / "x.onnx"]  # fmt: skip
        result = _run([runtime_venv / "bin" / command, *argv])
        assert result.returncode == 2, (command, result.stderr)
        assert TRAIN_INSTALL_HINT in result.stderr and "Traceback" not in result.stderr, command
        assert result.stderr.startswith(f"error: {command} needs "), result.stderr
