"""stpm-tune: fine-tune a trained checkpoint on frames the operator marked as false rejects."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stpm_edge.cli.args import add_logging_args, add_output_args
from stpm_edge.cli.common import HelpFormatter, run_cli

DESCRIPTION = """Learn from the operator: fine-tune the student of a calibrated checkpoint on its
original good training images plus the frames marked "good" (false rejects) on the live page
(stpm-camera --http writes them to NG_DIR/../review/good), re-calibrate, and write a NEW checkpoint.

Short schedule: --epochs (3) at --lr-factor (0.1) x the training learning rate; the marked frames
are repeated to about --extra-share (25 %) of each epoch. Thresholds follow the checkpoint's
calibration source: validation ('val_good') and labelled thresholds are re-fitted to the tuned
student on the same images; a manual threshold is kept as set (with a warning). The input
checkpoint is never written; an existing --out needs --force.

Prints and writes OUT.tune.json: the marked frames' scores and verdicts before vs after, and the
labelled test set's image AUROC before vs after (--data/--category, else the checkpoint's own
training data when it has a test folder).

example:
  stpm-tune runs/brick/best.ckpt --extra-good ng/../review/good --out runs/brick/tuned.ckpt
  stpm-export runs/brick/tuned.ckpt -o brick_tuned.onnx
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stpm-tune", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument("checkpoint", help="calibrated checkpoint to start from (RUN/best.ckpt)")
    p.add_argument(
        "--extra-good",
        action="append",
        required=True,
        metavar="FOLDER",
        help="folder of frames confirmed good (repeatable), e.g. REVIEW/good",
    )
    add_output_args(p, required=True, type=str, help="the new checkpoint (a .ckpt file)")
    o = p.add_argument_group("schedule")
    o.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    o.add_argument(
        "--lr-factor", type=float, default=0.1, help="learning rate = this x the training rate"
    )
    o.add_argument(
        "--extra-share",
        type=float,
        default=0.25,
        help="share of each epoch's images that are marked frames (by repetition)",
    )
    o.add_argument("--batch-size", type=int, help="(default: the training batch size)")
    o.add_argument("--seed", type=int, default=0, help="seeds the shuffles")
    o.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:N]'")
    o.add_argument("--progress", action="store_true", help="show a progress bar per epoch")
    t = p.add_argument_group("before/after on a labelled test set")
    t.add_argument("--data", help="dataset root in MVTec AD layout")
    t.add_argument("--category", help="category folder under --data")
    add_logging_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from stpm_edge.errors import ConfigError, note
    from stpm_edge.tune import TuneConfig, summary, tune

    if bool(args.data) != bool(args.category):
        raise ConfigError(note("--data and --category go together", "pass both or neither"))
    options = {k: v for k, v in vars(args).items() if k not in ("verbose", "quiet")}
    options["force"] = bool(options["force"])  # None: not given (the shared --force)
    report = tune(TuneConfig(**options))
    print(summary(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, build_parser, argv, needs=("torch",))


if __name__ == "__main__":
    raise SystemExit(main())
