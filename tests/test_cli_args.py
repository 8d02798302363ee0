"""The shared argument groups (stpm_edge/cli/args.py): one flag, one meaning, every command."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stpm_edge.benchmarks.cli import build_parser as bench_parser
from stpm_edge.cli.args import BACKEND_HELP, parse_args
from stpm_edge.cli.colour import build_parser as colour_parser
from stpm_edge.cli.common import TRAIN_INSTALL_HINT
from stpm_edge.cli.data import build_parser as data_parser
from stpm_edge.cli.demo import build_parser as demo_parser
from stpm_edge.cli.evaluate import build_parser as eval_parser
from stpm_edge.cli.train import build_parser as train_parser
from stpm_edge.cli.tune import build_parser as tune_parser
from stpm_edge.export.cli import build_parser as export_parser
from stpm_edge.runtime.camera import build_parser as camera_parser
from stpm_edge.runtime.doctor import build_parser as doctor_parser

REPO = Path(__file__).resolve().parents[1]

PARSERS = {
    "stpm-camera": camera_parser,
    "stpm-export": export_parser,
    "stpm-bench": bench_parser,
    "stpm-train": train_parser,
    "stpm-eval": eval_parser,
    "stpm-demo": demo_parser,
    "stpm-data": data_parser,
    "stpm-doctor": doctor_parser,
    "stpm-tune": tune_parser,
    "stpm-colour": colour_parser,
}


def _options(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    """Every option string -> what a user sees and gets: help, type, action kind, default..."""
    found = {}
    for a in parser._actions:
        signature = (type(a).__name__, a.help, a.type, a.nargs, a.const, a.default, a.choices,
                     a.metavar)  # fmt: skip
        for option in a.option_strings:
            found[option] = signature
    return found


@pytest.fixture(scope="module")
def options() -> dict[str, dict[str, tuple]]:
    return {name: _options(build()) for name, build in PARSERS.items()}


def test_shared_options_are_identical_across_commands(options) -> None:
    for flag in (
        "-v",
        "--verbose",
        "-q",
        "--quiet",
        "--force",
        "--config",
        "--threads",
    ):
        holders = {name: opts[flag] for name, opts in options.items() if flag in opts}
        if flag == "--threads":  # a sweep (stpm-bench) takes the comma-list variant
            holders.pop("stpm-bench", None)
        assert len(holders) >= 2, (flag, sorted(holders))
        assert len(set(holders.values())) == 1, (flag, holders)
    for name, opts in options.items():
        assert opts["-v"][0] == "_CountAction", name  # -v is a count everywhere
    # --backend: one name (camera) or a comma list of the same names (bench), one description
    camera, bench = options["stpm-camera"]["--backend"], options["stpm-bench"]["--backend"]
    assert camera[1] == BACKEND_HELP and bench[1].endswith(BACKEND_HELP)


def test_camera_export_bench_share_their_common_groups() -> None:
    for name in ("stpm-camera", "stpm-export", "stpm-bench"):
        text = PARSERS[name]().format_help()
        for group in ("logging:", "config:", "-v, --verbose", "--config FILE.yaml"):
            assert group in text, (name, group)
    for name in ("stpm-camera", "stpm-bench"):
        assert "backend:" in PARSERS[name]().format_help()
    assert "output:" in PARSERS["stpm-export"]().format_help()


def test_batch_means_the_batch_fed_to_the_model(capsys) -> None:
    camera = camera_parser().parse_args(["--batch", "4"])
    assert camera.batch == 4
    assert bench_parser().parse_args(["m.onnx", "--batch", "1,4"]).batch == "1,4"
    export = export_parser()
    assert export.parse_args(["c.ckpt", "-o", "m.onnx"]).batch_range == (1, 1, 8)
    args = export.parse_args(["c.ckpt", "-o", "m.onnx", "--batch-range", "1:2:4"])
    assert args.batch_range == (1, 2, 4) and "deprecated" not in capsys.readouterr().err
    # the old spelling still works for one release, and says so
    args = export.parse_args(["c.ckpt", "-o", "m.onnx", "--batch", "2:4:8"])
    assert args.batch_range == (2, 4, 8)
    err = capsys.readouterr().err
    assert "--batch is deprecated" in err and "--batch-range" in err


def test_config_file_fills_defaults_and_flags_win(tmp_path) -> None:
    config = tmp_path / "export.yaml"
    config.write_text("output: from_config.onnx\nfp16: true\nbatch-range: '1:2:4'\n")
    args = parse_args(export_parser(), ["c.ckpt", "--config", str(config)])
    assert args.output == Path("from_config.onnx") and args.fp16 and args.batch_range == (1, 2, 4)
    args = parse_args(export_parser(), ["c.ckpt", "--config", str(config), "-o", "flag.onnx"])
    assert args.output == Path("flag.onnx")
    config.write_text("outptu: x.onnx\n")
    with pytest.raises(Exception, match=r"unknown keys \['outptu'\]"):
        parse_args(export_parser(), ["c.ckpt", "--config", str(config)])


BLOCKED = textwrap.dedent(
    """
    import contextlib, io, json, sys
    sys.modules["torch"] = None   # any `import torch` now fails as on a runtime-only install
    sys.modules["torchvision"] = None
    from stpm_edge.cli.train import main as train
    from stpm_edge.cli.evaluate import main as evaluate
    from stpm_edge.cli.demo import main as demo
    from stpm_edge.export.cli import main as export
    calls = {
        "train": (train, ["--data", sys.argv[1]]),
        "eval": (evaluate, [sys.argv[2], "--data", sys.argv[1], "--category", "c",
                            "--out", sys.argv[1] + "/eval"]),
        "demo": (demo, ["--out", sys.argv[1] + "/demo"]),
        "export": (export, [sys.argv[2], "-o", sys.argv[1] + "/m.onnx"]),
    }
    results = {}
    for name, (main, argv) in calls.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(argv)
        results[name] = [code, err.getvalue()]
    print(json.dumps(results))
    """
)


def test_training_commands_without_torch_say_what_to_install(tmp_path) -> None:
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(tmp_path), str(checkpoint)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name, (code, err) in json.loads(result.stdout).items():
        assert code == 2, (name, err)
        assert err.startswith("error: ") and TRAIN_INSTALL_HINT in err and "torch" in err, name
        assert "Traceback" not in err, name
    assert not (tmp_path / "demo").exists()  # nothing half done before the check
