"""stpm-eval on the real trained checkpoint: metrics, per-image CSV and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from stpm_edge.calibration import normalized_scores
from stpm_edge.checkpoint import load_checkpoint
from stpm_edge.cli.evaluate import main as eval_main

METRIC_KEYS = {"image_auroc", "pixel_auroc", "aupro", "image_f1_max"}


def eval_argv(ckpt: Path, data_root: Path, out: Path, *extra: str) -> list[str]:
    """stpm-eval's arguments for the tiny demo category, plus ``extra`` flags."""
    return [str(ckpt), "--data", str(data_root), "--category", "brick", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def eval_dir(best_ckpt: Path, demo_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "eval"
    assert eval_main(eval_argv(best_ckpt, demo_data.root, out, "-q")) == 0
    return out


def read_rows(eval_dir: Path) -> list[dict[str, str]]:
    with open(eval_dir / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_json(eval_dir: Path) -> None:
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics.keys() >= METRIC_KEYS
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["calibration_source"] == "val_good"
    assert 0.0 <= metrics["accuracy_at_threshold"] <= 1.0


def test_per_defect_type_table(eval_dir: Path) -> None:
    """Each defect type of the test split is scored against the good images alone, in
    metrics.json and as a table (the demo brick split: 4 good + 2 of each of 4 types)."""
    from stpm_edge.data.demo import DEFECT_TYPES

    per_type = json.loads((eval_dir / "metrics.json").read_text())["per_defect_type"]
    assert sorted(per_type) == sorted(DEFECT_TYPES)
    for row in per_type.values():
        assert (row["num_good"], row["num_defective"]) == (4, 2)
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= row[key] <= 1.0, row
    table = (eval_dir / "per_defect_type.md").read_text().splitlines()
    assert table[0].startswith("| defect type |") and table[2].startswith("| all | 4 + 8 |")
    assert [line.split(" | ")[0][2:] for line in table[3:]] == sorted(DEFECT_TYPES)


def test_plots_are_drawn(eval_dir: Path) -> None:
    # what is drawn where is tests/test_plots.py's job; here: the report's figures decode, have
    # the plot functions' sizes and are not blank
    import cv2

    for name in ("roc.png", "pro.png"):
        bgr = cv2.imread(str(eval_dir / name))
        assert bgr is not None and bgr.shape == (450, 450, 3), name
        assert (bgr.min(axis=2) < 128).mean() > 0.01, name  # axes, curve, labels on white
    grid = cv2.imread(str(eval_dir / "overlays.png"))
    assert grid is not None and grid.shape[1] == 750 and grid.shape[0] % 250 == 0
    assert grid.std() > 20  # images and heat maps, not an empty canvas


def test_predictions_csv(
    eval_dir: Path, demo_data, best_ckpt: Path, trained_model, read_rgb, torch_reference
) -> None:
    rows = read_rows(eval_dir)
    assert list(rows[0].keys())[:4] == ["path", "label", "defect_type", "score"]
    assert {"score_normalized", "verdict"} <= rows[0].keys()
    paths = [Path(r["path"]) for r in rows]
    assert sorted(paths) == demo_data.test_images()
    for r in rows:
        assert int(r["label"]) == (0 if r["defect_type"] == "good" else 1)
        assert r["verdict"] == ("NG" if float(r["score_normalized"]) >= 0.5 else "OK")
    # the scores are the PyTorch model's, the verdicts follow the checkpoint's calibration
    _, expected = torch_reference(trained_model, read_rgb(paths))
    scores = np.array([float(r["score"]) for r in rows])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    calibration = load_checkpoint(best_ckpt)["calibration"]
    expected_verdicts = np.where(normalized_scores(expected, calibration) >= 0.5, "NG", "OK")
    assert [r["verdict"] for r in rows] == expected_verdicts.tolist()


def test_non_empty_out_without_force(best_ckpt: Path, demo_data, eval_dir: Path, capsys) -> None:
    before = {p: p.stat().st_mtime_ns for p in eval_dir.iterdir()}
    rc = eval_main(eval_argv(best_ckpt, demo_data.root, eval_dir))
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--force" in err and "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in eval_dir.iterdir()} == before


def test_bad_checkpoint_is_exit_2(tmp_path: Path, demo_data, capsys) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage" * 100)
    rc = eval_main(eval_argv(bad, demo_data.root, tmp_path / "e"))
    assert rc == 2
    assert "bad.ckpt" in capsys.readouterr().err


def test_map_setting_overrides_recalibrate(
    best_ckpt: Path, demo_data, eval_dir: Path, tmp_path: Path
) -> None:
    """--score-reduction/--blur-sigma change the scores, and the thresholds follow them."""
    out = tmp_path / "eval_max"
    argv = eval_argv(
        best_ckpt, demo_data.root, out, "-q", "--score-reduction", "max", "--blur-sigma", "0"
    )
    assert eval_main(argv) == 0
    default = json.loads((eval_dir / "metrics.json").read_text())
    overridden = json.loads((out / "metrics.json").read_text())
    assert overridden["map_settings"] == {
        "blur_sigma": 0.0,
        "score_reduction": "max",
        "topk_fraction": 0.01,
        "map_resolution": "feature",
    }
    assert overridden["image_threshold"] != default["image_threshold"]
    assert overridden["image_auroc"] is not None


def test_save_calibrated_writes_a_new_labelled_checkpoint(
    best_ckpt: Path, demo_data, tmp_path: Path
) -> None:
    before = best_ckpt.read_bytes()
    target = tmp_path / "labelled.ckpt"
    argv = eval_argv(
        best_ckpt, demo_data.root, tmp_path / "eval", "-q", "--save-calibrated", str(target)
    )
    assert eval_main(argv) == 0
    calibration = load_checkpoint(target)["calibration"]
    assert calibration["source"] == "labelled"
    assert best_ckpt.read_bytes() == before  # the input checkpoint is never touched
    assert (
        eval_main([*argv[:-2], "--force", "--save-calibrated", str(target)]) == 2
    )  # never overwrites
