"""Write a Triton Inference Server model repository for the exported graph (the scale-out path).

Layout (Triton's model-repository convention)::

    <repo_dir>/<model_name>/config.pbtxt
    <repo_dir>/<model_name>/1/model.onnx      platform "onnxruntime_onnx"
                         or 1/model.plan      platform "tensorrt_plan" (a TensorRT engine)

``config.pbtxt`` is derived from the ONNX graph's real I/O, so it cannot drift from the model:
with ``max_batch_size > 0`` Triton owns the leading batch axis, so ``dims`` leave it out (the
ONNX batch axis must be dynamic). A batch-only tensor such as ``score`` ``(N,)`` has no dims left,
which Triton rejects; Triton's documented form for it is ``dims: [ 1 ]`` with
``reshape: { shape: [ ] }`` (clients see ``(N, 1)``, the model sees ``(N,)``).
The graph's ``stpm.*`` metadata travels as string ``parameters`` so clients can read the
thresholds from the model config.

With ``tensorrt_accelerator`` the ONNX model is served by ONNX Runtime's TensorRT execution
provider inside Triton (Triton's onnxruntime backend, "ONNX Runtime with TensorRT optimization"):
``optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt"
parameters {...} } ] } }`` with ``precision_mode``, ``max_workspace_size_bytes``,
``trt_engine_cache_enable/path``, ``trt_timing_cache_enable/path`` and
``trt_profile_{min,opt,max}_shapes`` (batch 1..max_batch_size, the rest of each shape from the
graph), so a new batch size does not rebuild the engine. ``precision_mode`` stays ``"FP32"``:
``"FP16"`` maps to ``trt_fp16_enable``, which turns the provider's strongly typed build (the
graph's own fp16/fp32 mix) into a weakly typed one. The engine is then built on the Triton host by
the container's own TensorRT. A ``.plan`` (``engine_path``) instead must be built with exactly
the TensorRT version of the Triton container that serves it, on that GPU model.

The text is generated with Triton's own protobuf schema (``tritonclient``'s ``model_config_pb2``)
when it is installed, else by a small emitter here; both produce the same message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stpm_edge.errors import ConfigError, ExportError, OutputExistsError, note
from stpm_edge.runtime.metadata import props

logger = logging.getLogger(__name__)

__all__ = [
    "TritonModelSpec",
    "read_model_spec",
    "render_config",
    "tensorrt_accelerator_parameters",
    "write_triton_repository",
]

KINDS = ("KIND_GPU", "KIND_CPU", "KIND_AUTO")
DEFAULT_TRT_CACHE = "/tmp/stpm_trt_cache"  # inside the container; mount a volume to keep engines
PLAN_NOTE = (
    "a TensorRT plan only loads in the TensorRT version and GPU model it was built with: build it "
    "inside the Triton container that will serve it (same image, same GPU), e.g. with its trtexec"
)
# ONNX TensorProto element-type name -> Triton DataType name.
_ONNX_TO_TRITON = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FLOAT16": "TYPE_FP16",
    "FLOAT": "TYPE_FP32",
    "DOUBLE": "TYPE_FP64",
    "BFLOAT16": "TYPE_BF16",
    "STRING": "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton sees it.

    ``dims`` exclude the batch axis (-1 = dynamic); ``batch_only`` marks an ONNX ``(N,)`` tensor,
    written as ``dims: [1]`` plus an empty ``reshape``.
    """

    name: str
    data_type: str
    dims: tuple[int, ...]
    batch_only: bool = False


@dataclass
class TritonModelSpec:
    """Everything ``config.pbtxt`` says, independent of how the text is produced."""

    name: str
    platform: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    instance_count: int = 1
    kind: str = "KIND_GPU"
    parameters: dict[str, str] = field(default_factory=dict)
    # parameters of the "tensorrt" gpu_execution_accelerator; None = no accelerator
    tensorrt_accelerator: dict[str, str] | None = None


def write_triton_repository(
    repo_dir: str | Path,
    onnx_path: str | Path,
    model_name: str = "stpm",
    engine_path: str | Path | None = None,
    max_batch_size: int = 8,
    preferred_batch_sizes: tuple[int, ...] = (4, 8),
    max_queue_delay_us: int = 2000,
    instance_count: int = 1,
    kind: str = "KIND_GPU",
    force: bool = False,
    tensorrt_accelerator: bool = False,
    trt_cache_path: str | None = None,
    trt_workspace_mb: int = 1024,
) -> Path:
    """Write ``repo_dir/<model_name>/`` with ``config.pbtxt`` and version ``1``.

    Args:
        repo_dir: the Triton model repository (created if missing; other models are untouched).
        onnx_path: the exported stpm-edge graph; its I/O and ``stpm.*`` metadata define the config.
            Copied to ``1/model.onnx`` unless ``engine_path`` is given.
        model_name: the model's folder and ``name`` in the config.
        engine_path: a TensorRT engine built from ``onnx_path`` (on the Triton host's GPU and
            TensorRT version); copied to ``1/model.plan`` with platform ``tensorrt_plan``.
        max_batch_size: largest batch Triton forms (> 0; the engine's profile max must cover it).
        preferred_batch_sizes: batch sizes the dynamic batcher aims for (each <= max_batch_size).
        max_queue_delay_us: how long a request may wait for a batch to fill, in microseconds.
        instance_count: model instances per device.
        kind: ``KIND_GPU``, ``KIND_CPU`` or ``KIND_AUTO`` (a TensorRT plan needs a GPU).
        force: replace an existing ``<model_name>`` folder (the whole folder, all versions).
        tensorrt_accelerator: serve the ONNX through ONNX Runtime's TensorRT provider (see the
            module docstring); not with ``engine_path`` (a plan already is TensorRT).
        trt_cache_path: engine/timing cache folder *inside the Triton container*; default
            ``/tmp/stpm_trt_cache/<model_name>`` (mount a volume there to keep engines across
            restarts).
        trt_workspace_mb: ``max_workspace_size_bytes`` of the accelerator, in MiB.

    Returns:
        The model folder ``repo_dir/<model_name>``.

    Raises:
        ExportError: the ONNX is unreadable or its batch axis is not dynamic; the engine does
            not come from this ONNX.
        ConfigError: an argument is out of range.
        OutputExistsError: the model folder exists and ``force`` is false.
    """
    onnx_path = Path(onnx_path)
    engine = Path(engine_path) if engine_path is not None else None
    _check_args(
        model_name,
        max_batch_size,
        preferred_batch_sizes,
        max_queue_delay_us,
        instance_count,
        kind,
        engine,
    )
    model_dir = Path(repo_dir) / model_name
    if model_dir.exists() and not force:
        raise OutputExistsError(
            note(f"{model_dir} exists: nothing was overwritten", "pass --force to replace it")
        )
    spec = read_model_spec(onnx_path, model_name, max_batch_size)
    spec.platform = "tensorrt_plan" if engine is not None else "onnxruntime_onnx"
    spec.preferred_batch_sizes = tuple(int(b) for b in preferred_batch_sizes)
    spec.max_queue_delay_us = int(max_queue_delay_us)
    spec.instance_count = int(instance_count)
    spec.kind = kind
    if tensorrt_accelerator:
        if engine is not None or kind == "KIND_CPU":
            raise ConfigError(
                note(
                    "the TensorRT accelerator is for the ONNX model on a GPU instance",
                    "drop it for a .plan (already TensorRT) or use kind KIND_GPU",
                )
            )
        cache = trt_cache_path or f"{DEFAULT_TRT_CACHE}/{model_name}"
        spec.tensorrt_accelerator = tensorrt_accelerator_parameters(spec, cache, trt_workspace_mb)
    if engine is not None:
        _check_engine(engine, onnx_path, max_batch_size)
        logger.warning("%s: %s", engine, PLAN_NOTE)
    text = render_config(spec)

    # Assemble next to the destination, then swap it in: a failure leaves the old model intact.
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_name}.", dir=model_dir.parent))
    try:
        version_dir = staging / "1"
        version_dir.mkdir()
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        if engine is not None:
            shutil.copyfile(engine, version_dir / "model.plan")
        else:
            shutil.copyfile(onnx_path, version_dir / "model.onnx")
            _copy_external_data(onnx_path, version_dir)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "wrote Triton model %s (%s, max_batch_size %d)", model_dir, spec.platform, max_batch_size
    )
    return model_dir


def read_model_spec(onnx_path: str | Path, model_name: str, max_batch_size: int) -> TritonModelSpec:
    """The Triton view of ``onnx_path``'s I/O and ``stpm.*`` metadata (platform left empty).

    Raises ExportError if a tensor has no shape or a fixed (non-dynamic) batch axis.
    """
    from .trt_build import read_onnx_graph, require_onnx_file

    onnx_path = require_onnx_file(onnx_path)
    model = read_onnx_graph(onnx_path)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [_tensor_spec(v, onnx_path) for v in graph.input if v.name not in initializers]
    outputs = [_tensor_spec(v, onnx_path) for v in graph.output]
    metadata = {k: v for k, v in props(model).items() if k.startswith("stpm.")}
    if not metadata:
        logger.warning("%s has no stpm.* metadata: the config will carry no thresholds", onnx_path)
    return TritonModelSpec(
        name=model_name,
        platform="",
        max_batch_size=int(max_batch_size),
        inputs=inputs,
        outputs=outputs,
        parameters=metadata,
    )


def tensorrt_accelerator_parameters(
    spec: TritonModelSpec, cache_path: str, workspace_mb: int = 1024
) -> dict[str, str]:
    """Parameters of the ``"tensorrt"`` gpu_execution_accelerator for ``spec``'s ONNX model.

    Keys from Triton's onnxruntime backend README (parameter mapping to the TensorRT EP). The
    profile covers batches 1..max_batch_size, opt = the largest preferred batch size; it is left
    out when a non-batch axis is dynamic (no single profile fits).
    """
    if int(workspace_mb) <= 0:
        raise ConfigError(
            note(f"trt_workspace_mb must be positive, got {workspace_mb}", "e.g. 1024")
        )
    params = {
        "precision_mode": "FP32",  # "FP16" = trt_fp16_enable: weak typing (module docstring)
        "max_workspace_size_bytes": str(int(workspace_mb) << 20),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache_path,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache_path,
    }
    if all(d > 0 for t in spec.inputs for d in t.dims):
        opt = max(spec.preferred_batch_sizes, default=spec.max_batch_size)
        for key, batch in (("min", 1), ("opt", opt), ("max", spec.max_batch_size)):
            params[f"trt_profile_{key}_shapes"] = ",".join(
                f"{t.name}:{'x'.join(str(d) for d in (batch, *t.dims))}" for t in spec.inputs
            )
    else:
        logger.warning("dynamic non-batch input axes: no TensorRT profile in the Triton config")
    return params


def render_config(spec: TritonModelSpec) -> str:
    """``config.pbtxt`` text for ``spec``: via Triton's protobuf schema if installed, else ours."""
    pb2 = _load_model_config_pb2()
    if pb2 is None:
        return _render_text(spec)
    from google.protobuf import text_format

    return text_format.MessageToString(_to_message(spec, pb2), as_utf8=True)


# --------------------------------------------------------------------------------------------
# ONNX -> tensor specs
# --------------------------------------------------------------------------------------------


def _tensor_spec(value_info: Any, onnx_path: Path) -> TensorSpec:
    import onnx

    tensor_type = value_info.type.tensor_type
    name = value_info.name
    elem = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    if elem not in _ONNX_TO_TRITON:
        raise ExportError(
            note(f"{onnx_path}: tensor {name!r} has type {elem}", "Triton cannot serve it")
        )
    if not tensor_type.HasField("shape") or not tensor_type.shape.dim:
        raise ExportError(
            note(
                f"{onnx_path}: tensor {name!r} has no batch axis (shape unknown or scalar)",
                "re-export the graph; every input and output needs a leading dynamic batch axis",
            )
        )
    batch, *rest = tensor_type.shape.dim
    if batch.HasField("dim_value"):
        raise ExportError(
            note(
                f"{onnx_path}: tensor {name!r} has a fixed batch axis of {batch.dim_value}",
                "Triton batching needs a dynamic batch axis: re-export without a static batch "
                "(stpm-export's default is dynamic)",
            )
        )
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in rest)
    if not dims:  # (N,): Triton's documented form for a batch-only tensor
        return TensorSpec(name, _ONNX_TO_TRITON[elem], (1,), batch_only=True)
    return TensorSpec(name, _ONNX_TO_TRITON[elem], dims)


# --------------------------------------------------------------------------------------------
# Rendering: Triton's protobuf, or a hand-written emitter that parses to the same message
# --------------------------------------------------------------------------------------------


def _load_model_config_pb2() -> Any | None:
    """``tritonclient``'s ``model_config_pb2`` (a dev dependency), or None when absent."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    return model_config_pb2


def _to_message(spec: TritonModelSpec, pb2: Any) -> Any:
    config = pb2.ModelConfig(
        name=spec.name, platform=spec.platform, max_batch_size=spec.max_batch_size
    )
    for tensors, add in ((spec.inputs, config.input.add), (spec.outputs, config.output.add)):
        for t in tensors:
            msg = add(name=t.name, data_type=pb2.DataType.Value(t.data_type), dims=list(t.dims))
            if t.batch_only:
                msg.reshape.SetInParent()  # reshape { shape: [] }
    batching = config.dynamic_batching
    batching.SetInParent()  # present even when empty: dynamic batching on, Triton's defaults
    batching.preferred_batch_size.extend(spec.preferred_batch_sizes)
    batching.max_queue_delay_microseconds = spec.max_queue_delay_us
    config.instance_group.add(
        count=spec.instance_count, kind=pb2.ModelInstanceGroup.Kind.Value(spec.kind)
    )
    if spec.tensorrt_accelerator is not None:
        accelerators = config.optimization.execution_accelerators
        accelerators.gpu_execution_accelerator.add(
            name="tensorrt", parameters=spec.tensorrt_accelerator
        )
    for key, value in spec.parameters.items():
        config.parameters[key].string_value = value
    return config


def _render_text(spec: TritonModelSpec) -> str:
    """The same config in the style of Triton's documentation."""
    lines = [
        f"name: {_quote(spec.name)}",
        f"platform: {_quote(spec.platform)}",
        f"max_batch_size: {spec.max_batch_size}",
    ]
    for section, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        blocks = []
        for t in tensors:
            block = [
                "  {",
                f"    name: {_quote(t.name)}",
                f"    data_type: {t.data_type}",
                f"    dims: [ {', '.join(str(d) for d in t.dims)} ]",
            ]
            if t.batch_only:
                block.append("    reshape: { shape: [ ] }")
            blocks.append("\n".join([*block, "  }"]))
        lines.append(f"{section} [\n" + ",\n".join(blocks) + "\n]")
    batching = ["dynamic_batching {"]
    if spec.preferred_batch_sizes:
        sizes = ", ".join(str(b) for b in spec.preferred_batch_sizes)
        batching.append(f"  preferred_batch_size: [ {sizes} ]")
    if spec.max_queue_delay_us:
        batching.append(f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}")
    lines.append("\n".join([*batching, "}"]))
    lines.append(
        f"instance_group [\n  {{\n    count: {spec.instance_count}\n    kind: {spec.kind}\n  }}\n]"
    )
    if spec.tensorrt_accelerator is not None:
        params = "".join(
            f"        parameters {{ key: {_quote(k)} value: {_quote(v)} }}\n"
            for k, v in spec.tensorrt_accelerator.items()
        )
        lines.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator [\n"
            f'      {{\n        name: "tensorrt"\n{params}      }}\n    ]\n  }}\n}}'
        )
    for key, value in spec.parameters.items():
        lines.append(
            f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}"
        )
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; UTF-8 kept as is)."""
    escaped = []
    for ch in text:
        if ch in ('"', "\\"):
            escaped.append("\\" + ch)
        elif ch == "\n":
            escaped.append("\\n")
        elif ch == "\r":
            escaped.append("\\r")
        elif ch == "\t":
            escaped.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\{ord(ch):03o}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


# --------------------------------------------------------------------------------------------
# Checks and files
# --------------------------------------------------------------------------------------------


def _check_args(
    model_name: str,
    max_batch_size: int,
    preferred: tuple[int, ...],
    delay_us: int,
    instance_count: int,
    kind: str,
    engine: Path | None,
) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", model_name or ""):
        raise ConfigError(
            note(f"invalid Triton model name {model_name!r}", "use letters, digits, '_', '-', '.'")
        )
    if int(max_batch_size) < 1:
        raise ConfigError(
            note(f"max_batch_size must be >= 1, got {max_batch_size}", "e.g. 8 (dynamic batching)")
        )
    bad = [b for b in preferred if not 1 <= int(b) <= int(max_batch_size)]
    if bad:
        raise ConfigError(
            note(
                f"preferred batch sizes {bad} are outside 1..max_batch_size ({max_batch_size})",
                "lower them or raise --max-batch-size",
            )
        )
    if int(delay_us) < 0:
        raise ConfigError(note(f"max_queue_delay_us must be >= 0, got {delay_us}", "e.g. 2000"))
    if int(instance_count) < 1:
        raise ConfigError(note(f"instance_count must be >= 1, got {instance_count}", "e.g. 1"))
    if kind not in KINDS:
        raise ConfigError(note(f"unknown instance kind {kind!r}", f"one of {', '.join(KINDS)}"))
    if engine is not None:
        if kind == "KIND_CPU":
            raise ConfigError(
                note("a TensorRT plan cannot run on KIND_CPU", "use KIND_GPU, or serve the ONNX")
            )
        if not engine.is_file():
            raise ExportError(
                note(
                    f"engine not found: {engine}",
                    "check the path; build the engine on the Triton host with stpm-export",
                )
            )


def _check_engine(engine: Path, onnx_path: Path, max_batch_size: int) -> None:
    """With the engine's sidecar: same ONNX, and a batch profile that covers max_batch_size."""
    sidecar = engine.with_name(engine.name + ".json")
    if not sidecar.is_file():
        logger.warning("%s has no sidecar: cannot check it was built from %s", engine, onnx_path)
        return
    try:
        facts = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(
            note(f"cannot read engine sidecar {sidecar}: {exc}", "rebuild the engine")
        ) from None
    want = facts.get("onnx_sha256")
    if want and want != hashlib.sha256(onnx_path.read_bytes()).hexdigest():
        raise ExportError(
            note(
                f"{engine} was not built from {onnx_path} (sha256 differs, per {sidecar.name})",
                "pass the ONNX the engine was built from, or rebuild the engine from this one",
            )
        )
    profile = facts.get("batch_profile") or []
    if len(profile) == 3 and int(profile[2]) < max_batch_size:
        raise ConfigError(
            note(
                f"{engine} accepts batches up to {profile[2]}, below max_batch_size "
                f"{max_batch_size}",
                f"pass --max-batch-size {profile[2]} or rebuild with a larger max batch",
            )
        )


def _copy_external_data(onnx_path: Path, version_dir: Path) -> None:
    """Copy the external-data files a large ONNX refers to (relative paths only)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            if "location" in entry:
                locations.add(entry["location"])
    for location in sorted(locations):
        rel = PurePosixPath(location)
        if rel.is_absolute() or ".." in rel.parts:
            raise ExportError(
                note(
                    f"{onnx_path} refers to external data {location!r}",
                    "expected a file "
                    "next to the model; re-save it with onnx.save(..., location=<name>)",
                )
            )
        target = version_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path.parent / rel, target)
