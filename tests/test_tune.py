"""stpm-tune: marked false rejects become OK, the input checkpoint is never written."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import cv2
import numpy as np
import pytest

from stpm_edge.cli.tune import main


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def brightened_goods(demo_data, folder: Path, count: int = 4) -> Path:
    """Good training images made brighter: an appearance the 2-epoch model flags as NG."""
    folder.mkdir(parents=True)
    for path in sorted(demo_data.train_good.glob("*.png"))[:count]:
        image = cv2.imread(str(path)).astype(np.int32) + 100
        cv2.imwrite(str(folder / f"marked_{path.name}"), np.clip(image, 0, 255).astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def tuned(demo_data, trained_run, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("tune")
    marked = brightened_goods(demo_data, base / "review" / "good")
    before = sha256(trained_run.best)
    out = base / "tuned.ckpt"
    # 5 epochs, not the default 3: the 2-epoch 64 px fixture model trains chaotically (a rounding-level
    # change of the loss maths moved one marked image to 0.006 above the threshold after 3 epochs)
    argv = [str(trained_run.best), "--extra-good", str(marked), "--out", str(out), "--epochs", "5"]
    rc = main([*argv, "-q"])
    assert rc == 0
    return out, before, json.loads((base / "tuned.ckpt.tune.json").read_text())


def test_marked_false_rejects_become_ok(tuned) -> None:
    _, _, report = tuned
    marked = report["marked"]
    assert len(marked) == 4
    assert all(m["verdict_before"] == "NG" for m in marked), marked
    assert all(m["verdict_after"] == "OK" for m in marked), marked
    # the student learnt the new appearance: lower raw scores, not only a moved threshold
    assert all(m["score_after"] < m["score_before"] for m in marked)
    assert report["calibration_after"]["source"] == "val_good"
    assert report["test_before"]["image_auroc"] is not None  # the checkpoint's own test set
    assert report["test_after"]["image_auroc"] is not None
    # fine-tuning reuses freed memory as the training did (glibc; elsewhere the system's)
    glibc = platform.libc_ver()[0] == "glibc"
    assert report["schedule"]["host_memory"] == ("retain" if glibc else "system")


def test_new_checkpoint_written_and_input_unchanged(tuned, trained_run) -> None:
    from stpm_edge.checkpoint import load_checkpoint

    out, before, report = tuned
    assert sha256(trained_run.best) == before
    payload = load_checkpoint(out)
    assert payload["tuned_from"]["checkpoint"] == str(trained_run.best.resolve())
    assert payload["calibration"] == report["calibration_after"]
    assert payload["val_paths"] == load_checkpoint(trained_run.best)["val_paths"]


def test_existing_output_and_the_input_itself_are_refused(tuned, trained_run, capsys) -> None:
    out, before, report = tuned
    marked = report["config"]["extra_good"][0]
    stamp = sha256(out)
    assert main([str(trained_run.best), "--extra-good", marked, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert sha256(out) == stamp
    args = [str(trained_run.best), "--extra-good", marked, "--out", str(trained_run.best)]
    assert main([*args, "--force"]) == 2
    assert "new checkpoint" in capsys.readouterr().err
    assert sha256(trained_run.best) == before


def test_manual_threshold_is_kept(demo_data, trained_run, tmp_path: Path) -> None:
    from stpm_edge.calibration import calibrate_manual
    from stpm_edge.checkpoint import load_checkpoint, model_from_payload, save_checkpoint

    payload = load_checkpoint(trained_run.best)
    manual = calibrate_manual(0.05, base=payload["calibration"])
    extra = {k: v for k, v in payload.items() if k in ("train_config", "val_paths")}
    src = tmp_path / "manual.ckpt"
    save_checkpoint(src, model_from_payload(payload), manual, **extra)
    marked = brightened_goods(demo_data, tmp_path / "good", count=2)
    out = tmp_path / "tuned.ckpt"
    args = [str(src), "--extra-good", str(marked), "--out", str(out), "--epochs", "1", "-q"]
    assert main(args) == 0
    report = json.loads((tmp_path / "tuned.ckpt.tune.json").read_text())
    assert report["threshold_kept"] is True
    assert load_checkpoint(out)["calibration"] == load_checkpoint(src)["calibration"]


def test_empty_review_folder_is_a_user_error(trained_run, tmp_path: Path, capsys) -> None:
    (tmp_path / "good").mkdir()
    args = [str(trained_run.best), "--extra-good", str(tmp_path / "good"), "--out", "x.ckpt"]
    assert main(args) == 2
    assert "no images" in capsys.readouterr().err


def test_a_score_baseline_is_refitted_on_every_good_image_the_student_knows(
    demo_data, trained_run, tmp_path: Path
) -> None:
    import torch

    from stpm_edge.checkpoint import load_checkpoint, load_model_from_checkpoint
    from stpm_edge.colour_map import good_images
    from stpm_edge.score_baseline import fit_score_baseline, write_with_score_baseline
    from stpm_edge.tune import original_train

    src = tmp_path / "baseline.ckpt"
    write_with_score_baseline(trained_run.best, src)
    marked = brightened_goods(demo_data, tmp_path / "good", count=2)
    out = tmp_path / "tuned.ckpt"
    args = [str(src), "--extra-good", str(marked), "--out", str(out), "--epochs", "1", "-q"]
    assert main(args) == 0
    known = [s.path for s in original_train(load_checkpoint(src))] + sorted(marked.iterdir())
    tuned = load_model_from_checkpoint(out)
    assert tuned.baseline is not None and tuned.baseline.images == len(known)
    fitted_on_the_tuned_map = tuned.baseline.values.clone()
    tuned.baseline = None
    refit = fit_score_baseline(tuned, good_images(known, tuned.config.image_size))
    torch.testing.assert_close(fitted_on_the_tuned_map, refit.values)
