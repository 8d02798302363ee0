"""The colour map's modes and JPEG gates on a quality recipe's checkpoints: detection and how
often JPEG copies of good test images read as defects (issue 10; stpm_edge.colour_map).

The benchmark's test images are PNGs like its training images, so its AUROCs cannot show what a
compressed live frame does to a colour map. This script fits each variant (``MODE:GATE``, GATE
the ``--colour-gate-jpeg`` quality, 0 = none) post hoc to every checkpoint of a recipe folder
(``quality run``), as ``stpm-colour`` does, and reports per category and seed:

- image AUROC, all defects and per defect type (the PyTorch scores ``stpm-eval`` computes);
- ``jpeg_above_best_good``: the share of the good test images' JPEG copies (quality
  ``--test-quality``) whose score exceeds every good PNG's — a frame that only went through a
  codec, judged worse than any good image;
- ``jpeg_score_ratio``: the median ratio of a JPEG copy's score to its PNG original's.

The STPM features of each image are computed once per checkpoint; only the colour side is refit.

    python benchmarks/scripts/colour_gate_jpeg.py runs/quality/defaults --seeds 0,1,2 \\
        --variants aligned:0,aligned:90,local:0,local:90 \\
        --out benchmarks/reports/cpu-epyc-2core/quality/colour_gate_jpeg
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from stpm_edge import anomaly_map as am
from stpm_edge import colour_map as cm
from stpm_edge.checkpoint import load_checkpoint, model_from_payload
from stpm_edge.data.mvtec import MVTecCategory
from stpm_edge.evaluate import load_test_images
from stpm_edge.metrics import auroc
from stpm_edge.runtime.image import jpeg_round_trip, normalize


def _features(model, images: np.ndarray, batch: int = 10) -> list:
    cfg, out = model.config, []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(normalize(images[i : i + batch], cfg.mean, cfg.std))
            out.append((x, model.features(x)))
    return out


def _scores(model, feats: list) -> np.ndarray:
    settings, scores = am.MapSettings.of(model.config), []
    with torch.no_grad():
        for x, (teacher, student) in feats:
            fuse = model.colour.fuser(model.colour.of_normalised(x))
            size = tuple(int(s) for s in x.shape[-2:])
            scores.append(am.score_map(teacher, student, size, settings, fuse)[1].numpy())
    return np.concatenate(scores)


def _category(recipe: Path, seed: int, category: str, variants: list, quality: int) -> dict:
    payload = load_checkpoint(recipe / f"seed{seed}" / category / "train" / "best.ckpt")
    model = model_from_payload(payload, category).eval()
    model.colour = None
    samples = MVTecCategory(recipe / "data" / f"seed{seed}", category).test()
    images, _ = load_test_images(samples, model.config.image_size)
    types = np.array([s.defect_type for s in samples])
    good = types == "good"
    feats = _features(model, np.concatenate([images, jpeg_round_trip(images[good], quality)]))
    results = {}
    for variant in variants:
        mode, gate = variant.split(":")
        model.colour = cm.fit_for_checkpoint(payload, model, mode, gate_jpeg=int(gate))
        all_scores = _scores(model, feats)
        scores, copies = all_scores[: len(images)], all_scores[len(images) :]
        row = {"all": auroc((~good).astype(int), scores)}
        for kind in sorted(set(types) - {"good"}):
            pick = good | (types == kind)
            row[kind] = auroc((types[pick] != "good").astype(int), scores[pick])
        row["jpeg_above_best_good"] = float(np.mean(copies > scores[good].max()))
        row["jpeg_score_ratio"] = float(np.median(copies / scores[good]))
        results[variant] = row
        print(seed, category, variant, json.dumps({k: round(v, 3) for k, v in row.items()}))
    return results


def _table(results: dict, variants: list) -> str:
    """Mean over seeds, per category: image AUROC (all, colour / intensity stains), JPEG share."""
    lines = [
        "| variant | category | image AUROC | stain_colour | stain_intensity | JPEG copies above best good | JPEG/PNG score |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("all", "stain_colour", "stain_intensity", "jpeg_above_best_good", "jpeg_score_ratio")
    for variant in variants:
        means = {k: [] for k in keys}
        for category, seeds in sorted(results.items()):
            rows = [seeds[s][variant] for s in sorted(seeds)]
            values = [float(np.mean([r[k] for r in rows])) for k in keys]
            for k, v in zip(keys, values, strict=True):
                means[k].append(v)
            lines.append(
                f"| {variant} | {category} | " + " | ".join(f"{v:.3f}" for v in values) + " |"
            )
        lines.append(
            f"| **{variant}** | **mean** | "
            + " | ".join(f"**{np.mean(means[k]):.3f}**" for k in keys)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", type=Path, help="a recipe folder made by `quality run`")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--categories", default=None, help="comma list (default: all trained)")
    parser.add_argument("--variants", default="aligned:0,aligned:90,local:0,local:90")
    parser.add_argument("--test-quality", type=int, default=85, help="JPEG quality of the copies")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    variants = args.variants.split(",")
    results: dict[str, dict[int, dict]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        folders = sorted((args.recipe / f"seed{seed}").iterdir())
        names = args.categories.split(",") if args.categories else [f.name for f in folders]
        for category in names:
            results.setdefault(category, {})[seed] = _category(
                args.recipe, seed, category, variants, args.test_quality
            )
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + shlex.join(sys.argv)
    record = {"command": command, "recipe": str(args.recipe), "test_quality": args.test_quality,
              "results": results}  # fmt: skip
    (args.out / "colour_gate_jpeg.json").write_text(json.dumps(record, indent=1) + "\n")
    head = (
        f"Made by `{command}`.\n\n"
        f"JPEG copies at quality {args.test_quality}; mean over seeds {args.seeds}.\n\n"
    )
    (args.out / "colour_gate_jpeg.md").write_text(head + _table(results, variants))
    print(head + _table(results, variants))


if __name__ == "__main__":
    main()
