"""The ``stpm-doctor`` command line: parse, validate, run the checks, write the report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stpm_edge.errors import ConfigError, note

from .backends import model_checks
from .environment import environment_warnings, probe_environment
from .model import model_metadata
from .report import build_report, render_markdown, target_dir, write_report


def build_parser() -> argparse.ArgumentParser:
    from stpm_edge.cli.args import add_logging_args, add_output_args
    from stpm_edge.cli.common import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="stpm-doctor",
        description="Check this machine and an exported model on every backend it can load; "
        "writes doctor.md/doctor.json to attach to a bug report. Exit 1 when a check fails.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "model", nargs="?", help="model.onnx from stpm-export (omit: environment only)"
    )
    parser.add_argument(
        "--reference",
        help="ONNX run on ONNX Runtime CPU as the reference (default: MODEL itself), e.g. the "
        "fp32 export when MODEL is fp16/int8",
    )
    parser.add_argument("--engine", help="a TensorRT engine built from MODEL on this device")
    parser.add_argument("--images", help="folder of images compared on top of the synthetic frames")
    parser.add_argument("--max-images", type=int, default=32, help="images read from --images")
    parser.add_argument("--frames", type=int, default=8, help="synthetic frames compared")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="latency time per backend (at least 10 runs)"
    )
    parser.add_argument(
        "--backends",
        type=lambda s: [b.strip() for b in s.split(",") if b.strip()],
        help="comma-separated backends to check (default: every available one)",
    )
    parser.add_argument(
        "--trt-version", help="TensorRT rules to check against (default: installed, else 10.3)"
    )
    add_output_args(parser, help="folder for doctor.md and doctor.json", type=str, default=".")
    add_logging_args(parser)
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.frames < 1:
        raise ConfigError(note(f"--frames {args.frames}", "compare at least 1 synthetic frame"))
    for flag in ("model", "reference", "engine", "images"):
        value = getattr(args, flag)
        if value and not Path(value).exists():
            raise ConfigError(note(f"{flag} {value} not found", "check the path"))
    if args.model is None and (args.reference or args.engine or args.images):
        raise ConfigError(note("--reference/--engine/--images need MODEL", "pass model.onnx"))
    if args.model and Path(args.model).suffix.lower() != ".onnx":
        raise ConfigError(note(f"MODEL {args.model} is not .onnx", "pass engines with --engine"))


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _validate(args)
    folder = target_dir(args.out, args.force)
    env = probe_environment()
    warnings = environment_warnings(env)
    metadata = model_metadata(Path(args.model)) if args.model else None  # read once
    checks = model_checks(args, env, metadata) if args.model else []
    report = build_report(args, argv, env, warnings, checks, metadata)
    markdown = render_markdown(report)
    write_report(folder, report, markdown)
    print(markdown, end="")
    print(f"report written to {folder / 'doctor.md'} and {folder / 'doctor.json'}")
    return 0 if report["ok"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    from stpm_edge.cli.common import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda args: run(args, argv), build_parser(), argv)
