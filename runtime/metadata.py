"""The ``stpm.*`` metadata of an exported model, parsed once into a typed :class:`ModelInfo`.

The exporter writes every value the runtime needs into the ONNX ``metadata_props`` (DESIGN.md §5):
all strings, structured values as JSON. A TensorRT engine carries the same dict in its
``model.engine.json`` sidecar. This is also the one place that reads those props: :func:`props`
(from a loaded proto) and :func:`read_model_metadata` (from a file, the only function here that
imports onnx). Nothing here imports onnxruntime or torch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stpm_edge.errors import BackendError, note

logger = logging.getLogger(__name__)

FORMAT = "stpm-edge-onnx/1"
INPUT_FORMATS = ("uint8_nhwc", "float32_nchw")
COLOR_ORDERS = ("BGR", "RGB")
DEFAULT_OUTPUTS = ("anomaly_map", "score", "score_normalized")
# Node-name prefix of everything inside the two networks of an exported graph (FusedSTPM's `pair`
# submodule): INT8 quantises only these nodes, profiles count them as the backbones.
BACKBONE_SCOPE = "/pair/"
REQUIRED_KEYS = (
    "stpm.format",
    "stpm.input_size",
    "stpm.input_format",
    "stpm.image_threshold",
    "stpm.pixel_threshold",
)
_REEXPORT = "this model was not written by stpm-export; re-export it with stpm-export"


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to feed an STPM graph and read its answer.

    Attributes:
        input_name: name of the graph input (``"image"``).
        input_format: ``"uint8_nhwc"`` (uint8 (N, H, W, 3)) or ``"float32_nchw"``
            (float32 (N, 3, H, W), normalised RGB).
        input_size: ``(H, W)`` of the graph input.
        color_order: ``"BGR"`` or ``"RGB"``, channel order of a uint8 input.
        mean, std: per-channel RGB statistics on the [0, 1] scale (used for float32 inputs);
            ``()`` when the graph does not carry them.
        image_threshold, pixel_threshold: calibrated thresholds in raw score units.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        layout: ``"separate"`` or ``"stacked"``.
        backbone: backbone tag the model was trained with.
        outputs: output names, in the graph's order.
        calibration: the §4 calibration dict (empty when absent).
        raw: every ``stpm.*`` prop as written (strings).
    """

    input_name: str
    input_format: str
    input_size: tuple[int, int]
    color_order: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_threshold: float
    pixel_threshold: float
    precision: str
    layout: str
    backbone: str
    outputs: tuple[str, ...]
    calibration: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    raw: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)


def _value(raw: str) -> Any:
    """Decode one prop: JSON when it parses, else the plain string (``BGR``, ``resnet18``)."""
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw


def _bad(key: str, raw: object, expected: str, source: str) -> BackendError:
    return BackendError(
        note(
            f"{source}: metadata key {key!r} has an invalid value {raw!r}",
            f"expected {expected}; {_REEXPORT}",
        )
    )


def _triple(props: Mapping[str, str], key: str, default: tuple, source: str) -> tuple:
    if key not in props:
        return default
    value = _value(props[key])
    if not (isinstance(value, list) and len(value) == 3):
        raise _bad(key, props[key], "a JSON list of 3 numbers", source)
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise _bad(key, props[key], "a JSON list of 3 numbers", source) from None


def _number(props: Mapping[str, str], key: str, source: str) -> float:
    try:
        return float(_value(props[key]))
    except (TypeError, ValueError):
        raise _bad(key, props[key], "a number", source) from None


def parse_metadata(
    props: Mapping[str, str], input_name: str = "image", source: str = "model"
) -> ModelInfo:
    """Parse the ``stpm.*`` props into a :class:`ModelInfo`.

    Args:
        props: metadata_props of the ONNX graph (or the engine sidecar's metadata), all strings.
        input_name: name of the graph's input tensor.
        source: file name used in error messages.

    Raises:
        BackendError: a required key is missing or a value is malformed.
    """
    props = {str(k): str(v) for k, v in props.items()}
    missing = [k for k in REQUIRED_KEYS if k not in props]
    if missing:
        raise BackendError(
            note(
                f"{source}: missing stpm metadata {', '.join(missing)}",
                f"{_REEXPORT} (DESIGN.md §5 lists the keys)",
            )
        )
    fmt = str(_value(props["stpm.format"]))
    if not fmt.startswith("stpm-edge-onnx/"):
        raise _bad("stpm.format", fmt, repr(FORMAT), source)
    if fmt != FORMAT:
        logger.warning("%s: metadata format %s, this runtime reads %s", source, fmt, FORMAT)

    size = _value(props["stpm.input_size"])
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise _bad("stpm.input_size", props["stpm.input_size"], "a JSON list [H, W]", source)
    input_format = str(_value(props["stpm.input_format"]))
    if input_format not in INPUT_FORMATS:
        raise _bad("stpm.input_format", input_format, " or ".join(INPUT_FORMATS), source)
    color_order = str(_value(props.get("stpm.color_order", "BGR"))).upper()
    if color_order not in COLOR_ORDERS:
        raise _bad("stpm.color_order", color_order, " or ".join(COLOR_ORDERS), source)
    if input_format == "float32_nchw" and not {"stpm.mean", "stpm.std"} <= props.keys():
        raise BackendError(
            note(
                f"{source}: a float32_nchw graph needs stpm.mean and stpm.std",
                _REEXPORT,
            )
        )
    outputs = _value(props.get("stpm.outputs", json.dumps(list(DEFAULT_OUTPUTS))))
    if not (isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)):
        raise _bad("stpm.outputs", props.get("stpm.outputs"), "a JSON list of names", source)
    calibration = _value(props.get("stpm.calibration", "{}"))
    return ModelInfo(
        input_name=input_name,
        input_format=input_format,
        input_size=(int(size[0]), int(size[1])),
        color_order=color_order,
        # no fallback constants: the graph's own values, or () where it has none (a uint8
        # graph normalises inside; a float32_nchw graph must carry them, checked above)
        mean=_triple(props, "stpm.mean", (), source),
        std=_triple(props, "stpm.std", (), source),
        image_threshold=_number(props, "stpm.image_threshold", source),
        pixel_threshold=_number(props, "stpm.pixel_threshold", source),
        precision=str(_value(props.get("stpm.precision", "fp32"))),
        layout=str(_value(props.get("stpm.layout", "separate"))),
        backbone=str(_value(props.get("stpm.backbone", "unknown"))),
        outputs=tuple(outputs),
        calibration=calibration if isinstance(calibration, dict) else {},
        raw={k: v for k, v in props.items() if k.startswith("stpm.")},
    )


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (the builder writes it next to the engine)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def props(model: Any) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX ``ModelProto`` (or anything with that field) as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """The props of an .onnx file (its weights left on disk: no session, no external data) or of a
    TensorRT engine's ``model.engine.json`` sidecar. Needs onnx for .onnx files."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        return props(onnx.load(str(path), load_external_data=False))
    return read_engine_sidecar(path)[0]


def read_engine_sidecar(engine_path: str | Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Read the ``model.engine.json`` sidecar of a TensorRT engine.

    The sidecar holds build facts (TensorRT version, GPU, compute capability) and the ONNX's
    ``stpm.*`` dict, either under a ``"metadata"`` key or at the top level.

    Returns:
        ``(stpm_props, build_info)``: the ``stpm.*`` strings and every other top-level key.

    Raises:
        BackendError: the sidecar is missing or is not a JSON object.
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise BackendError(
            note(
                f"engine metadata {path} not found",
                "an engine file has no metadata props: stpm-export --engine writes "
                f"{path.name} next to the engine; copy both files to the device",
            )
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(
            note(f"cannot read {path}: {exc}", "re-run stpm-export --engine")
        ) from exc
    if not isinstance(data, dict):
        raise BackendError(note(f"{path} is not a JSON object", "re-run stpm-export --engine"))
    nested = data.get("metadata")
    props = nested if isinstance(nested, dict) else data
    stpm = {
        k: v if isinstance(v, str) else json.dumps(v)
        for k, v in props.items()
        if k.startswith("stpm.")
    }
    build = {k: v for k, v in data.items() if k != "metadata" and not k.startswith("stpm.")}
    return stpm, build
