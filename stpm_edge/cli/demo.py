"""stpm-demo: the whole pipeline, offline, on the demo dataset (what `make demo` runs)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stpm_edge.cli.args import add_logging_args, add_output_args, add_threads_args
from stpm_edge.cli.common import HelpFormatter, run_cli

DESCRIPTION = """Run stpm-edge end to end on real photographs, offline:
build the demo dataset (scikit-image textures + synthetic defects with exact masks), train STPM
with the offline EfficientNet-Lite0 teacher on each category, evaluate, export FP32/FP16/INT8
graphs and check them, run the camera loop on a demo video, benchmark, and write a report.

Each run writes OUT/run-YYYYmmdd-HHMMSS/ (report.md, per-category runs, exports, camera log);
OUT/latest points at the newest. The dataset in OUT/data is built once and reused.
"""


def build_parser() -> argparse.ArgumentParser:
    from stpm_edge.demo import DemoConfig

    d = DemoConfig()
    p = argparse.ArgumentParser(
        prog="stpm-demo", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    add_output_args(p, default=d.out, help="demo folder", force=False)
    p.add_argument(
        "--categories", default=",".join(d.categories), help="comma-separated demo categories"
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs per category")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of data, split and training")
    p.add_argument(
        "--bench-seconds",
        type=float,
        default=d.bench_seconds,
        help="time per benchmark configuration",
    )
    add_threads_args(p)
    add_logging_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from stpm_edge.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=args.out,
        categories=tuple(c for c in args.categories.split(",") if c),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        bench_seconds=args.bench_seconds,
        threads=args.threads,
    )
    result = run_demo(cfg)
    print(f"demo report: {result.run_dir / 'report.md'}")
    from stpm_edge.demo import operator_loop_commands

    print("watch it live (then review NG frames, tune, export; README: the operator loop):")
    print("\n".join(f"  {line}" for line in operator_loop_commands(result)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, build_parser, argv, needs=("torch", "skimage"))


if __name__ == "__main__":
    raise SystemExit(main())
