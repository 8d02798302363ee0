"""stpm_edge.quality_parity: a recipe folder's checkpoints exported and scored by the runtime,
against the PyTorch evaluation. Real export and inference of the session's tiny checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stpm_edge.cli.evaluate import main as eval_main
from stpm_edge.errors import DataError, StpmEdgeError
from stpm_edge.quality_parity import data_root, export_parity


@pytest.fixture(scope="module")
def recipe(demo_data, best_ckpt: Path, tmp_path_factory) -> Path:
    """A recipe folder as `quality colour` leaves it: checkpoints and evaluations, the benchmark
    in the source folder named by derived_from."""
    root = tmp_path_factory.mktemp("parity")
    source, derived = root / "source", root / "derived"
    (source / "data").mkdir(parents=True)
    (source / "data" / "seed0").symlink_to(demo_data.root)
    folder = derived / "seed0" / demo_data.category
    (folder / "train").mkdir(parents=True)
    shutil.copy(best_ckpt, folder / "train" / "best.ckpt")
    (derived / "recipe.json").write_text(json.dumps({"derived_from": str(source)}))
    where = ["--data", str(demo_data.root), "--category", demo_data.category, "-q"]
    assert (
        eval_main([str(folder / "train" / "best.ckpt"), *where, "--out", str(folder / "eval")]) == 0
    )
    return derived


def test_fp32_and_fp16_graphs_score_like_pytorch(recipe: Path) -> None:
    result = export_parity(recipe, ("fp32", "fp16"))
    (row,) = result["rows"]
    assert row["category"] == "brick" and row["seed"] == 0 and row["images"] == 12
    # the FP32 graph is the PyTorch model: the same scores up to float rounding
    assert abs(row["fp32"]["image_change"]) <= 1e-3
    assert abs(row["fp32"]["pixel_change"]) <= 1e-3
    assert abs(row["fp16"]["image_change"]) <= 0.05
    assert (recipe / "seed0" / "brick" / "export" / "fp16.onnx").exists()
    assert json.loads((recipe / "parity.json").read_text())["worst"]["fp32"] == pytest.approx(
        abs(row["fp32"]["image_change"])
    )
    assert "| 0 | brick |" in (recipe / "parity.md").read_text()


def test_exported_graphs_are_reused_and_errors_name_the_fix(recipe: Path, tmp_path: Path) -> None:
    calls = []
    export_parity(recipe, ("fp32",), export=lambda argv: calls.append(argv) or 0)
    assert calls == []  # fp32.onnx exists from the test above or is exported now
    with pytest.raises(StpmEdgeError, match="stpm-export failed"):  # the fake export fails
        export_parity(recipe, ("int8_openvino",), export=lambda argv: calls.append(argv) or 1)
    (argv,) = calls
    assert argv[1:3] == ["-o", str(recipe / "seed0" / "brick" / "export" / "int8_openvino.onnx")]
    assert argv[4:7] == ["--int8", "--target", "openvino"]
    with pytest.raises(DataError, match="unknown precision"):
        export_parity(recipe, ("int4",))
    with pytest.raises(DataError, match="quality run"):
        data_root(tmp_path, "seed0")
