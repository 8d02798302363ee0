"""Fixtures shared by the export tests: the cpu INT8 graph of the session's trained run."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import onnx
import pytest

from stpm_edge.export.cli import main as export_main


@pytest.fixture(scope="session")
def int8_path(best_ckpt: Path, demo_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("int8") / "model_int8.onnx"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = export_main(
            [str(best_ckpt), "-o", str(path), "--int8", "--calib", str(demo_data.train_good), "-q"]
        )
    assert rc == 0, err.getvalue()
    return path


@pytest.fixture(scope="session")
def int8(int8_path: Path) -> onnx.ModelProto:
    return onnx.load(int8_path)
