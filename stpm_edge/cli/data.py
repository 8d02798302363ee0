"""``stpm-data``: build the offline demo or benchmark dataset, or check a dataset folder.

    stpm-data demo  --out DIR [--categories brick,grass,gravel] [--seed 0] [--force] ...
    stpm-data bench --out DIR [--categories brick,...,label] [--seed 0] [--force] ...
    stpm-data check --data ROOT [--category CAT] [--skip-bad]

``check`` decodes every image and mask of an MVTec-layout category (or of a plain image folder
when ``--category`` is omitted) and prints the image count per split and defect type.
Exit codes: 0 success, 2 a user error (printed as ``error: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from stpm_edge.cli.args import add_force_args, add_logging_args, comma_list
from stpm_edge.cli.common import HelpFormatter, run_cli


def build_parser() -> argparse.ArgumentParser:
    from stpm_edge.data.demo import DEFECT_TYPES, TEXTURES

    fmt = HelpFormatter
    parser = argparse.ArgumentParser(
        prog="stpm-data",
        description="Build the demo or benchmark dataset, or check a dataset folder.",
        formatter_class=fmt,
    )
    add_logging_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        formatter_class=fmt,
        help="write the offline demo dataset (MVTec AD layout) from scikit-image textures",
        description="Write an MVTec-AD-layout dataset of texture photos with synthetic defects "
        "and exact masks. Same arguments -> byte-identical files.",
    )
    _add_dataset_args(demo, TEXTURES, "texture categories", counts=(72, 16, 20))
    _add_list_arg(demo, "--defect-types", DEFECT_TYPES, "defect types")
    add_force_args(demo)  # replaces only the demo's own category folders and README

    _add_bench_parser(sub)

    check = sub.add_parser(
        "check",
        formatter_class=fmt,
        help="validate a dataset folder and print its counts",
        description="Decode every image and mask and check the MVTec AD layout.",
    )
    check.add_argument(
        "--data", required=True, metavar="DIR", help="MVTec AD root, or a plain image folder"
    )
    check.add_argument(
        "--category",
        default=None,
        help="category folder under --data; omit for a plain folder of good images",
    )
    check.add_argument(
        "--skip-bad",
        action="store_true",
        help="report bad samples as warnings and count them instead of failing",
    )
    return parser


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    from stpm_edge.data.bench import CATEGORIES

    bench = sub.add_parser(
        "bench",
        formatter_class=HelpFormatter,
        help="write the benchmark dataset (photo textures + rendered parts, harder defects)",
        description="Write the MVTec-AD-layout benchmark used to choose training recipes: photo "
        "textures and rendered parts in random pose and light, thin/faint/geometric defects with "
        "exact masks. Same arguments -> byte-identical files.",
    )
    _add_dataset_args(bench, CATEGORIES, "categories", counts=(80, 50, 60))
    add_force_args(bench)  # replaces only the benchmark's own category folders and README


def _add_dataset_args(
    parser: argparse.ArgumentParser,
    categories: Sequence[str],
    what: str,
    counts: tuple[int, int, int],
) -> None:
    """The options every dataset builder takes; ``counts`` = default train/good/defect images."""
    n_train, n_good, n_defect = counts
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="dataset root to create (absent or empty)"
    )
    _add_list_arg(parser, "--categories", categories, what)
    parser.add_argument(
        "--n-train", type=int, default=n_train, help="good training images per category"
    )
    parser.add_argument(
        "--n-test-good", type=int, default=n_good, help="good test images per category"
    )
    parser.add_argument(
        "--n-test-defect",
        type=int,
        default=n_defect,
        help="defective test images per category, spread over its defect types",
    )
    parser.add_argument(
        "--image-size", type=int, default=256, help="side of the square images (px)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def _add_list_arg(
    parser: argparse.ArgumentParser, flag: str, choices: Sequence[str], what: str
) -> None:
    """A comma-list option whose default is all of ``choices``."""
    parser.add_argument(
        flag,
        type=comma_list,
        default=",".join(choices),
        metavar="LIST",
        help=f"comma-separated {what}, from {','.join(choices)}",
    )


def _build_dataset(build: Callable[..., Any], what: str, args: argparse.Namespace, **extra) -> int:
    """Run one dataset builder with the shared options and print where it went."""
    start = time.perf_counter()
    out = build(
        args.out,
        categories=args.categories,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect,
        image_size=args.image_size,
        seed=args.seed,
        force=bool(args.force),
        **extra,
    )
    print(f"{what} dataset written to {out} in {time.perf_counter() - start:.1f} s")
    print(f"categories: {', '.join(args.categories)} (train with --data {out} --category NAME)")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from stpm_edge.data.bench import build_bench_dataset

    return _build_dataset(build_bench_dataset, "benchmark", args)


def _run_demo(args: argparse.Namespace) -> int:
    from stpm_edge.data.demo import build_demo_dataset

    return _build_dataset(build_demo_dataset, "demo", args, defect_types=args.defect_types)


def _run_check(args: argparse.Namespace) -> int:
    from stpm_edge.data.mvtec import load_training_source

    source = load_training_source(args.data, args.category, skip_bad=args.skip_bad)
    source.validate()
    print(f"{source}: OK")
    for split, count in source.counts().items():
        print(f"  {split:<24} {count:6d}")
    if source.skipped:
        print(f"  skipped (bad)            {source.skipped:6d}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``stpm-data``; returns the exit code."""
    commands = {"demo": _run_demo, "bench": _run_bench, "check": _run_check}
    return run_cli(lambda a: commands[a.command](a), build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
