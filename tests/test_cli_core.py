"""The core CLIs (stpm-train, stpm-eval, stpm-demo): help texts and user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stpm_edge.cli import demo as demo_cli
from stpm_edge.cli import evaluate as eval_cli
from stpm_edge.cli import train as train_cli


def help_text(main, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def option_help(text: str, flag: str) -> str:
    """The help entry of one option (its lines up to the next option), whitespace-joined."""
    lines = text.splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.lstrip().startswith(f"{flag} ") or line.strip() == flag
    )
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("  -")), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def test_train_help_states_the_real_defaults(capsys) -> None:
    from stpm_edge.train import TrainConfig

    text = help_text(train_cli.main, capsys)
    d = TrainConfig()
    for flag, default in (
        ("--epochs", d.epochs),
        ("--batch-size", d.batch_size),
        ("--lr", d.lr),
        ("--image-size", d.image_size),
        ("--backbone", d.backbone),
        ("--teacher-weights", d.teacher_weights),
        ("--out", d.out),
        ("--blur-sigma", d.blur_sigma),
        ("--score-reduction", d.score_reduction),
        ("--seed", d.seed),
        ("--device", d.device),
        ("--val-fraction", d.val_fraction),
    ):
        entry = option_help(text, flag)
        assert f"(default: {default})" in entry, entry
        # a flag with a real default never also claims "None" (its parser default, for YAML)
        assert "(default: None)" not in entry, entry
    for flag in ("--resume", "--force", "--no-amp"):
        assert "(default: None)" not in option_help(text, flag)


def test_eval_help(capsys) -> None:
    text = help_text(eval_cli.main, capsys)
    assert "(default: 8)" in option_help(text, "--batch-size")
    assert "(default: cpu)" in option_help(text, "--device")
    force = option_help(text, "--force")  # a switch, off unless given: no default to claim
    assert "overwrite existing outputs" in force and "(default: None)" not in force
    assert "metrics.json" in text and "predictions.csv" in text


def test_demo_help(capsys) -> None:
    from stpm_edge.demo import DemoConfig

    text = help_text(demo_cli.main, capsys)
    d = DemoConfig()
    for flag, default in (
        ("--epochs", d.epochs),
        ("--lr", d.lr),
        ("--bench-seconds", d.bench_seconds),
        ("--categories", ",".join(d.categories)),
        ("--out", d.out),
    ):
        assert f"(default: {default})" in option_help(text, flag), flag
    assert "(default: None)" not in option_help(text, "--threads")


def test_list_backbones(capsys) -> None:
    assert train_cli.main(["--list-backbones"]) == 0
    names = capsys.readouterr().out.split()
    assert {"efficientnet_lite0", "resnet18"} <= set(names)


def test_train_with_missing_data_folder(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_dataset"
    rc = train_cli.main(
        [
            "--data",
            str(missing),
            "--category",
            "brick",
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "32",
            "--teacher-weights",
            "random",
            "--no-progress",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [error] = [line for line in err.splitlines() if line.startswith("error:")]
    assert str(missing) in error
    assert "--data" in err
    assert not (tmp_path / "run" / "best.ckpt").exists()


def test_train_without_data(capsys) -> None:
    assert train_cli.main(["--epochs", "1"]) == 2
    assert "--data" in capsys.readouterr().err


def test_train_bad_image_size_is_a_user_error(tmp_path: Path, capsys) -> None:
    rc = train_cli.main(
        ["--data", str(tmp_path), "--image-size", "100", "--out", str(tmp_path / "r")]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "image-size" in err and "Traceback" not in err


def test_eval_missing_checkpoint(tmp_path: Path, capsys) -> None:
    rc = eval_cli.main(
        [
            str(tmp_path / "absent.ckpt"),
            "--data",
            str(tmp_path),
            "--category",
            "x",
            "--out",
            str(tmp_path / "e"),
        ]
    )
    assert rc == 2
    assert "absent.ckpt" in capsys.readouterr().err
