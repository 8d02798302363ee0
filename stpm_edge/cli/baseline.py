"""stpm-baseline: add (or remove) the score baseline of a trained checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from stpm_edge.cli.args import add_logging_args, add_output_args, add_torch_device_args
from stpm_edge.cli.common import HelpFormatter, run_cli

DESCRIPTION = """Fit the score baseline to a trained checkpoint and write a NEW checkpoint.

The image score is then taken on the map minus the largest value the checkpoint's training
images reach at each position (stpm_edge/score_baseline.py): the fixed pattern every good frame
shows (the border, the edges of an aligned part's components) no longer counts as anomaly. The
output map is unchanged. Fitted post hoc on the checkpoint's training images (its recorded data
and split), with its colour map as it is; thresholds are re-calibrated on the new scores.
stpm-train fits it by default (--no-score-baseline to skip); --off writes a copy without it
(ablation); stpm-eval --no-score-baseline ablates it too.

example:
  stpm-baseline runs/brick/best.ckpt --out runs/brick/baseline.ckpt
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stpm-baseline", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint written by stpm-train")
    p.add_argument("--off", action="store_true", help="remove the score baseline instead")
    add_output_args(p, required=True, help="the new checkpoint (a .ckpt file)")
    add_torch_device_args(p)
    add_logging_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from stpm_edge.score_baseline import write_with_score_baseline

    write_with_score_baseline(
        args.checkpoint, args.out, not args.off, args.device, args.batch_size, bool(args.force)
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, build_parser, argv, needs=("torch",))


if __name__ == "__main__":
    raise SystemExit(main())
