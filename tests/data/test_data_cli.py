"""Tests for the stpm-data CLI: exit codes and readable errors."""

from __future__ import annotations

import pytest

from stpm_edge.cli.data import main

DEMO = ["--categories", "grass", "--n-train", "2", "--n-test-good", "1", "--n-test-defect", "4"]


def test_demo_then_check(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["demo", "--out", str(out), *DEMO, "--image-size", "64"]) == 0
    assert "demo dataset written" in capsys.readouterr().out
    assert main(["check", "--data", str(out), "--category", "grass"]) == 0
    printed = capsys.readouterr().out
    assert "OK" in printed
    assert "train/good" in printed and "test/scratch" in printed


def test_check_plain_folder(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["demo", "--out", str(out), *DEMO, "--image-size", "64"]) == 0
    capsys.readouterr()
    assert main(["check", "--data", str(out / "grass" / "train" / "good")]) == 0
    assert "train/good" in capsys.readouterr().out


def test_bad_data_returns_2(tmp_path, capsys):
    assert main(["check", "--data", str(tmp_path / "missing"), "--category", "grass"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and "Traceback" not in err


def test_demo_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert main(["demo", "--out", str(tmp_path), *DEMO]) == 2
    assert "--force" in capsys.readouterr().err


def test_help_lists_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    assert "default: 72" in capsys.readouterr().out
