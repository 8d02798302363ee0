"""stpm-colour: add (or remove) the colour statistics map of a trained checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from stpm_edge.choices import (
    COLOUR_MODES,
    DEFAULT_COLOUR_GATE_JPEG,
    DEFAULT_COLOUR_MODE,
    GATE_JPEG_FIX,
    check_gate_jpeg,
)
from stpm_edge.cli.args import (
    add_colour_gate_args,
    add_logging_args,
    add_output_args,
    add_torch_device_args,
)
from stpm_edge.cli.common import HelpFormatter, run_cli
from stpm_edge.errors import ConfigError, note

DESCRIPTION = """Fit the colour statistics map to a trained checkpoint and write a NEW checkpoint.

STPM's channel-normalised features cannot see stains that only change the colour or the
intensity; the colour map (stpm_edge/colour_map.py) can. It is fitted post hoc — the student is
not retrained: colour statistics of the checkpoint's training images (its recorded data and
split), fusion scales from its validation images and their JPEG copies (--colour-gate-jpeg),
then the thresholds are re-calibrated on the fused map. --mode local (each cell against the
nearest training colour within one cell: stpm-train's default), aligned (a Gaussian per
position) or texture (one Gaussian for every position); off writes a copy without it (ablation).
stpm-export puts it into the one graph; stpm-eval --no-colour-map ablates it.

example:
  stpm-colour runs/brick/best.ckpt --mode local --out runs/brick/colour.ckpt
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stpm-colour", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint written by stpm-train")
    p.add_argument(
        "--mode",
        choices=[*COLOUR_MODES, "off"],
        default=DEFAULT_COLOUR_MODE,
        help=f"statistics kind (default: {DEFAULT_COLOUR_MODE}, as stpm-train's --colour-map auto)",
    )
    add_colour_gate_args(p, default=DEFAULT_COLOUR_GATE_JPEG)
    add_output_args(p, required=True, help="the new checkpoint (a .ckpt file)")
    add_torch_device_args(p)
    add_logging_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from stpm_edge.colour_map import write_with_colour_map

    try:
        gate_jpeg = check_gate_jpeg(args.colour_gate_jpeg)
    except ValueError as exc:
        raise ConfigError(note(str(exc), GATE_JPEG_FIX)) from exc
    write_with_colour_map(
        args.checkpoint,
        args.out,
        args.mode,
        args.device,
        args.batch_size,
        bool(args.force),
        gate_jpeg,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, build_parser, argv, needs=("torch",))


if __name__ == "__main__":
    raise SystemExit(main())
