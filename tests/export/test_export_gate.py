"""stpm-export --int8 --gate: the accuracy gate on the real tiny trained model (demo test split)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from stpm_edge.export import int8_gate
from stpm_edge.export.cli import main
from stpm_edge.runtime.metadata import read_model_metadata


def _export(argv: list[str]) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(argv)
    return rc, stdout.getvalue() + stderr.getvalue()


def test_gate_needs_int8_and_category(best_ckpt, demo_data, tmp_path) -> None:
    rc, text = _export([str(best_ckpt), "-o", str(tmp_path / "m.onnx"), "--gate",
                        str(demo_data.root), "-q"])  # fmt: skip
    assert rc == 2 and "--gate checks an INT8 export" in text


@pytest.mark.parametrize("limit", [1.0, -1.0])
def test_gate_decides_whether_the_int8_file_is_written(
    best_ckpt, demo_data, tmp_path, monkeypatch, limit
) -> None:
    """Limits of +1 always pass and -1 always fail: what the CLI does with each verdict."""
    monkeypatch.setattr(int8_gate, "IMAGE_AUROC_TOLERANCE", limit)
    monkeypatch.setattr(int8_gate, "PIXEL_AUROC_TOLERANCE", limit)
    out = tmp_path / "int8.onnx"
    argv = [str(best_ckpt), "-o", str(out), "--int8", "--calib", str(demo_data.train_good),
            "--gate", str(demo_data.root), "--gate-category", demo_data.category, "-q"]  # fmt: skip
    rc, text = _export(argv)
    if limit > 0:
        assert rc == 0 and out.is_file(), text
        record = json.loads(read_model_metadata(out)["stpm.int8_gate"])  # the file carries it
        assert record["passed"] and record["category"] == demo_data.category
    else:
        assert rc == 2 and not out.exists()
        assert "fails the accuracy gate" in text and "image AUROC" in text and "loss" in text
