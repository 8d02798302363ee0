"""stpm-eval: evaluate a checkpoint on a labelled MVTec-layout test set."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from stpm_edge.cli.args import add_logging_args, add_output_args, add_torch_device_args
from stpm_edge.cli.common import HelpFormatter, run_cli

DESCRIPTION = """Evaluate a trained checkpoint on DATA/CATEGORY/test.

Writes EVAL_DIR/metrics.json (image_auroc, pixel_auroc, aupro, image_f1_max, ...),
EVAL_DIR/predictions.csv (path, label, score, verdict), overlays.png (heatmaps on a sample of
images), roc.png and pro.png (AU-PRO: standard MVTec definition, integrated to FPR 0.3).

example:
  stpm-eval runs/brick/best.ckpt --data data/demo --category brick --out runs/brick/eval
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stpm-eval", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument(
        "checkpoint", type=Path, help="checkpoint written by stpm-train (RUN_DIR/best.ckpt)"
    )
    p.add_argument("--data", required=True, help="dataset root in MVTec AD layout")
    p.add_argument("--category", required=True, help="category folder under --data")
    add_output_args(p, required=True, help="folder for the evaluation files")
    add_torch_device_args(p)
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable images and missing or mismatched masks with a warning, instead of stopping",
    )
    p.add_argument(
        "--save-calibrated",
        type=Path,
        metavar="CKPT",
        help="write a copy of the checkpoint with F1-optimal image/pixel thresholds from these labelled "
        "images (export it to deploy those thresholds); never overwrites",
    )
    m = p.add_argument_group(
        "map settings (override the checkpoint's; thresholds are re-calibrated)"
    )
    m.add_argument(
        "--blur-sigma",
        type=float,
        help="Gaussian blur of the map, 0 = off (default: the checkpoint's)",
    )
    m.add_argument(
        "--score-reduction", choices=["max", "topk"], help="image score (default: the checkpoint's)"
    )
    m.add_argument(
        "--topk-fraction", type=float, help="share of pixels for topk (default: the checkpoint's)"
    )
    m.add_argument(
        "--map-resolution",
        choices=["feature", "input"],
        help="grid the map is scored on (default: the checkpoint's)",
    )
    m.add_argument(
        "--no-colour-map",
        dest="colour_map",
        action="store_false",
        help="switch the checkpoint's colour map off (ablation: plain STPM, thresholds re-fitted)",
    )
    m.add_argument(
        "--no-score-baseline",
        dest="score_baseline",
        action="store_false",
        help="score the whole map, not its rise above the checkpoint's score baseline (ablation; "
        "thresholds re-fitted)",
    )
    add_logging_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from stpm_edge.errors import OutputExistsError, note
    from stpm_edge.evaluate import EvalOptions, evaluate_checkpoint, per_type_table
    from stpm_edge.outputs import prepare_output_dir

    if args.save_calibrated is not None and args.save_calibrated.exists():
        raise OutputExistsError(
            note(
                f"--save-calibrated {args.save_calibrated} exists",
                "choose a new file name; nothing was written",
            )
        )
    prepare_output_dir(args.out, args.force)
    options = EvalOptions(
        device=args.device,
        batch_size=args.batch_size,
        blur_sigma=args.blur_sigma,
        score_reduction=args.score_reduction,
        topk_fraction=args.topk_fraction,
        map_resolution=args.map_resolution,
        skip_bad=args.skip_bad,
        save_calibrated=args.save_calibrated,
        colour_map=args.colour_map,
        score_baseline=args.score_baseline,
    )
    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.category, args.out, options)
    keys = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "accuracy_at_threshold")
    print(json.dumps({k: metrics.get(k) for k in keys}, indent=2))
    print(per_type_table(metrics), end="")
    print(f"wrote {args.out}/metrics.json and per_defect_type.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv, needs=("torch",))


if __name__ == "__main__":
    raise SystemExit(main())
