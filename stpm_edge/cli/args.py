"""Reusable argument groups: a flag that several commands share is declared once, here.

Each ``add_*_args`` function adds one titled group to a parser (the Polygraphy way), so
``stpm-camera --help``, ``stpm-export --help`` and ``stpm-bench --help`` show the same groups with
the same names, types and help texts. ``--config FILE.yaml`` fills parser defaults from YAML
(:func:`parse_args`), so flags always win over the file.

Torch-free on purpose: the runtime's ``stpm-camera`` imports this module on devices without torch.

Shared meanings:
  -v/--verbose   a count (-v info, -vv debug) everywhere; -q/--quiet: warnings and errors only
  --force        overwrite existing outputs (never implied)
  --backend      inference backend name(s): auto, tensorrt, ort-trt, ort-cuda, ort-cpu, ...
  --threads      ONNX Runtime CPU threads
  --batch        batch size(s) fed to the model (one int in stpm-camera, a list in stpm-bench);
                 stpm-export's TensorRT profile is ``--batch-range MIN:OPT:MAX``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stpm_edge.errors import ConfigError, note

BACKEND_HELP = (
    "inference backend: auto (the fastest one installed), tensorrt, ort-trt, ort-cuda, ort-cpu "
    "or another name from stpm_edge.runtime.runners"
)
CONFIG_HELP = (
    "YAML file with defaults for any of these flags (keys = flag names, dashes or underscores); "
    "flags given on the command line override it"
)


def comma_list(text: str) -> list[str]:
    """A comma-separated flag value -> its items, stripped, empty ones dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _group(parser: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """The parser's group called ``title`` (created once, so two helpers can share it)."""
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    """Logging: -v (a count: -v info, -vv debug) and -q (warnings and errors only)."""
    g = _group(parser, "logging")
    g.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def add_config_args(parser: argparse.ArgumentParser, *, merge: bool = True) -> None:
    """Config: ``--config FILE.yaml``.

    ``merge=True``: :func:`parse_args` loads the file into the parser's defaults (unknown keys
    are an error). ``merge=False``: the command reads the file itself (stpm-train's TrainConfig).
    """
    g = _group(parser, "config")
    action = g.add_argument("--config", metavar="FILE.yaml", help=CONFIG_HELP)
    action.merge_yaml = merge  # type: ignore[attr-defined]  # read by parse_args


def add_model_args(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """Model: ``--model`` (an exported model.onnx or model.engine with its .json sidecar)."""
    g = _group(parser, "model")
    g.add_argument(
        "--model",
        required=required,
        metavar="FILE",
        help="exported model.onnx, or model.engine (with its .json sidecar)",
    )


def add_backend_args(parser: argparse.ArgumentParser, *, multiple: bool = False) -> None:
    """Backend: ``--backend`` and ``--threads``; ``multiple``: comma lists to sweep (stpm-bench)."""
    g = _group(parser, "backend")
    if multiple:
        g.add_argument(
            "--backend", default="auto", metavar="LIST", help=f"comma list; each an {BACKEND_HELP}"
        )
    else:
        g.add_argument("--backend", default="auto", metavar="NAME", help=BACKEND_HELP)
    add_threads_args(parser, multiple=multiple)


def add_colour_gate_args(parser: argparse.ArgumentParser, *, default: int | None) -> None:
    """``--colour-gate-jpeg Q``: the colour map's gate is also set on JPEG copies (quality Q) of
    the good validation images (stpm-train, stpm-colour); ``default`` None leaves it to a config."""
    from stpm_edge.choices import DEFAULT_COLOUR_GATE_JPEG

    _group(parser, "colour map").add_argument(
        "--colour-gate-jpeg",
        type=int,
        metavar="Q",
        default=default,
        help="set the colour map's gate on the good validation images and on their JPEG copies at "
        "quality Q, so that compressed live frames (MJPG cameras, RTSP streams) do not fire it; "
        "0: on the images as they are (only where the live frames are lossless like them: finds "
        f"fainter stains) (default: {DEFAULT_COLOUR_GATE_JPEG})",
    )


def add_threads_args(parser: argparse.ArgumentParser, *, multiple: bool = False) -> None:
    """``--threads``: ONNX Runtime CPU threads (``multiple``: a comma list to sweep)."""
    g = _group(parser, "backend")
    if multiple:
        g.add_argument(
            "--threads",
            default=None,
            metavar="LIST",
            help="comma list of ONNX Runtime CPU thread counts (default: ORT's choice)",
        )
        return
    g.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime CPU threads (default: ORT's choice)"
    )


def add_torch_device_args(parser: argparse.ArgumentParser) -> None:
    """PyTorch inference: ``--device`` and ``--batch-size`` (stpm-eval, stpm-colour, stpm-baseline)."""
    g = _group(parser, "pytorch")
    g.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:N]'")
    g.add_argument("--batch-size", type=int, default=8, help="images per forward pass")


def add_batch_args(parser: argparse.ArgumentParser, *, multiple: bool = False) -> None:
    """Batch: ``--batch``, the batch size fed to the model (``multiple``: a comma list to sweep)."""
    g = _group(parser, "backend")
    if multiple:
        g.add_argument(
            "--batch",
            default="1",
            metavar="LIST",
            help="comma list of batch sizes fed to the model, e.g. 1,4,8",
        )
        return
    g.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="batch size fed to the model: up to N queued frames inferred at once",
    )


def add_output_args(
    parser: argparse.ArgumentParser,
    *flags: str,
    help: str,
    required: bool = False,
    type: Any = Path,
    default: Any = None,
    force: bool = True,
) -> None:
    """Output: the output flag(s) (``--out`` unless given) and ``--force`` (unless ``force=False``,
    for a command that never overwrites).

    ``--force`` is store_const with a None default so that a ``--config`` file can set it and
    "not given" stays distinguishable; None is falsy wherever it is used as a bool.
    """
    g = _group(parser, "output")
    g.add_argument(*(flags or ("--out",)), required=required, type=type, default=default, help=help)
    if force:
        add_force_args(parser)


def add_force_args(parser: argparse.ArgumentParser) -> None:
    """``--force`` alone (for commands whose output flag is positional or grouped elsewhere)."""
    _group(parser, "output").add_argument(
        "--force", action="store_const", const=True, help="overwrite existing outputs"
    )


class DeprecatedAlias(argparse.Action):
    """An old spelling kept for one release: stores into the new flag's ``dest`` and warns once.

    Use ``parser.add_argument("--old", action=DeprecatedAlias, dest="new", new_flag="--new", ...)``.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, new_flag: str, **kwargs) -> None:
        self.new_flag = new_flag
        kwargs["help"] = f"deprecated alias of {new_flag} (removed in the next release)"
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"warning: {option_string} is deprecated in {parser.prog}; use {self.new_flag} "
            "(the old spelling goes away in the next release)",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


# ------------------------------------------------------------------------------------------------
# --config: YAML defaults
# ------------------------------------------------------------------------------------------------
def _config_action(parser: argparse.ArgumentParser) -> argparse.Action | None:
    for action in parser._actions:
        if "--config" in action.option_strings and getattr(action, "merge_yaml", False):
            return action
    return None


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (``yaml.safe_load``); ConfigError otherwise."""
    import yaml  # PyYAML is a runtime dependency; imported here so --help stays instant

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            note(f"cannot read --config {path}: {exc}", "expected a YAML mapping of flag: value")
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            note(f"--config {path} is not a mapping", "write one `flag: value` per line")
        )
    return data


def apply_config_defaults(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """If the parser has a merging ``--config`` and argv names a file, load it as defaults."""
    action = _config_action(parser)
    if action is None:
        return
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    data = load_yaml_mapping(known.config)
    dests = {a.dest for a in parser._actions} - {"help", "config", argparse.SUPPRESS}
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise ConfigError(
            note(f"--config {known.config}: unknown keys {unknown}", f"known keys: {sorted(dests)}")
        )
    # a config value satisfies a required flag: argparse must not demand it on the command line
    for a in parser._actions:
        if a.dest in values and a.required:
            a.required = False
    parser.set_defaults(**values)


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """``parser.parse_args`` after merging ``--config`` (when the parser has one that merges)."""
    apply_config_defaults(parser, argv)
    return parser.parse_args(argv)
