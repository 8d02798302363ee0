"""stpm.* metadata parsing (runtime/metadata.py)."""

from __future__ import annotations

import json

import pytest
from conftest import fake_metadata

from stpm_edge.errors import BackendError, StpmEdgeError
from stpm_edge.runtime.metadata import ModelInfo, parse_metadata, read_engine_sidecar


def test_parse_all_keys() -> None:
    info = parse_metadata(fake_metadata(64, color_order="RGB"), input_name="image")
    assert isinstance(info, ModelInfo)
    assert info.input_size == (64, 64)
    assert info.input_format == "uint8_nhwc"
    assert info.color_order == "RGB"
    assert info.mean == pytest.approx((0.485, 0.456, 0.406))
    assert info.image_threshold == 0.5 and info.pixel_threshold == 0.5
    assert info.outputs == ("anomaly_map", "score", "score_normalized")
    assert info.calibration["score_max"] == 1.0
    assert info.raw["stpm.backbone"] == "fake"
    with pytest.raises(AttributeError):
        info.precision = "fp16"  # frozen


@pytest.mark.parametrize("key", ["stpm.format", "stpm.input_size", "stpm.image_threshold"])
def test_missing_required_key(key: str) -> None:
    props = fake_metadata(64)
    del props[key]
    with pytest.raises(
        BackendError, match=rf"(?s)missing stpm metadata {key}.*re-export it with stpm-export"
    ):
        parse_metadata(props, source="x.onnx")


def test_not_an_stpm_model() -> None:
    with pytest.raises(StpmEdgeError, match="(?s)stpm.format.*not written by stpm-export"):
        parse_metadata({"producer": "pytorch"}, source="other.onnx")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("stpm.input_size", "[256]", "a JSON list"),
        ("stpm.input_format", "float16_nchw", "uint8_nhwc or float32_nchw"),
        ("stpm.color_order", "YUV", "BGR or RGB"),
        ("stpm.mean", "[0.5, 0.5]", "3 numbers"),
        ("stpm.pixel_threshold", "high", "a number"),
    ],
)
def test_bad_values(key: str, value: str, match: str) -> None:
    props = fake_metadata(64)
    props[key] = value
    with pytest.raises(BackendError, match=match):
        parse_metadata(props)


def test_float_graph_needs_mean_std() -> None:
    props = fake_metadata(64, input_format="float32_nchw")
    del props["stpm.std"]
    with pytest.raises(BackendError, match="needs stpm.mean and stpm.std"):
        parse_metadata(props)


def test_engine_sidecar_nested_and_flat(tmp_path) -> None:
    engine = tmp_path / "model.engine"
    (tmp_path / "model.engine.json").write_text(
        json.dumps(
            {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "metadata": fake_metadata(32)}
        )
    )
    props, build = read_engine_sidecar(engine)
    assert parse_metadata(props).input_size == (32, 32)
    assert build == {"tensorrt_version": "10.3.0", "gpu_name": "Orin"}
    (tmp_path / "model.engine.json").write_text(json.dumps({"gpu_name": "x", **fake_metadata(16)}))
    props, build = read_engine_sidecar(engine)
    assert parse_metadata(props).input_size == (16, 16) and build == {"gpu_name": "x"}


def test_engine_sidecar_missing(tmp_path) -> None:
    with pytest.raises(BackendError, match=r"model.engine.json not found"):
        read_engine_sidecar(tmp_path / "model.engine")
