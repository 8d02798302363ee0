"""Recipe comparison on the benchmark: every category, several seeds, mean +- std.

``run_recipe`` builds the benchmark once per seed (``stpm-data bench --seed N``), trains every
category with one recipe (``stpm-train`` flags, plus ``--seed N``), evaluates it (``stpm-eval``)
and records the wall time of each step. ``summarize`` reads one or more such folders and writes
the table the README's quality section quotes: per category image AUROC, pixel AUROC and AUPRO
as mean +- sample std over seeds, the weakest defect types (image AUROC of the good images
against that type, mean over seeds), the training minutes, and a mean row whose spread is the
seed spread of the category mean (the margin a new recipe has to beat).

Layout of one recipe folder (a re-run skips every step whose output exists)::

    OUT/recipe.json                         the stpm-train flags and the seeds
    OUT/data/seed<N>/                       the benchmark built with seed N
    OUT/seed<N>/<category>/train/           stpm-train --seed N --out ...
    OUT/seed<N>/<category>/eval/            stpm-eval (metrics.json, per_defect_type.md, ...)
    OUT/seed<N>/<category>/timing.json      {"train_s": ..., "eval_s": ...}

``colour_variant`` makes a recipe folder from another one by fitting the colour map to each of its
trained checkpoints (``stpm-colour``, no retraining) and evaluating that: the same students with
and without the colour map, compared by ``summarize`` like any two recipes; ``baseline_variant``
does the same with the score baseline (``stpm-baseline``, or ``--off`` to take it away). Their
``train_s`` is the source's training time plus the fit.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from stpm_edge.choices import DEFAULT_COLOUR_GATE_JPEG
from stpm_edge.errors import ConfigError, DataError, StpmEdgeError, note

logger = logging.getLogger(__name__)

METRICS = ("image_auroc", "pixel_auroc", "aupro")
Command = Callable[[list[str]], int]


def _commands() -> dict[str, Command]:
    from stpm_edge.cli.baseline import main as baseline_main
    from stpm_edge.cli.colour import main as colour_main
    from stpm_edge.cli.data import main as data_main
    from stpm_edge.cli.evaluate import main as eval_main
    from stpm_edge.cli.train import main as train_main

    return {
        "data": data_main,
        "train": train_main,
        "eval": eval_main,
        "colour": colour_main,
        "baseline": baseline_main,
    }


def _call(commands: dict[str, Command], name: str, argv: list[str]) -> float:
    """Run one stpm command in-process; returns its wall time, raises if it failed."""
    start = time.perf_counter()
    code = commands[name](argv)
    if code != 0:
        raise StpmEdgeError(note(f"stpm-{name} failed (exit {code})", f"arguments: {argv}"))
    return time.perf_counter() - start


def run_recipe(
    out: str | Path,
    seeds: Sequence[int],
    categories: Sequence[str],
    train_args: Sequence[str] = (),
    bench_args: Sequence[str] = (),
    commands: dict[str, Command] | None = None,
) -> Path:
    """Train and evaluate ``categories`` of the benchmark for each seed with one recipe.

    Args:
        out: the recipe folder (created; finished steps found there are skipped).
        seeds: benchmark and training seeds (the benchmark built with seed N trains with N).
        categories: benchmark categories.
        train_args: extra stpm-train flags (the recipe), e.g. ``["--epochs", "50"]``.
        bench_args: extra stpm-data bench flags (counts, image size).
        commands: the stpm commands' ``main`` functions (tests pass fakes).
    """
    from stpm_edge.data.bench import CATEGORIES

    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown or not seeds:
        raise ConfigError(
            note(
                f"nothing to run: categories {unknown or list(categories)}, seeds {list(seeds)}",
                f"give --seeds and categories from {', '.join(CATEGORIES)}",
            )
        )
    out = Path(out)
    commands = commands or _commands()
    recipe = {"train_args": list(train_args), "bench_args": list(bench_args), "seeds": list(seeds)}
    _check_recipe(out / "recipe.json", recipe)
    for seed in seeds:
        data = out / "data" / f"seed{seed}"
        if not (data / "README.txt").exists():
            cats = ["--categories", ",".join(categories)]
            _call(commands, "data", ["bench", "--out", str(data), *cats, "--seed", str(seed),
                                     "--force", *bench_args])  # fmt: skip
        for category in categories:
            _run_category(
                out / f"seed{seed}" / category, data, category, seed, train_args, commands
            )
    return out


def _check_recipe(path: Path, recipe: dict) -> None:
    """Resuming a folder with other flags would mix two recipes in one summary: refuse."""
    if path.exists():
        stored = json.loads(path.read_text())
        keys = (set(stored) | set(recipe)) - {"seeds"}
        if {k: stored.get(k) for k in keys} != {k: recipe.get(k) for k in keys}:
            raise ConfigError(
                note(
                    f"{path.parent} holds another recipe ({stored})",
                    "choose a new --out for a new recipe",
                )
            )
        recipe = {**recipe, "seeds": sorted(set(stored.get("seeds", [])) | set(recipe["seeds"]))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recipe, indent=2))


def _done(folder: Path) -> bool:
    """A category folder whose evaluation and timing are written (a re-run skips it)."""
    return (folder / "eval" / "metrics.json").exists() and (folder / "timing.json").exists()


def _evaluate(commands: dict[str, Command], folder: Path, data: Path, category: str) -> float:
    """stpm-eval of ``folder``/train/best.ckpt into ``folder``/eval; returns its wall time."""
    ckpt = str(folder / "train" / "best.ckpt")
    where = ["--data", str(data), "--category", category]
    return _call(commands, "eval", [ckpt, *where, "--out", str(folder / "eval"), "--force"])


def _run_category(
    folder: Path, data: Path, category: str, seed: int, train_args, commands: dict[str, Command]
) -> None:
    if _done(folder):
        logger.info("%s: done, skipped", folder)
        return
    timing = {}
    where = ["--data", str(data), "--category", category]
    train = ["--out", str(folder / "train"), "--seed", str(seed), "--force", "--no-progress"]
    timing["train_s"] = _call(commands, "train", [*where, *train, *train_args])
    timing["eval_s"] = _evaluate(commands, folder, data, category)
    (folder / "timing.json").write_text(json.dumps(timing, indent=2))
    logger.info(
        "%s: trained in %.0f s, evaluated in %.0f s", folder, timing["train_s"], timing["eval_s"]
    )


def colour_variant(
    source: str | Path,
    out: str | Path,
    mode: str,
    commands: dict[str, Command] | None = None,
    gate_jpeg: int = DEFAULT_COLOUR_GATE_JPEG,
) -> Path:
    """The recipe folder ``source`` with the colour map fitted (``mode``, its gate also set on
    JPEG copies at ``gate_jpeg``) to every trained checkpoint, evaluated into ``out``."""
    fit = ["--mode", mode, "--colour-gate-jpeg", str(gate_jpeg)]
    variant = {"colour_map": mode, "colour_gate_jpeg": gate_jpeg}
    return posthoc_variant(source, out, "colour", fit, variant, commands)


def baseline_variant(
    source: str | Path, out: str | Path, on: bool = True, commands: dict[str, Command] | None = None
) -> Path:
    """The recipe folder ``source`` with the score baseline fitted to (``on``) or removed from
    every trained checkpoint (``stpm-baseline``), evaluated into ``out``."""
    fit = [] if on else ["--off"]
    return posthoc_variant(source, out, "baseline", fit, {"score_baseline": on}, commands)


def posthoc_variant(
    source: str | Path,
    out: str | Path,
    command: str,
    fit_args: list[str],
    variant: dict,
    commands: dict[str, Command] | None = None,
) -> Path:
    """The recipe folder ``source`` with ``stpm-<command> CKPT *fit_args --out NEW`` applied to
    every trained checkpoint (no retraining), evaluated into ``out`` (finished categories are
    skipped). ``variant`` is what the new recipe.json adds to the source's."""
    source, out = Path(source), Path(out)
    if not (source / "recipe.json").exists():
        raise DataError(
            note(f"{source} is not a recipe folder", "make one with `quality run --out DIR`")
        )
    commands = commands or _commands()
    recipe = json.loads((source / "recipe.json").read_text())
    _check_recipe(out / "recipe.json", {**recipe, **variant, "derived_from": str(source)})
    for timing_file in sorted(source.glob("seed*/*/timing.json")):
        folder = timing_file.parent
        seed_dir, category = folder.parent.name, folder.name
        target = out / seed_dir / category
        if _done(target):
            continue
        ckpt = target / "train" / "best.ckpt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(folder / "train" / "best.ckpt"), *fit_args, "--out", str(ckpt), "--force"]
        fit_s = _call(commands, command, argv)
        eval_s = _evaluate(commands, target, source / "data" / seed_dir, category)
        train_s = json.loads(timing_file.read_text())["train_s"] + fit_s
        timing = {"train_s": train_s, f"{command}_s": fit_s, "eval_s": eval_s}
        (target / "timing.json").write_text(json.dumps(timing, indent=2))
        logger.info("%s: stpm-%s in %.0f s", target, command, fit_s)
    return out


# -- summary ---------------------------------------------------------------------------------------
def collect(recipe_dir: str | Path) -> dict[str, dict[int, dict]]:
    """``{category: {seed: metrics.json + "train_s"}}`` of one recipe folder."""
    root = Path(recipe_dir)
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(root.glob("seed*/*/eval/metrics.json")):
        folder = path.parent.parent
        seed = int(folder.parent.name.removeprefix("seed"))
        metrics = json.loads(path.read_text())
        timing = folder / "timing.json"
        metrics["train_s"] = json.loads(timing.read_text())["train_s"] if timing.exists() else None
        found.setdefault(folder.name, {})[seed] = metrics
    if not found:
        raise DataError(
            note(f"no results under {root}", "expected seed<N>/<category>/eval/metrics.json")
        )
    return found


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample std (NaN std for one value); undefined (None) values are left out."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def summarize_recipe(results: dict[str, dict[int, dict]], weakest: int = 3) -> dict:
    """Per-category and mean numbers of one recipe (see the module docstring)."""
    rows = {}
    for category, by_seed in sorted(results.items()):
        runs = list(by_seed.values())
        row = {k: _mean_std([m.get(k) for m in runs]) for k in METRICS}
        types = sorted({t for m in runs for t in m.get("per_defect_type", {})})
        per_type = {
            t: _mean_std(
                [m.get("per_defect_type", {}).get(t, {}).get("image_auroc") for m in runs]
            )[0]
            for t in types
        }
        row["weakest"] = sorted(per_type.items(), key=lambda kv: kv[1])[:weakest]
        row["per_type_image_auroc"] = per_type
        row["train_min"] = _mean_std([m["train_s"] / 60 for m in runs if m.get("train_s")])[0]
        row["seeds"] = sorted(by_seed)
        rows[category] = row
    seeds = sorted({s for by_seed in results.values() for s in by_seed})
    mean, mean_per_seed = {}, {}
    for k in METRICS:  # the category mean per seed, then its spread over seeds
        per_seed = [
            _finite_mean([results[c][s].get(k) for c in results if s in results[c]]) for s in seeds
        ]
        mean[k] = _mean_std(per_seed)
        mean_per_seed[k] = dict(zip(seeds, per_seed, strict=True))
    return {"categories": rows, "mean": mean, "mean_per_seed": mean_per_seed, "seeds": seeds}


def _fmt(pair: tuple[float, float]) -> str:
    mean, std = pair
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def recipe_table(summary: dict) -> str:
    """Markdown table of :func:`summarize_recipe`'s result."""
    lines = [
        "| category | image AUROC | pixel AUROC | AUPRO | weakest defect types (image AUROC) | train min |",
        "|---|---|---|---|---|---|",
    ]
    for category, row in summary["categories"].items():
        weak = ", ".join(f"{t} {v:.2f}" for t, v in row["weakest"] if not math.isnan(v)) or "–"
        minutes = "n/a" if math.isnan(row["train_min"]) else f"{row['train_min']:.1f}"
        cells = " | ".join(_fmt(row[k]) for k in METRICS)
        lines.append(f"| {category} | {cells} | {weak} | {minutes} |")
    cells = " | ".join(f"**{_fmt(summary['mean'][k])}**" for k in METRICS)
    lines.append(f"| **mean** | {cells} | seeds {', '.join(map(str, summary['seeds']))} | |")
    return "\n".join(lines) + "\n"


def collect_joined(entry: str | Path) -> dict[str, dict[int, dict]]:
    """:func:`collect` of ``"A,B,..."``: one recipe whose seeds were run into several folders
    (e.g. a seed added later, after the default had moved on); the same (category, seed) in two
    of them is refused, and so are folders whose recipe settings differ."""
    folders = joined_folders(entry)
    clash = _clashing_settings(folders)
    if clash:
        raise DataError(
            note(f"{entry}: the folders hold different recipes ({clash})", "join one recipe")
        )
    joined: dict[str, dict[int, dict]] = {}
    for folder in folders:
        for category, by_seed in collect(folder).items():
            twice = sorted(set(by_seed) & set(joined.get(category, {})))
            if twice:
                raise DataError(
                    note(
                        f"{entry}: {category} seeds {twice} are in more than one folder",
                        "join folders whose seeds differ",
                    )
                )
            joined.setdefault(category, {}).update(by_seed)
    return joined


def joined_folders(entry: str | Path) -> list[Path]:
    """The folders of a summary entry ``"A,B,..."`` (one folder: itself)."""
    return [Path(part) for part in str(entry).split(",") if part]


def _clashing_settings(folders: Sequence[Path]) -> str:
    """The recipe settings two of ``folders`` record with different values ('' if none). A setting
    a folder does not record is not compared: a post-hoc variant records ``score_baseline``, a
    folder run when that was the default does not."""
    recipes = []
    for folder in folders:
        path = folder / "recipe.json"
        recipes.append(json.loads(path.read_text()) if path.exists() else {})
    keys = ("train_args", "bench_args", "colour_map", "colour_gate_jpeg", "score_baseline")
    clashes = []
    for key in keys:
        values = {json.dumps(r[key]) for r in recipes if key in r}
        if len(values) > 1:
            clashes.append(f"{key}: {' vs '.join(sorted(values))}")
    return "; ".join(clashes)


def summarize(recipe_dirs: Sequence[str | Path], out: str | Path | None = None) -> str:
    """Markdown report of one or more recipe folders (first = baseline); also JSON next to ``out``.
    An entry ``"A,B"`` is one recipe whose seeds are in folders A and B (:func:`collect_joined`)."""
    sections, data = [], {}
    baseline = None
    results, left_out = common_runs([collect_joined(entry) for entry in recipe_dirs])
    if left_out:
        sections.append(
            f"Compared on the (category, seed) runs every recipe has; left out: {left_out}.\n"
        )
    for entry, result in zip(recipe_dirs, results, strict=True):
        summary = summarize_recipe(result)
        folders = joined_folders(entry)
        recipe_file = folders[0] / "recipe.json"
        recipe = json.loads(recipe_file.read_text()) if recipe_file.exists() else {}
        flags = " ".join(recipe.get("train_args", [])) or "(stpm-train defaults)"
        if recipe.get("colour_map"):
            # recipes from before the setting were scaled on the validation images alone
            gate = recipe.get("colour_gate_jpeg", 0)
            flags += (
                f", then stpm-colour --mode {recipe['colour_map']} --colour-gate-jpeg {gate}"
                " (no retraining)"
            )
        if "score_baseline" in recipe:
            flags += f", then stpm-baseline{'' if recipe['score_baseline'] else ' --off'}"
        name = " + ".join(folder.name for folder in folders)
        sections.append(f"## {name}\n\nstpm-train {flags}\n\n{recipe_table(summary)}")
        if baseline is not None:
            sections.append(_delta_line(baseline, summary))
        baseline = baseline or summary
        data[str(entry)] = {**summary, "recipe": recipe}
    text = "\n".join(sections)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(_no_nan(data), indent=2))
    return text


def common_runs(
    results: list[dict[str, dict[int, dict]]],
) -> tuple[list[dict[str, dict[int, dict]]], list[str]]:
    """Each recipe's results restricted to the (category, seed) runs all of them have, so that a
    recipe still running is not compared on other categories' means; plus what was left out."""
    runs = [{(c, s) for c, by_seed in r.items() for s in by_seed} for r in results]
    shared = set.intersection(*runs) if runs else set()
    left_out = sorted({f"{c} seed {s}" for r in runs for c, s in r - shared})
    kept = [
        {c: {s: m for s, m in by_seed.items() if (c, s) in shared} for c, by_seed in r.items()}
        for r in results
    ]
    return [{c: by_seed for c, by_seed in r.items() if by_seed} for r in kept], left_out


def seed_gains(base: dict, new: dict, metric: str) -> dict[int, float]:
    """``{seed: new mean - base mean}`` of ``metric`` on the seeds both have: paired by seed, so
    the benchmark images each seed draws cancel out of the comparison."""
    old, now = base["mean_per_seed"][metric], new["mean_per_seed"][metric]
    return {
        s: now[s] - old[s]
        for s in sorted(set(old) & set(now))
        if now[s] is not None and old[s] is not None
    }


def _delta_line(base: dict, new: dict) -> str:
    """Mean gains over the baseline (and per seed) and the category that lost most."""
    parts = []
    for k in METRICS:
        per_seed = seed_gains(base, new, k)
        seeds = ", ".join(f"{v:+.3f}" for v in per_seed.values())
        parts.append(f"{k} {new['mean'][k][0] - base['mean'][k][0]:+.3f} (per seed {seeds})")
    worst = ", ".join(f"{k} {c} {d:+.3f}" for k, (c, d) in _worst_changes(base, new).items())
    return f"vs the first recipe (means): {', '.join(parts)}; worst category change: {worst}\n"


def _worst_changes(base: dict, new: dict) -> dict[str, tuple[str, float]]:
    """Per metric, the category whose mean changed least (most negative) from ``base``: the
    issue's "no category worse by more than 0.02" is about every metric, not image AUROC only."""
    common = sorted(set(base["categories"]) & set(new["categories"]))
    worst = {}
    for k in METRICS:
        drops = {
            c: new["categories"][c][k][0] - base["categories"][c][k][0]
            for c in common
            if new["categories"][c][k][0] is not None and base["categories"][c][k][0] is not None
        }
        worst[k] = min(drops.items(), key=lambda kv: kv[1]) if drops else ("–", math.nan)
    return worst


def _finite_mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values (None when there is none)."""
    defined = [float(v) for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else None


def _no_nan(value):
    """JSON-safe copy: NaN -> None, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
