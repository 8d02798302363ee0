"""Fixtures for the runtime tests: a tiny stpm-contract ONNX **test double**.

``make_fake_stpm_onnx`` builds a graph that honours the exported-graph contract (DESIGN.md §5:
input, outputs, metadata_props) with trivial maths instead of STPM: the anomaly map is the pixel
brightness, so a bright frame is NG and a dark one OK. It is not a trained model.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

IMAGE_THRESHOLD = 0.5
PIXEL_THRESHOLD = 0.5
REPO = Path(__file__).resolve().parents[2]


def fake_metadata(
    size: int, input_format: str = "uint8_nhwc", color_order: str = "BGR"
) -> dict[str, str]:
    """All stpm.* keys, values as the exporter writes them (strings, JSON for structures)."""
    return {
        "stpm.format": "stpm-edge-onnx/1",
        "stpm.version": "0.1.0",
        "stpm.backbone": "fake",
        "stpm.layers": json.dumps(["layer1", "layer2", "layer3"]),
        "stpm.input_size": json.dumps([size, size]),
        "stpm.input_format": input_format,
        "stpm.color_order": color_order,
        "stpm.mean": json.dumps([0.485, 0.456, 0.406]),
        "stpm.std": json.dumps([0.229, 0.224, 0.225]),
        "stpm.calibration": json.dumps(
            {
                "image_threshold": IMAGE_THRESHOLD,
                "pixel_threshold": PIXEL_THRESHOLD,
                "score_min": 0.0,
                "score_max": 1.0,
                "source": "val_good",
            }
        ),
        "stpm.image_threshold": json.dumps(IMAGE_THRESHOLD),
        "stpm.pixel_threshold": json.dumps(PIXEL_THRESHOLD),
        "stpm.precision": "fp32",
        "stpm.layout": "separate",
        "stpm.blur_sigma": "0.0",
        "stpm.score_reduction": "max",
        "stpm.checkpoint_sha256": "0" * 64,
        "stpm.outputs": json.dumps(["anomaly_map", "score", "score_normalized"]),
    }


def make_fake_stpm_onnx(
    path: Path,
    size: int = 64,
    input_format: str = "uint8_nhwc",
    color_order: str = "BGR",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the test-double graph: anomaly_map = mean over channels / 255 (N,1,H,W),
    score = max of the map (N,), score_normalized = clip(score - thr + 0.5, 0, 1)."""
    nodes = []
    if input_format == "uint8_nhwc":
        inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])
        nodes += [
            helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f"], ["m"], axes=[3], keepdims=1),
            helper.make_node("Transpose", ["m"], ["mt"], perm=[0, 3, 1, 2]),
            helper.make_node("Div", ["mt", "c255"], ["anomaly_map"]),
        ]
    else:
        inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])
        nodes += [
            helper.make_node("ReduceMean", ["image"], ["m"], axes=[1], keepdims=1),
            helper.make_node("Identity", ["m"], ["anomaly_map"]),
        ]
    nodes += [
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["score", "shift"], ["s0"]),
        helper.make_node("Clip", ["s0", "zero", "one"], ["score_normalized"]),
    ]
    inits = [
        helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("shift", TensorProto.FLOAT, [], [IMAGE_THRESHOLD - 0.5]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    outs = [
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, size, size]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("score_normalized", TensorProto.FLOAT, ["N"]),
    ]
    graph = helper.make_graph(nodes, "fake_stpm", [inp], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    props = fake_metadata(size, input_format, color_order) if metadata is None else metadata
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fake_onnx(tmp_path: Path) -> Path:
    """A 64x64 uint8 NHWC fake stpm graph in tmp_path."""
    return make_fake_stpm_onnx(tmp_path / "model.onnx", size=64)


@pytest.fixture
def make_fake_onnx():
    """The builder itself, for tests that need variants."""
    return make_fake_stpm_onnx


def log_records(path: Path) -> list[dict]:
    """Every line of a JSONL log, parsed (a line that does not parse fails the test)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def frames_and_events(path: Path) -> tuple[list[dict], list[dict]]:
    """A camera log split into its frame lines and its event lines."""
    records = log_records(path)
    return [r for r in records if "frame" in r], [r for r in records if "event" in r]


def bright_frame(h: int = 120, w: int = 160) -> np.ndarray:
    return np.full((h, w, 3), 250, np.uint8)


def dark_frame(h: int = 120, w: int = 160) -> np.ndarray:
    return np.full((h, w, 3), 10, np.uint8)


@contextlib.contextmanager
def camera_process(*args: str) -> Iterator[subprocess.Popen]:
    """``python -m stpm_edge.runtime.camera ARGS`` from this checkout, stderr piped; killed on
    the way out when a failing test left it running."""
    argv = [sys.executable, "-m", "stpm_edge.runtime.camera", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def sigterm(proc: subprocess.Popen, timeout: float = 20) -> str:
    """Stop ``proc`` as a service manager does (SIGTERM), wait, and return its stderr."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=timeout)[1]
