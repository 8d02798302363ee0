"""Tests for stpm_edge.quality: the recipe runner's layout and resume, the seed statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stpm_edge.cli.quality import main
from stpm_edge.errors import ConfigError, DataError
from stpm_edge.quality import (
    baseline_variant,
    collect,
    collect_joined,
    colour_variant,
    common_runs,
    run_recipe,
    summarize,
    summarize_recipe,
)


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


class FakeCommands(dict):
    """stpm-data / stpm-train / stpm-eval doubles that write what the real ones write and log
    their arguments. Metrics depend on the seed, so summaries have a spread."""

    def __init__(self) -> None:
        super().__init__(
            data=self.data,
            train=self.train,
            eval=self.eval,
            colour=self.colour,
            baseline=self.baseline,
        )
        self.calls: list[tuple[str, list[str]]] = []

    def data(self, argv: list[str]) -> int:
        self.calls.append(("data", argv))
        Path(_value(argv, "--out")).mkdir(parents=True)
        (Path(_value(argv, "--out")) / "README.txt").write_text("bench")
        return 0

    def train(self, argv: list[str]) -> int:
        self.calls.append(("train", argv))
        Path(_value(argv, "--out")).mkdir(parents=True)
        (Path(_value(argv, "--out")) / "best.ckpt").write_text(_value(argv, "--seed"))
        return 0

    def colour(self, argv: list[str]) -> int:
        """The colour checkpoint adds 100 to the seed the fake eval reads (+1.0 image AUROC)."""
        self.calls.append(("colour", argv))
        Path(_value(argv, "--out")).write_text(str(int(Path(argv[0]).read_text()) + 100))
        return 0

    def baseline(self, argv: list[str]) -> int:
        """The baseline checkpoint adds 200 to the seed (--off: subtracts 1)."""
        self.calls.append(("baseline", argv))
        shift = -1 if "--off" in argv else 200
        Path(_value(argv, "--out")).write_text(str(int(Path(argv[0]).read_text()) + shift))
        return 0

    def eval(self, argv: list[str]) -> int:
        self.calls.append(("eval", argv))
        seed = int(Path(argv[0]).read_text())
        out = Path(_value(argv, "--out"))
        out.mkdir(parents=True)
        metrics = {"image_auroc": 0.8 + 0.01 * seed, "pixel_auroc": 0.9, "aupro": None}
        metrics["per_defect_type"] = {"stain_intensity": {"image_auroc": 0.5}}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return 0


def test_run_recipe_layout_seeds_and_resume(tmp_path):
    fake = FakeCommands()
    out = run_recipe(tmp_path / "r", [0, 2], ["gear", "brick"], ["--epochs", "3"], [], fake)
    trains = [argv for name, argv in fake.calls if name == "train"]
    assert len(trains) == 4 and [c[0] for c in fake.calls].count("data") == 2
    first = trains[0]
    assert _value(first, "--seed") == "0" and first[-2:] == ["--epochs", "3"]
    assert _value(first, "--data") == str(out / "data" / "seed0")
    assert (out / "seed2" / "brick" / "eval" / "metrics.json").exists()
    assert set(json.loads((out / "seed0" / "gear" / "timing.json").read_text())) == {
        "train_s",
        "eval_s",
    }
    fake.calls.clear()
    run_recipe(out, [0, 2, 3], ["gear", "brick"], ["--epochs", "3"], [], fake)  # resume
    assert [name for name, _ in fake.calls] == ["data", "train", "eval", "train", "eval"]
    assert json.loads((out / "recipe.json").read_text())["seeds"] == [0, 2, 3]
    with pytest.raises(ConfigError, match="another recipe"):
        run_recipe(out, [0], ["gear"], ["--epochs", "5"], [], fake)
    with pytest.raises(ConfigError, match="nothing to run"):
        run_recipe(tmp_path / "x", [0], ["wood"], [], [], fake)


def test_summary_mean_std_over_seeds_and_weakest_types(tmp_path):
    root = tmp_path / "r"
    auroc = {("gear", 0): 0.9, ("gear", 1): 0.8, ("brick", 0): 0.7, ("brick", 1): 0.6}
    for (category, seed), value in auroc.items():
        folder = root / f"seed{seed}" / category / "eval"
        folder.mkdir(parents=True)
        per_type = {"crack": {"image_auroc": value - 0.2}, "stain": {"image_auroc": value + 0.05}}
        metrics = {
            "image_auroc": value,
            "pixel_auroc": 0.95,
            "aupro": 0.0,
            "per_defect_type": per_type,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder.parent / "timing.json").write_text(json.dumps({"train_s": 120.0, "eval_s": 5}))
    summary = summarize_recipe(collect(root))
    gear = summary["categories"]["gear"]
    assert gear["image_auroc"] == pytest.approx((0.85, np.std([0.9, 0.8], ddof=1)))
    assert gear["aupro"] == (0.0, 0.0)  # a zero is a value, not a missing one
    assert [t for t, _ in gear["weakest"]] == ["crack", "stain"]
    assert gear["weakest"][0][1] == pytest.approx(0.65) and gear["train_min"] == pytest.approx(2.0)
    # the mean row: the category mean per seed (0.8, 0.7), then its spread over the seeds
    assert summary["mean"]["image_auroc"] == pytest.approx((0.75, np.std([0.8, 0.7], ddof=1)))
    text = summarize([root, root], tmp_path / "q.md")
    assert (
        "| gear | 0.850 ± 0.071 | 0.950 ± 0.000 | 0.000 ± 0.000 | crack 0.65, stain 0.90 | 2.0 |"
        in text
    )
    assert "| **mean** | **0.750 ± 0.071** |" in text
    assert "image_auroc +0.000 (per seed +0.000, +0.000)" in text
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved[str(root)]["mean"]["image_auroc"][0] == pytest.approx(0.75)


def test_cli_summary_and_errors(tmp_path, capsys):
    fake_root = tmp_path / "r"
    run_recipe(fake_root, [1], ["washer"], [], [], FakeCommands())
    assert main(["summary", str(fake_root)]) == 0
    printed = capsys.readouterr().out
    assert "| washer | 0.810 | 0.900 | n/a | stain_intensity 0.50 |" in printed
    assert not math.isnan(summarize_recipe(collect(fake_root))["mean"]["image_auroc"][0])
    assert main(["summary", str(tmp_path / "missing")]) == 2
    assert "no results under" in capsys.readouterr().err


def test_colour_variant_evaluates_each_trained_checkpoint(tmp_path):
    fake = FakeCommands()
    source = run_recipe(tmp_path / "base", [0, 1], ["gear"], [], [], fake)
    fake.calls.clear()
    out = colour_variant(source, tmp_path / "colour", "texture", fake)
    assert [name for name, _ in fake.calls] == ["colour", "eval"] * 2
    colour_argv = fake.calls[0][1]
    assert colour_argv[0] == str(source / "seed0" / "gear" / "train" / "best.ckpt")
    assert _value(colour_argv, "--mode") == "texture"
    assert _value(colour_argv, "--colour-gate-jpeg") == "90"  # the default, passed on and recorded
    eval_argv = fake.calls[1][1]
    assert _value(eval_argv, "--data") == str(source / "data" / "seed0")
    assert eval_argv[0] == str(out / "seed0" / "gear" / "train" / "best.ckpt")
    timing = json.loads((out / "seed1" / "gear" / "timing.json").read_text())
    assert set(timing) == {"train_s", "colour_s", "eval_s"}
    image = summarize_recipe(collect(out))["categories"]["gear"]["image_auroc"][0]
    assert image == pytest.approx(1.0 + 0.8 + 0.005)  # the colour checkpoints were evaluated
    assert "then stpm-colour --mode texture --colour-gate-jpeg 90 (no retraining)" in summarize(
        [source, out]
    )
    fake.calls.clear()
    colour_variant(source, out, "texture", fake)  # finished: nothing is redone
    assert fake.calls == []
    with pytest.raises(ConfigError, match="another recipe"):
        colour_variant(source, out, "aligned", fake)


def test_baseline_variant_fits_or_removes_it_on_each_checkpoint(tmp_path):
    fake = FakeCommands()
    source = run_recipe(tmp_path / "base", [1], ["gear"], [], [], fake)
    fake.calls.clear()
    on = baseline_variant(source, tmp_path / "on", True, fake)
    off = baseline_variant(source, tmp_path / "off", False, fake)
    assert [name for name, _ in fake.calls] == ["baseline", "eval"] * 2
    assert "--off" not in fake.calls[0][1] and "--off" in fake.calls[2][1]
    timing = json.loads((on / "seed1" / "gear" / "timing.json").read_text())
    assert set(timing) == {"train_s", "baseline_s", "eval_s"}
    image = lambda folder: summarize_recipe(collect(folder))["categories"]["gear"]["image_auroc"]  # noqa: E731
    assert image(on)[0] == pytest.approx(0.8 + 2.01) and image(off)[0] == pytest.approx(0.8)
    text = summarize([source, on, off])
    assert "then stpm-baseline\n" in text and "then stpm-baseline --off" in text
    with pytest.raises(ConfigError, match="another recipe"):
        baseline_variant(source, on, False, fake)


def test_summary_compares_only_the_runs_every_recipe_has(tmp_path):
    fake = FakeCommands()
    done = run_recipe(tmp_path / "done", [0, 1], ["gear", "brick"], [], [], fake)
    running = run_recipe(tmp_path / "running", [0], ["gear"], ["--epochs", "2"], [], fake)
    kept, left_out = common_runs([collect(done), collect(running)])
    assert left_out == ["brick seed 0", "brick seed 1", "gear seed 1"]
    assert [{c: sorted(by_seed) for c, by_seed in r.items()} for r in kept] == [{"gear": [0]}] * 2
    text = summarize([done, running])
    assert "left out: ['brick seed 0', 'brick seed 1', 'gear seed 1']" in text
    assert "image_auroc +0.000" in text  # gear seed 0 against itself, not against the mean of 4


def test_joined_folders_are_one_recipe_with_the_seeds_of_both(tmp_path):
    """A seed run later into its own folder joins the first ones (``A,B``); one run in two
    folders, or two recipes joined, is refused."""
    fake = FakeCommands()
    first = run_recipe(tmp_path / "first", [0, 1], ["gear"], [], [], fake)
    later = run_recipe(tmp_path / "later", [2], ["gear"], [], [], fake)
    three = summarize_recipe(collect_joined(f"{first},{later}"))
    assert three["seeds"] == [0, 1, 2]
    assert three["categories"]["gear"]["seeds"] == [0, 1, 2]
    assert "## first + later" in summarize([f"{first},{later}"])
    with pytest.raises(DataError, match="seeds \\[0, 1\\] are in more than one folder"):
        collect_joined(f"{first},{first}")
    other = run_recipe(tmp_path / "other", [3], ["gear"], ["--epochs", "2"], [], fake)
    with pytest.raises(DataError, match="different recipes \\(train_args"):
        collect_joined(f"{first},{other}")
    # a post-hoc variant joins a folder that does not record the setting, not one that differs
    off = baseline_variant(later, tmp_path / "later_off", False, fake)
    assert sorted(collect_joined(f"{first},{off}")["gear"]) == [0, 1, 2]
    on = baseline_variant(first, tmp_path / "first_on", True, fake)
    with pytest.raises(DataError, match="score_baseline: false vs true"):
        collect_joined(f"{on},{off}")


def test_seed_gains_pair_the_recipes_by_seed():
    """Seeds that draw harder benchmarks move both recipes; the paired gain sees through it."""
    from stpm_edge.quality import seed_gains

    def recipe(values):
        return summarize_recipe(
            {"gear": {s: {"image_auroc": v, "pixel_auroc": v, "aupro": v} for s, v in values}}
        )

    base = recipe([(0, 0.6), (1, 0.8), (2, 0.7)])
    new = recipe([(0, 0.65), (1, 0.85), (2, 0.76)])
    gains = seed_gains(base, new, "image_auroc")
    assert gains == pytest.approx({0: 0.05, 1: 0.05, 2: 0.06})
    assert new["mean"]["image_auroc"][1] == pytest.approx(0.1, abs=1e-3)  # spread of the means


def test_worst_category_change_is_reported_for_every_metric() -> None:
    """A recipe can gain image AUROC everywhere and still lose AU-PRO on one category: the
    summary names the worst category per metric."""
    from stpm_edge.quality import _worst_changes

    def recipe(values: dict[str, tuple[float, float, float]]) -> dict:
        return {
            "categories": {
                c: {"image_auroc": [i, 0.0], "pixel_auroc": [p, 0.0], "aupro": [a, 0.0]}
                for c, (i, p, a) in values.items()
            }
        }

    base = recipe({"brick": (0.90, 0.90, 0.90), "gravel": (0.70, 0.80, 0.70)})
    new = recipe({"brick": (0.95, 0.91, 0.92), "gravel": (0.76, 0.79, 0.67)})
    worst = _worst_changes(base, new)
    assert worst["image_auroc"][0] == "brick" and worst["image_auroc"][1] == pytest.approx(0.05)
    assert worst["pixel_auroc"][0] == "gravel" and worst["pixel_auroc"][1] == pytest.approx(-0.01)
    assert worst["aupro"][0] == "gravel" and worst["aupro"][1] == pytest.approx(-0.03)
