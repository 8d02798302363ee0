"""The runtime with a REAL exported model (trained on the demo data), not the test double.

The exported graph re-calibrates its thresholds on the validation images with its own scores,
so verdicts are compared with (1) the detector run offline on the same frames, and (2) the
PyTorch model's scores judged by the graph's calibration; raw scores must match PyTorch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from stpm_edge.runtime import camera
from stpm_edge.runtime.detector import AnomalyDetector

REPO = Path(__file__).resolve().parents[2]


def frame_records(log: Path) -> list[dict]:
    return [r for r in map(json.loads, log.read_text().splitlines()) if "verdict" in r]


@pytest.fixture(scope="module")
def parts_dir(demo_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every demo test image (good and all defect types) in one flat folder."""
    folder = tmp_path_factory.mktemp("parts")
    for path in demo_data.test_images():
        shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
    return folder


@pytest.fixture(scope="module")
def detector(exported_onnx: Path):
    with AnomalyDetector(exported_onnx, backend="ort-cpu", threads=1) as det:
        yield det


def run_camera(model: Path, source: Path, log: Path) -> None:
    argv = [
        "--model",
        str(model),
        "--source",
        str(source),
        "--log",
        str(log),
        "--backend",
        "ort-cpu",
        "--threads",
        "1",
        "--stats-every",
        "0",
        "--batch",
        "4",
    ]
    assert camera.main(argv) == 0


@pytest.fixture(scope="module")
def folder_log(
    exported_onnx: Path, parts_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    log = tmp_path_factory.mktemp("camlog") / "folder.jsonl"
    run_camera(exported_onnx, parts_dir, log)
    return log


def test_camera_on_a_folder_agrees_with_offline_detection(
    folder_log: Path, parts_dir: Path, detector
) -> None:
    records = {Path(r["file"]).name: r for r in frame_records(folder_log)}
    paths = sorted(parts_dir.glob("*.png"))
    assert sorted(records) == [p.name for p in paths]  # every image exactly once
    preds = detector.predict([cv2.imread(str(p)) for p in paths])
    for path, pred in zip(paths, preds, strict=True):
        logged = records[path.name]
        assert logged["verdict"] == pred.verdict, path.name
        # batch 4 in the loop vs one batch here: ORT's kernels may round differently per batch
        assert logged["score"] == pytest.approx(pred.score, rel=1e-5)
        assert logged["score_normalized"] == pytest.approx(
            pred.score_normalized, rel=1e-5, abs=1e-6
        )


def test_camera_scores_match_pytorch(
    folder_log: Path, parts_dir: Path, detector, trained_model, read_rgb, torch_reference
) -> None:
    import torch

    from stpm_edge.anomaly_map import calibration_scale, normalize_score

    records = {Path(r["file"]).name: r for r in frame_records(folder_log)}
    paths = sorted(parts_dir.glob("*.png"))
    _, torch_scores = torch_reference(trained_model, read_rgb(paths))
    logged = np.array([records[p.name]["score"] for p in paths])
    np.testing.assert_allclose(logged, torch_scores, rtol=1e-4)
    # PyTorch judged with the graph's own (re-calibrated) thresholds gives the logged verdicts
    cal = detector.info.calibration
    normalized = normalize_score(
        torch.from_numpy(torch_scores), cal["image_threshold"], calibration_scale(cal)
    )
    torch_verdicts = np.where(normalized.numpy() >= 0.5, "NG", "OK").tolist()
    assert [records[p.name]["verdict"] for p in paths] == torch_verdicts
    counts = {v: torch_verdicts.count(v) for v in ("OK", "NG")}
    print(f"verdicts on {len(paths)} test images: {counts}")


def test_camera_on_an_mjpg_video(
    exported_onnx: Path, parts_dir: Path, detector, tmp_path: Path
) -> None:
    paths = sorted(parts_dir.glob("*.png"))
    originals = [cv2.imread(str(p)) for p in paths]
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 64))
    assert writer.isOpened()
    for frame in originals:
        writer.write(frame)
    writer.release()
    log = tmp_path / "video.jsonl"
    run_camera(exported_onnx, video, log)
    records = frame_records(log)
    # MJPG is lossy: the reference is the detector on the frames as decoded from the file
    cap = cv2.VideoCapture(str(video))
    decoded = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        decoded.append(frame)
    cap.release()
    assert len(records) == len(decoded) == len(paths)
    assert (
        max(
            float(np.abs(d.astype(int) - o).mean()) for d, o in zip(decoded, originals, strict=True)
        )
        < 20
    )
    preds = detector.predict(decoded)
    assert [r["frame"] for r in records] == sorted(r["frame"] for r in records)
    assert [r["verdict"] for r in records] == [p.verdict for p in preds]
    np.testing.assert_allclose([r["score"] for r in records], [p.score for p in preds], rtol=1e-5)


TORCH_FREE = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None          # any `import torch` now raises ImportError
    sys.modules["torchvision"] = None
    from stpm_edge.runtime import camera
    rc = camera.main(["--model", sys.argv[1], "--source", sys.argv[2], "--log", sys.argv[3],
                      "--backend", "ort-cpu", "--threads", "1", "--stats-every", "0", "--batch", "4"])
    loaded = sorted(k for k, v in sys.modules.items() if v is not None and k.split(".")[0] in ("torch", "torchvision"))
    print("RC", rc, "TORCH_MODULES", loaded)
    """
)


def test_real_model_runs_without_torch(
    exported_onnx: Path, parts_dir: Path, folder_log: Path, tmp_path: Path
) -> None:
    log = tmp_path / "torch_free.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(exported_onnx), str(parts_dir), str(log)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "RC 0 TORCH_MODULES []" in result.stdout, result.stdout + result.stderr
    torch_free = {Path(r["file"]).name: r for r in frame_records(log)}
    in_process = {Path(r["file"]).name: r for r in frame_records(folder_log)}
    assert (
        sorted(torch_free) == sorted(in_process) == sorted(p.name for p in parts_dir.glob("*.png"))
    )
    for name, record in torch_free.items():
        assert record["verdict"] == in_process[name]["verdict"], name
        assert record["score"] == pytest.approx(in_process[name]["score"], rel=1e-5), name
