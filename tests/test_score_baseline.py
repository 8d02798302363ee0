"""The score baseline (stpm_edge.score_baseline): the image score is taken above the largest map
value the training images reach at each position, the output map is left alone; fitted post hoc
by stpm-train and stpm-baseline, refitted by stpm-colour, ablated by stpm-eval, carried by the
checkpoint (older checkpoints load and score as before)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_quiet

from stpm_edge import anomaly_map as am
from stpm_edge import score_baseline as sb
from stpm_edge.checkpoint import load_checkpoint, load_model_from_checkpoint
from stpm_edge.errors import CheckpointError

GRID = 16


def score_of(crafted: torch.Tensor, baseline: torch.Tensor | None) -> torch.Tensor:
    """am.score_map's score of a crafted grid map (injected through ``fuse``)."""
    feats = [torch.ones(len(crafted), 4, GRID, GRID)] * 3
    settings = am.MapSettings(reduction="topk", topk_fraction=0.01, resolution="feature")
    return am.score_map(feats, feats, (64, 64), settings, lambda g: crafted, baseline)[1]


def test_a_fixed_pattern_no_longer_outscores_a_defect() -> None:
    rng = np.random.default_rng(0)
    good = torch.from_numpy(rng.uniform(0, 0.1, (9, 1, GRID, GRID)).astype(np.float32))
    good[:, :, 0, :] += 5.0  # every good frame lights up along the top border
    test_good, defect = good[:1].clone(), good[1:2].clone()
    defect[:, :, 8:10, 8:10] += 3.0  # a defect, weaker than the border
    train = good[2:]
    baseline = train.amax(dim=0, keepdim=True)
    plain = score_of(torch.cat([test_good, defect]), None)
    above = score_of(torch.cat([test_good, defect]), baseline)
    assert plain[0] > plain[1]  # plain STPM scoring: the good frame looks worse
    assert above[1] > above[0] + 2.0  # above the baseline: the defect stands out


def test_the_map_is_never_baseline_subtracted() -> None:
    crafted = torch.rand(2, 1, GRID, GRID)
    feats = [torch.ones(2, 4, GRID, GRID)] * 3
    settings = am.MapSettings(resolution="feature")
    with_b = am.score_map(feats, feats, (64, 64), settings, lambda g: crafted, crafted[:1] + 1)
    without = am.score_map(feats, feats, (64, 64), settings, lambda g: crafted, None)
    assert torch.equal(with_b[0], without[0])
    assert not torch.equal(with_b[1], without[1])


def test_a_baseline_of_another_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="refit"):
        score_of(torch.rand(1, 1, GRID, GRID), torch.zeros(1, 1, GRID // 2, GRID // 2))


@pytest.fixture(scope="module")
def random_model():
    from stpm_edge.model import STPM, ModelConfig

    torch.manual_seed(0)
    return STPM(ModelConfig(image_size=64, teacher_weights="random")).eval()


def test_fit_builds_no_autograd_graph(random_model, monkeypatch) -> None:
    """The fit runs the student over every training image: without no_grad it would keep each
    batch's autograd graph (the student's weights require grad)."""
    grad_enabled = []
    real = random_model.scored_grid_map

    def spy(x):
        grad_enabled.append(torch.is_grad_enabled())
        return real(x)

    monkeypatch.setattr(random_model, "scored_grid_map", spy)
    rgb = np.random.default_rng(2).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    sb.fit_score_baseline(random_model, rgb, batch_size=2)
    assert grad_enabled == [False, False]


def test_fit_is_the_per_position_max_of_the_scored_map(random_model) -> None:
    from stpm_edge.runtime.image import normalize

    rgb = np.random.default_rng(1).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    fitted = sb.fit_score_baseline(random_model, rgb, batch_size=2)  # batches must not matter
    x = torch.from_numpy(normalize(rgb, random_model.config.mean, random_model.config.std))
    maps = random_model.scored_grid_map(x)
    assert fitted.grid == sb.scoring_grid(random_model.config) == tuple(maps.shape[-2:])
    peak = maps.amax(dim=0, keepdim=True)
    # (batches of 2 against one of 5: the convolutions may round differently)
    torch.testing.assert_close(fitted.values, peak - peak.max(), rtol=1e-5, atol=1e-6)
    assert float(fitted.values.max()) == 0.0
    assert fitted.images == 5
    # and the model's score is the top-k mean of the map minus it
    random_model.baseline = fitted
    try:
        score = random_model.score_map(x)[1]
    finally:
        random_model.baseline = None
    flat = (maps - fitted.values).flatten(1)
    k = max(1, round(flat.shape[1] * random_model.config.topk_fraction))
    expected = flat.topk(k, dim=1).values.mean(1)
    torch.testing.assert_close(score, expected)
    # no training image rises above the pattern's peak, and the map lifted by the baseline is
    # never negative: scores stay positive for the log-normal calibration
    assert (score > 0).all() and (score <= peak.max() + 1e-5).all()


@pytest.fixture(scope="module")
def baseline_ckpt(best_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stpm_edge.cli.baseline import main

    out = tmp_path_factory.mktemp("baseline") / "baseline.ckpt"
    rc, err = run_quiet(main, [str(best_ckpt), "--out", str(out), "-q"])
    assert rc == 0, err
    return out


def test_a_checkpoint_without_it_loads_as_before(best_ckpt: Path) -> None:
    assert sb.PAYLOAD_KEY not in load_checkpoint(best_ckpt)
    assert load_model_from_checkpoint(best_ckpt).baseline is None


def test_stpm_baseline_adds_it_and_recalibrates(best_ckpt, baseline_ckpt) -> None:
    before, after = load_checkpoint(best_ckpt), load_checkpoint(baseline_ckpt)
    entry = after[sb.PAYLOAD_KEY]
    model = load_model_from_checkpoint(baseline_ckpt)
    assert tuple(entry["values"].shape) == sb.scoring_grid(model.config)
    from stpm_edge.tune import original_train

    assert entry["images"] == len(original_train(before))  # the run's training split, not val
    assert torch.equal(
        after["student"]["_conv_stem.weight"], before["student"]["_conv_stem.weight"]
    )
    assert after["calibration"]["image_threshold"] != before["calibration"]["image_threshold"]
    assert model.baseline is not None and torch.equal(model.baseline.values[0, 0], entry["values"])
    # the thresholds fit the new scores (a score near 0 once made the log-normal fit explode)
    from stpm_edge.colour_map import validation_images
    from stpm_edge.runtime.image import normalize

    val = validation_images(after, model.config.image_size)
    scores = model.score_map(torch.from_numpy(normalize(val, model.config.mean, model.config.std)))[
        1
    ]
    threshold = after["calibration"]["image_threshold"]
    assert float(scores.min()) > 0
    assert float(scores.max()) <= threshold < 2 * float(scores.max())


def test_stpm_baseline_off_removes_it(baseline_ckpt, tmp_path) -> None:
    from stpm_edge.cli.baseline import main

    out = tmp_path / "off.ckpt"
    rc, err = run_quiet(main, [str(baseline_ckpt), "--off", "--out", str(out), "-q"])
    assert rc == 0, err
    assert sb.PAYLOAD_KEY not in load_checkpoint(out)


def test_stpm_baseline_never_overwrites_its_input(baseline_ckpt) -> None:
    from stpm_edge.cli.baseline import main

    stamp = baseline_ckpt.stat().st_mtime_ns
    rc, err = run_quiet(main, [str(baseline_ckpt), "--out", str(baseline_ckpt), "--force"])
    assert rc != 0 and "--out" in err and "Note:" in err
    assert baseline_ckpt.stat().st_mtime_ns == stamp


def test_a_malformed_entry_is_refused_with_a_note(baseline_ckpt, tmp_path) -> None:
    payload = load_checkpoint(baseline_ckpt)
    payload[sb.PAYLOAD_KEY] = {"values": torch.zeros(3, 3), "images": 4}
    bad = tmp_path / "bad.ckpt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="scoring grid") as err:
        load_model_from_checkpoint(bad)
    assert "stpm-baseline" in str(err.value)


def test_stpm_eval_ablation_scores_as_without_it(best_ckpt, baseline_ckpt, demo_data, tmp_path):
    from stpm_edge.cli.evaluate import main

    where = ["--data", str(demo_data.root), "--category", demo_data.category, "-q"]
    results = {}
    for name, ckpt, extra in (
        ("plain", best_ckpt, []),
        ("on", baseline_ckpt, []),
        ("ablated", baseline_ckpt, ["--no-score-baseline"]),
    ):
        out = tmp_path / name
        rc, err = run_quiet(main, [str(ckpt), *where, "--out", str(out), *extra])
        assert rc == 0, err
        results[name] = json.loads((out / "metrics.json").read_text())
    assert results["ablated"]["image_auroc"] == results["plain"]["image_auroc"]
    assert results["ablated"]["score_baseline"] == {"mode": "off"}
    assert results["on"]["score_baseline"]["mode"] == "train_max"
    # the map is the same with and without it
    assert results["on"]["pixel_auroc"] == results["plain"]["pixel_auroc"]


def test_stpm_colour_refits_it_to_the_new_map(baseline_ckpt, tmp_path) -> None:
    from stpm_edge.cli.colour import main

    out = tmp_path / "colour.ckpt"
    rc, err = run_quiet(main, [str(baseline_ckpt), "--mode", "texture", "--out", str(out), "-q"])
    assert rc == 0, err
    model = load_model_from_checkpoint(out)
    payload = load_checkpoint(out)
    refit = sb.fit_for_checkpoint(payload, load_without_baseline(out))
    assert model.colour is not None
    torch.testing.assert_close(model.baseline.values, refit.values)
    old = load_checkpoint(baseline_ckpt)[sb.PAYLOAD_KEY]["values"]
    assert not torch.allclose(model.baseline.values[0, 0], old)  # in the fused map's units now


def load_without_baseline(path: Path):
    model = load_model_from_checkpoint(path)
    model.baseline = None
    return model


def test_refitting_without_the_training_data_says_what_to_do(baseline_ckpt, tmp_path) -> None:
    from stpm_edge.cli.evaluate import main

    payload = load_checkpoint(baseline_ckpt)
    payload["train_config"] = {**payload["train_config"], "data": str(tmp_path / "moved")}
    moved = tmp_path / "moved.ckpt"
    torch.save(payload, moved)
    argv = [str(moved), "--data", "x", "--category", "y", "--out", str(tmp_path / "e")]
    rc, err = run_quiet(main, [*argv, "--blur-sigma", "2"])  # a map override: refit needed
    assert rc == 2
    assert "score baseline is fitted on it" in err and "--no-score-baseline" in err


def test_an_int8_graph_is_given_a_baseline_of_its_own_map(baseline_ckpt, demo_data, tmp_path):
    import onnx
    from onnx import numpy_helper

    from stpm_edge.export import graph_baseline
    from stpm_edge.export.cli import graph_feed, load_rgb
    from stpm_edge.export.cli import main as export_main
    from stpm_edge.export.graph import GraphOptions, read_metadata
    from stpm_edge.tune import original_train

    out = tmp_path / "int8.onnx"
    argv = [str(baseline_ckpt), "-o", str(out), "--int8", "--calib", str(demo_data.train_good)]
    rc, err = run_quiet(export_main, [*argv, "-q"])
    assert rc == 0, err
    graph = onnx.load(out)
    assert '"fitted_on": "this int8 graph"' in read_metadata(graph)["stpm.score_baseline"]
    values = next(
        numpy_helper.to_array(i) for i in graph.graph.initializer if i.name == "baseline.values"
    )[0, 0]
    payload = load_checkpoint(baseline_ckpt)
    model = load_model_from_checkpoint(baseline_ckpt)
    paths = [s.path for s in original_train(payload)]
    frames = graph_feed(load_rgb(paths, model.config.image_size), GraphOptions(), model.config)
    peak = graph_baseline.scored_maps(graph, frames).max(axis=0)
    np.testing.assert_allclose(values, peak - peak.max(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(values, payload[sb.PAYLOAD_KEY]["values"].numpy(), atol=1e-4)


def test_without_the_training_images_a_graph_keeps_pytorchs(baseline_ckpt, demo_data, tmp_path):
    import onnx

    from stpm_edge.export.cli import main as export_main
    from stpm_edge.export.graph import read_metadata

    payload = load_checkpoint(baseline_ckpt)
    payload["train_config"] = {**payload["train_config"], "data": str(tmp_path / "moved")}
    moved = tmp_path / "moved.ckpt"
    torch.save(payload, moved)
    out = tmp_path / "fp16.onnx"
    rc, err = run_quiet(export_main, [str(moved), "-o", str(out), "--fp16"])
    assert rc == 0, err
    assert "keeps PyTorch's score baseline" in err
    assert '"fitted_on": "pytorch fp32"' in read_metadata(onnx.load(out))["stpm.score_baseline"]
