"""The INT8 accuracy gate on the tiny demo test split, with brightness test-double graphs."""

from __future__ import annotations

import onnx
import pytest
from onnx import numpy_helper

from stpm_edge.errors import ExportError
from stpm_edge.export.int8_gate import (
    IMAGE_AUROC_TOLERANCE,
    GateResult,
    accuracy_gate,
    require_gate,
)


def _negated(src, dst):
    """The same test double with its map negated: pixel AUROC becomes 1 - AUROC."""
    model = onnx.load(str(src))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "c255":
            value = -numpy_helper.to_array(init)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, "c255"))
    onnx.save(model, str(dst))
    return dst


def test_gate_passes_equal_graphs_and_fails_a_lossy_one(
    demo_data, make_fake_onnx, tmp_path
) -> None:
    good = make_fake_onnx(tmp_path / "fp32.onnx", size=64)
    bad = _negated(good, tmp_path / "int8.onnx")
    same = accuracy_gate(good, good, demo_data.root, demo_data.category)
    assert same.images == len(demo_data.test_images())
    assert same.image_loss == 0.0 and same.pixel_loss == 0.0 and same.passed
    require_gate(same)  # no exception
    flipped = accuracy_gate(good, bad, demo_data.root, demo_data.category)
    assert flipped.int8_pixel_auroc == pytest.approx(1 - flipped.fp32_pixel_auroc)
    assert flipped.image_loss != 0.0
    # orient the pair so the "int8" graph is the worse one, then the gate must fail
    fp32, int8 = (good, bad) if flipped.image_loss > 0 else (bad, good)
    result = accuracy_gate(fp32, int8, demo_data.root, demo_data.category)
    assert result.image_loss > IMAGE_AUROC_TOLERANCE and not result.passed
    with pytest.raises(ExportError, match=r"fails the accuracy gate.*loss \+"):
        require_gate(result)


def test_gate_limits() -> None:
    assert GateResult(10, 0.99, 0.986, 0.97, 0.969).passed
    assert not GateResult(10, 0.99, 0.984, 0.97, 0.97).passed  # image loss 0.006
    assert not GateResult(10, 0.99, 0.99, 0.97, 0.9675).passed  # pixel loss 0.0025


def test_gate_needs_labelled_split(tmp_path, make_fake_onnx) -> None:
    import cv2
    import numpy as np

    root = tmp_path / "data" / "cat"
    for split in ("train", "test"):
        (root / split / "good").mkdir(parents=True)
        cv2.imwrite(str(root / split / "good" / "000.png"), np.zeros((64, 64, 3), np.uint8))
    model = make_fake_onnx(tmp_path / "m.onnx", size=64)
    with pytest.raises(ExportError, match="needs good and defective test images"):
        accuracy_gate(model, model, tmp_path / "data", "cat")
