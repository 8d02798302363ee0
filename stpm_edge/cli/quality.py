"""``python -m stpm_edge.cli.quality``: compare training recipes on the benchmark over seeds.

    python -m stpm_edge.cli.quality run --out runs/quality/default --seeds 0,1,2
    python -m stpm_edge.cli.quality run --out runs/quality/e50 --seeds 0,1,2 --train-args "--epochs 50"
    python -m stpm_edge.cli.quality colour runs/quality/default --out runs/quality/default_colour
    python -m stpm_edge.cli.quality baseline runs/quality/default --off --out runs/quality/no_base
    python -m stpm_edge.cli.quality summary runs/quality/default runs/quality/e50 --out quality.md
    python -m stpm_edge.cli.quality parity runs/quality/default_colour --seeds 0

``run`` builds the benchmark per seed, trains and evaluates every category (skipping finished
steps, so an interrupted run resumes); ``colour`` fits the colour map to a recipe's trained
checkpoints and evaluates them as a new recipe folder (no retraining), ``baseline`` likewise with
the score baseline (``--off``: without it); ``summary`` prints mean +- std over seeds per category,
the weakest defect types and the training minutes, and compares each recipe with the first;
``parity`` exports a recipe's checkpoints (FP32, FP16, INT8) and compares the graphs' AUROCs
with PyTorch's (``stpm_edge.quality_parity``).
Exit codes: 0 success, 2 a user error.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from stpm_edge.choices import COLOUR_MODES, DEFAULT_COLOUR_GATE_JPEG, DEFAULT_COLOUR_MODE
from stpm_edge.cli.args import add_colour_gate_args, add_logging_args, comma_list
from stpm_edge.cli.common import HelpFormatter, run_cli


def _ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    from stpm_edge.data.bench import CATEGORIES

    parser = argparse.ArgumentParser(
        prog="python -m stpm_edge.cli.quality",
        description="Compare training recipes on the benchmark dataset over several seeds.",
        formatter_class=HelpFormatter,
    )
    add_logging_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", formatter_class=HelpFormatter, help="train + evaluate one recipe")
    run.add_argument("--out", required=True, type=Path, help="the recipe folder")
    run.add_argument("--seeds", type=_ints, default="0,1,2", help="comma-separated seeds")
    run.add_argument(
        "--categories", default=",".join(CATEGORIES), help="comma-separated benchmark categories"
    )
    run.add_argument(
        "--train-args", default="", help='extra stpm-train flags, one string: "--epochs 50"'
    )
    run.add_argument("--bench-args", default="", help='extra stpm-data bench flags: "--n-train 40"')
    colour = sub.add_parser(
        "colour", formatter_class=HelpFormatter, help="a recipe's checkpoints + the colour map"
    )
    colour.add_argument("source", type=Path, help="a recipe folder made by `run`")
    colour.add_argument("--out", required=True, type=Path, help="the new recipe folder")
    colour.add_argument("--mode", choices=COLOUR_MODES, default=DEFAULT_COLOUR_MODE)
    add_colour_gate_args(colour, default=DEFAULT_COLOUR_GATE_JPEG)
    baseline = sub.add_parser(
        "baseline", formatter_class=HelpFormatter, help="a recipe's checkpoints +- the baseline"
    )
    baseline.add_argument("source", type=Path, help="a recipe folder made by `run`")
    baseline.add_argument("--out", required=True, type=Path, help="the new recipe folder")
    baseline.add_argument("--off", action="store_true", help="remove the score baseline instead")
    summary = sub.add_parser("summary", formatter_class=HelpFormatter, help="tables over seeds")
    summary.add_argument(
        "recipes",
        nargs="+",
        help="recipe folders, baseline first; A,B = one recipe whose seeds are in A and B",
    )
    summary.add_argument("--out", type=Path, default=None, help="also write this .md (+ .json)")
    parity = sub.add_parser(
        "parity", formatter_class=HelpFormatter, help="exported graphs vs PyTorch, per category"
    )
    parity.add_argument("recipe", type=Path, help="a recipe folder made by `run` or `colour`")
    parity.add_argument("--seeds", type=_ints, default=None, help="only these seeds (default: all)")
    parity.add_argument(
        "--precisions",
        default="fp32,fp16,int8",
        help="comma-separated: fp32, fp16, int8 (--target cpu), int8_openvino (--target openvino, "
        "for --backend openvino), int8_tensorrt (--target tensorrt; on ort-cpu its Q/DQ pairs "
        "run as written, TensorRT's arithmetic)",
    )
    parity.add_argument("--backend", default="ort-cpu", help="runtime backend that scores them")
    return parser


def _run(args: argparse.Namespace) -> int:
    from stpm_edge.quality import baseline_variant, colour_variant, run_recipe, summarize

    if args.command == "parity":
        from stpm_edge.quality_parity import export_parity, parity_table

        precisions = comma_list(args.precisions)
        result = export_parity(args.recipe, precisions, args.seeds, args.backend)
        print(parity_table(result, precisions), end="")
    elif args.command == "colour":
        colour_variant(args.source, args.out, args.mode, gate_jpeg=args.colour_gate_jpeg)
        print(summarize([args.source, args.out]), end="")
    elif args.command == "baseline":
        baseline_variant(args.source, args.out, not args.off)
        print(summarize([args.source, args.out]), end="")
    elif args.command == "run":
        run_recipe(
            args.out,
            args.seeds,
            comma_list(args.categories),
            shlex.split(args.train_args),
            shlex.split(args.bench_args),
        )
        print(summarize([args.out]), end="")
    else:
        print(summarize(args.recipes, args.out), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
