"""Shared CLI plumbing: logging set-up and one way to turn StpmEdgeError into exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from stpm_edge.errors import StpmEdgeError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default (like trtexec) and keeps the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # Flags whose parser default is None (so YAML/--config can tell "not given") state their
        # real default in the help text; argparse would append a misleading "(default: None)".
        if action.help and "(default" in action.help:
            return action.help
        if action.default is None and action.nargs == 0:  # store_const switches (--no-amp, ...)
            return action.help
        return super()._get_help_string(action)


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, format="[%(levelname)s] %(message)s", stream=sys.stderr, force=True
    )


def run_cli(
    body: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
) -> int:
    """Parse, set up logging, run ``body``; a user mistake prints ``error: ...`` and returns 2."""
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        return body(args)
    except StpmEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
