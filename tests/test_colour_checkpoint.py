"""The colour map and checkpoints: fitted post hoc by stpm-colour, saved, loaded, switched off,
ablated by stpm-eval; older checkpoints (without it) load and score exactly as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_quiet

from stpm_edge import colour_map as cm
from stpm_edge.checkpoint import load_checkpoint, load_model_from_checkpoint


def run_colour(argv: list[str]) -> tuple[int, str]:
    from stpm_edge.cli.colour import main

    return run_quiet(main, argv)


@pytest.fixture(scope="module")
def colour_ckpt(best_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("colour") / "colour.ckpt"
    rc, err = run_colour([str(best_ckpt), "--mode", "texture", "--out", str(out), "-q"])
    assert rc == 0, err
    return out


def scores(model, rgb: np.ndarray) -> np.ndarray:
    from stpm_edge.runtime.image import normalize

    x = torch.from_numpy(normalize(rgb, model.config.mean, model.config.std))
    return model.score_map(x)[1].numpy()


def test_a_checkpoint_without_it_loads_as_before(best_ckpt: Path) -> None:
    payload = load_checkpoint(best_ckpt)
    assert cm.PAYLOAD_KEY not in payload
    assert load_model_from_checkpoint(best_ckpt).colour is None


def test_stpm_colour_adds_it_and_recalibrates(best_ckpt, colour_ckpt, demo_data, read_rgb) -> None:
    before, after = load_checkpoint(best_ckpt), load_checkpoint(colour_ckpt)
    entry = after[cm.PAYLOAD_KEY]
    assert entry["mode"] == "texture" and entry["mean"].shape == (3, 1, 1)
    assert entry["stpm_scale"] > 0 and entry["colour_scale"] > 0
    # the student is untouched, the thresholds are re-fitted to the fused map on the same images
    assert torch.equal(
        after["student"]["_conv_stem.weight"], before["student"]["_conv_stem.weight"]
    )
    assert after["val_paths"] == before["val_paths"]
    assert after["calibration"]["source"] == "val_good"
    assert after["calibration"]["image_threshold"] != before["calibration"]["image_threshold"]
    model = load_model_from_checkpoint(colour_ckpt)
    assert model.colour is not None and model.colour.mode == "texture"
    # validation scores in good-image units: the threshold sits near 1-2 for a sum of two maps
    assert 0.5 < after["calibration"]["image_threshold"] < 10


def test_switching_it_off_gives_the_original_scores(
    best_ckpt, colour_ckpt, tmp_path, read_rgb, demo_data
):
    off = tmp_path / "off.ckpt"
    rc, err = run_colour([str(colour_ckpt), "--mode", "off", "--out", str(off), "-q"])
    assert rc == 0, err
    assert cm.PAYLOAD_KEY not in load_checkpoint(off)
    rgb = read_rgb(demo_data.test_images()[:6])
    original = scores(load_model_from_checkpoint(best_ckpt), rgb)
    assert np.array_equal(scores(load_model_from_checkpoint(off), rgb), original)
    assert not np.array_equal(scores(load_model_from_checkpoint(colour_ckpt), rgb), original)


def test_existing_output_is_refused(colour_ckpt) -> None:
    rc, err = run_colour([str(colour_ckpt), "--mode", "texture", "--out", str(colour_ckpt)])
    assert rc == 2 and "exists" in err and "Note:" in err


def test_stpm_eval_ablates_it(best_ckpt, colour_ckpt, demo_data, tmp_path) -> None:
    """--no-colour-map on the colour checkpoint evaluates exactly the original model."""
    from stpm_edge.evaluate import EvalOptions, evaluate_checkpoint

    data, cat = str(demo_data.root), demo_data.category
    plain = evaluate_checkpoint(best_ckpt, data, cat, tmp_path / "plain")
    ablated = evaluate_checkpoint(
        colour_ckpt, data, cat, tmp_path / "ablated", EvalOptions(colour_map=False)
    )
    fused = evaluate_checkpoint(colour_ckpt, data, cat, tmp_path / "fused")
    for key in ("image_auroc", "pixel_auroc"):
        assert ablated[key] == plain[key]
    assert fused["colour_map"]["mode"] == "texture" and ablated["colour_map"] == {"mode": "off"}
    assert json.loads((tmp_path / "fused" / "metrics.json").read_text())["colour_map"]["mode"] == (
        "texture"
    )


def test_stpm_train_fits_it_when_asked(demo_data, tmp_path) -> None:
    from stpm_edge.train import TrainConfig, train

    cfg = TrainConfig(
        data=str(demo_data.root),
        category=demo_data.category,
        out=str(tmp_path / "run"),
        image_size=64,
        epochs=1,
        batch_size=4,
        device="cpu",
        progress=False,
        colour_map="aligned",
    )
    best = train(cfg)
    payload = load_checkpoint(best)
    assert payload[cm.PAYLOAD_KEY]["mode"] == "aligned"
    assert payload["train_config"]["colour_map"] == "aligned"
    model = load_model_from_checkpoint(best)
    assert model.colour is not None and model.colour.mean.shape == (1, 3, cm.GRID, cm.GRID)


def test_stpm_train_refuses_a_size_the_colour_map_cannot_grid() -> None:
    from stpm_edge.errors import ConfigError
    from stpm_edge.train import TrainConfig

    with pytest.raises(ConfigError, match="divisible by 64"):
        TrainConfig(data="x", image_size=96, colour_map="texture")
    with pytest.raises(ConfigError, match="--colour-map"):
        TrainConfig(data="x", colour_map="rgb")


def test_other_map_settings_re_measure_the_stpm_scale(colour_ckpt, demo_data, tmp_path) -> None:
    """stpm-eval --blur-sigma changes the STPM map's magnitude: its fusion scale follows, the
    colour statistics stay (and unchanged settings give back the stored scale)."""
    from stpm_edge.evaluate import EvalOptions, evaluate_checkpoint

    payload = load_checkpoint(colour_ckpt)
    stored = payload[cm.PAYLOAD_KEY]["stpm_scale"]
    model = load_model_from_checkpoint(colour_ckpt)
    assert cm.rescaled(payload, model).stats.stpm_scale == pytest.approx(stored, rel=1e-5)
    data, cat = str(demo_data.root), demo_data.category
    sharp = evaluate_checkpoint(colour_ckpt, data, cat, tmp_path, EvalOptions(blur_sigma=0.0))
    assert sharp["colour_map"]["stpm_scale"] != pytest.approx(stored, rel=0.01)
    assert sharp["colour_map"]["colour_scale"] == payload[cm.PAYLOAD_KEY]["colour_scale"]


def test_default_colour_map_is_local_where_the_size_grids() -> None:
    """--colour-map auto (the default): local at 256 or 64 px, its gate also set on JPEG q90
    copies; at 96 px, which the grid cannot divide, off rather than an error the user did not ask
    for. A --colour-gate-jpeg that is no JPEG quality is refused before training, by name."""
    from stpm_edge.errors import ConfigError
    from stpm_edge.train import TrainConfig

    assert TrainConfig().colour_map == "auto" and TrainConfig().colour_gate_jpeg == 90
    assert TrainConfig(data="x", image_size=256).colour_mode() == "local"
    assert TrainConfig(data="x", image_size=64).colour_mode() == "local"
    with pytest.raises(ConfigError, match="--colour-gate-jpeg 101 is not a JPEG quality"):
        TrainConfig(data="x", colour_gate_jpeg=101)
    assert TrainConfig(data="x", image_size=96).colour_mode() is None
    assert TrainConfig(data="x", colour_map="off").colour_mode() is None
    assert TrainConfig(data="x", colour_map="texture").colour_mode() == "texture"


def test_stpm_tune_re_measures_the_fusion_scale(colour_ckpt, demo_data, tmp_path) -> None:
    """Fine-tuning moves the student, so the colour fusion's STPM scale is measured again on the
    validation images (a stale one would re-weight the two maps)."""
    from stpm_edge.cli.tune import main

    extra = tmp_path / "marked"
    extra.mkdir()
    for path in sorted(demo_data.train_good.glob("*.png"))[:2]:
        (extra / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "tuned.ckpt"
    argv = [str(colour_ckpt), "--extra-good", str(extra), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "-q"]) == 0
    before, after = load_checkpoint(colour_ckpt), load_checkpoint(out)
    tuned = load_model_from_checkpoint(out)
    images = cm.validation_images(after, tuned.config.image_size)  # + the fit's JPEG copies
    measured = cm.stpm_scale(tuned, cm.scale_images(images, after[cm.PAYLOAD_KEY]["gate_jpeg"]))
    assert after[cm.PAYLOAD_KEY]["stpm_scale"] == pytest.approx(measured, rel=1e-5)
    assert after[cm.PAYLOAD_KEY]["stpm_scale"] != pytest.approx(
        before[cm.PAYLOAD_KEY]["stpm_scale"], rel=1e-3
    )
    assert after[cm.PAYLOAD_KEY]["colour_scale"] == before[cm.PAYLOAD_KEY]["colour_scale"]
