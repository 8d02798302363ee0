"""Build a TensorRT engine from the exported ONNX graph, on the device that will run it.

An engine is tied to the TensorRT version and the GPU, so it is built on the target (a Jetson
included) and never shipped between machines. The graph's mixed precision is explicit (fp16
backbones, float32 distance/product/score, Casts between), so the network is built *strongly
typed*: TensorRT 11 only knows strongly typed networks (its ``STRONGLY_TYPED`` flag is value 0,
deprecated and ignored, so no flag is passed), and TensorRT 10 gets the ``STRONGLY_TYPED``
creation flag (value 1). ``EXPLICIT_BATCH`` (10.x value 0) is never set: ignored since 10.0,
gone in 11. No FP16/INT8 builder flag is ever set (TensorRT 11 removed them).

Every TensorRT call that reports failure through its return value is checked (``None`` network,
config or engine bytes, ``-1`` profile index, ``None``/refused timing cache); a timing cache
from another TensorRT version or GPU is replaced by a fresh one with a warning.

Next to ``model.engine`` the builder writes ``model.engine.json`` (DESIGN.md §5): TensorRT
version, GPU, compute capability, CUDA driver, the batch profile, the ONNX's sha256 and its
``stpm.*`` metadata copied verbatim, because an engine file carries no metadata of its own.

``tensorrt`` and ``cuda-python`` are imported lazily, so this module imports everywhere.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from stpm_edge.errors import ExportError, OutputExistsError, note
from stpm_edge.runtime.metadata import props

logger = logging.getLogger(__name__)

__all__ = ["EngineInfo", "build_engine", "default_engine_name", "query_gpu", "sidecar_path"]

SIDECAR_FORMAT = "stpm-edge-engine/1"
_INSTALL_HINT = (
    "pip install 'stpm-edge[tensorrt]' on the target device "
    "(engines must be built on the device that runs them)"
)


@dataclass(frozen=True)
class EngineInfo:
    """What :func:`build_engine` produced; the same facts as the JSON sidecar.

    ``batch_profile`` is ``(min, opt, max)``; ``input_shapes`` maps every network input to its
    shape at the ``opt`` batch, e.g. ``{"image": (1, 256, 256, 3)}``.
    """

    engine_path: Path
    sidecar_path: Path
    tensorrt_version: str
    gpu_name: str | None
    compute_capability: str | None
    cuda_driver_version: str | None
    batch_profile: tuple[int, int, int]
    strongly_typed: bool
    onnx_sha256: str
    metadata: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    workspace_mb: int = 0
    timing_cache: Path | None = None
    build_seconds: float = 0.0

    def sidecar(self) -> dict[str, Any]:
        """The JSON-ready dict written to ``<engine>.json``."""
        return {
            "format": SIDECAR_FORMAT,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "cuda_driver_version": self.cuda_driver_version,
            "batch_profile": list(self.batch_profile),
            "strongly_typed": self.strongly_typed,
            "onnx_sha256": self.onnx_sha256,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "workspace_mb": self.workspace_mb,
            "build_seconds": round(self.build_seconds, 3),
            "metadata": dict(self.metadata),
        }

    def as_dict(self) -> dict[str, Any]:
        """All fields, paths as strings (for logs and CLI ``--json`` output)."""
        out = asdict(self)
        for key in ("engine_path", "sidecar_path", "timing_cache"):
            out[key] = None if out[key] is None else str(out[key])
        return out


def require_onnx_file(onnx_path: str | Path) -> Path:
    """``onnx_path`` as a Path, or an :class:`ExportError` saying how to get the file."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ExportError(
            note(
                f"ONNX file not found: {onnx_path}",
                "check the path, or export the graph first with stpm-export",
            )
        )
    return onnx_path


def read_onnx_graph(onnx_path: Path) -> Any:
    """The ``onnx.ModelProto`` of ``onnx_path`` without external weights (structure and
    metadata only), or an :class:`ExportError` when the file is not a readable ONNX model."""
    import onnx  # the export extra always has it; imported here to keep module import light

    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ExportError(
            note(f"cannot read ONNX file {onnx_path}: {exc}", "is it a complete .onnx file?")
        ) from None


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (the name the runtime looks for)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def default_engine_name(onnx_path: str | Path, trt_version: str, gpu_name: str | None) -> Path:
    """Engine path next to the ONNX that names what the engine is tied to.

    ``out/model.onnx``, ``"10.3.0"``, ``"Orin"`` -> ``out/model.trt10.3.orin.engine``. An unknown GPU
    (``None``) becomes ``gpu``.
    """
    major, minor = _parse_version(trt_version)
    slug = re.sub(r"[^a-z0-9]+", "-", (gpu_name or "").lower()).strip("-") or "gpu"
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.trt{major}.{minor}.{slug}.engine")


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None,
    batch: tuple[int, int, int] = (1, 1, 8),
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    strongly_typed: bool = True,
    force: bool = False,
    trt_module: ModuleType | Any | None = None,
) -> EngineInfo:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and build a serialized engine.

    Args:
        onnx_path: the stpm-edge graph (DESIGN.md §5): input ``image`` uint8 ``(N, H, W, 3)`` or
            float32 ``(N, 3, H, W)`` with a dynamic batch axis; H and W are taken from the graph.
        engine_path: where to write the engine; ``None`` picks :func:`default_engine_name`.
            The sidecar goes to ``<engine_path>.json``.
        batch: the optimisation profile's batch sizes ``(min, opt, max)``, applied to every
            input whose leading axis is dynamic.
        workspace_mb: limit of the builder's WORKSPACE memory pool, in MiB.
        timing_cache: a timing-cache file to read (if it exists) and update after the build, so
            rebuilds on the same device take seconds instead of minutes.
        strongly_typed: build a strongly typed network (precision from the graph's own types).
            Always true on TensorRT 11, where weak typing no longer exists.
        force: overwrite an existing engine / sidecar.
        trt_module: the ``tensorrt`` module to use; tests pass a test double. Default: import it.

    Returns:
        An :class:`EngineInfo` describing the engine and its sidecar.

    Raises:
        ExportError: TensorRT missing or too old, no GPU, parser errors, build failure.
        OutputExistsError: the engine or sidecar exists and ``force`` is false.
    """
    onnx_path = require_onnx_file(onnx_path)
    batch = _check_batch(batch)
    if workspace_mb <= 0:
        raise ExportError(
            note(f"workspace_mb must be positive, got {workspace_mb}", "e.g. 1024 (1 GiB)")
        )
    if engine_path is not None:  # fail before the slow import when we already know the answer
        _refuse_overwrite(Path(engine_path), force)

    trt = trt_module if trt_module is not None else _import_tensorrt()
    trt_version = str(getattr(trt, "__version__", "0.0"))
    version = _parse_version(trt_version)
    if version[0] < 10:
        raise ExportError(
            f"TensorRT {trt_version} is too old: stpm-edge needs TensorRT >= 10 "
            f"(strongly typed networks); {_INSTALL_HINT}"
        )
    gpu = query_gpu()
    if engine_path is None:
        engine_path = default_engine_name(onnx_path, trt_version, gpu["gpu_name"])
        _refuse_overwrite(engine_path, force)
    engine_path = Path(engine_path)
    metadata, onnx_sha256 = _read_onnx_facts(onnx_path)

    started = time.perf_counter()
    trt_logger = _make_trt_logger(trt)
    builder = _create_builder(trt, trt_logger)
    flags, typed = _network_flags(trt, version, strongly_typed)
    network = _require(builder.create_network(flags), "create_network", trt_logger, flags)
    _parse_onnx(trt, network, trt_logger, onnx_path)

    config = _require(builder.create_builder_config(), "create_builder_config", trt_logger)
    input_shapes = _add_profile(builder, config, network, batch)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None and not _load_timing_cache(config, cache_path):
        cache_path = None  # not even a fresh cache could be set: build without one

    logger.info(
        "building TensorRT %s engine from %s (batch %s, workspace %d MiB); this takes minutes",
        trt_version,
        onnx_path,
        list(batch),
        workspace_mb,
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(_build_failed_message(onnx_path, trt_logger.errors))
    build_seconds = time.perf_counter() - started

    info = EngineInfo(
        engine_path=engine_path,
        sidecar_path=sidecar_path(engine_path),
        tensorrt_version=trt_version,
        gpu_name=gpu["gpu_name"],
        compute_capability=gpu["compute_capability"],
        cuda_driver_version=gpu["cuda_driver_version"],
        batch_profile=batch,
        strongly_typed=typed,
        onnx_sha256=onnx_sha256,
        metadata=metadata,
        input_shapes=input_shapes,
        workspace_mb=int(workspace_mb),
        timing_cache=cache_path,
        build_seconds=build_seconds,
    )
    _atomic_write(engine_path, memoryview(serialized))
    _atomic_write(info.sidecar_path, (json.dumps(info.sidecar(), indent=2) + "\n").encode())
    if cache_path is not None:
        _save_timing_cache(config, cache_path)
    logger.info("wrote %s and %s in %.1f s", engine_path, info.sidecar_path, build_seconds)
    return info


# --------------------------------------------------------------------------------------------
# Imports and device facts
# --------------------------------------------------------------------------------------------


def _import_tensorrt() -> ModuleType:
    """Import ``tensorrt`` or raise a one-line ExportError saying how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        if getattr(exc, "name", None) == "tensorrt":
            raise ExportError(f"TensorRT is not installed: {_INSTALL_HINT}") from None
        raise ExportError(f"TensorRT failed to import ({exc}): {_INSTALL_HINT}") from None
    except OSError as exc:  # the wheel is there but libnvinfer / CUDA libraries are not
        raise ExportError(
            f"TensorRT failed to load its libraries ({exc}): {_INSTALL_HINT}"
        ) from None


def _import_cudart() -> Any | None:
    """cuda-python's runtime module (13.x layout first, then 12.x), or None."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except (ImportError, OSError):
            continue
    return None


def query_gpu(device: int = 0) -> dict[str, str | None]:
    """``gpu_name``, ``compute_capability`` ("8.7") and ``cuda_driver_version`` ("12.6").

    Read with cuda-python; every value is ``None`` when it is not installed or the query fails,
    because these facts only label the engine, they do not change it.
    """
    facts: dict[str, str | None] = {
        "gpu_name": None,
        "compute_capability": None,
        "cuda_driver_version": None,
    }
    cudart = _import_cudart()
    if cudart is None:
        logger.info("cuda-python is not installed: the sidecar will not name the GPU")
        return facts
    try:
        err, prop = cudart.cudaGetDeviceProperties(device)
        if _cuda_ok(cudart, err):
            name = prop.name
            if isinstance(name, bytes):
                name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
            facts["gpu_name"] = str(name).strip() or None
            facts["compute_capability"] = f"{int(prop.major)}.{int(prop.minor)}"
        err, version = cudart.cudaDriverGetVersion()
        if _cuda_ok(cudart, err) and int(version) > 0:
            facts["cuda_driver_version"] = f"{int(version) // 1000}.{int(version) % 1000 // 10}"
    except Exception as exc:  # a labelling failure must never stop a build
        logger.warning("could not query GPU properties with cuda-python: %s", exc)
    return facts


def _cuda_ok(cudart: Any, err: Any) -> bool:
    success = cudart.cudaError_t.cudaSuccess
    return err == success or int(err) == int(success)


def _parse_version(text: str) -> tuple[int, int]:
    """``"10.3.0.26"`` -> ``(10, 3)``; ``"11.0.0.post1"`` -> ``(11, 0)``."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(text))
    if match is None:
        raise ExportError(
            note(f"cannot read the TensorRT version {text!r}", "expected 'MAJOR.MINOR[.PATCH]'")
        )
    return int(match.group(1)), int(match.group(2))


# --------------------------------------------------------------------------------------------
# Builder steps
# --------------------------------------------------------------------------------------------


def _make_trt_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards to :mod:`logging` and keeps errors for our messages."""
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,  # TensorRT's INFO is a build diary: keep it out of -v
        severity.VERBOSE: logging.DEBUG,
    }

    class _LoggingBridge(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, sev: Any, msg: str) -> None:
            level = levels.get(sev, logging.INFO)
            if level >= logging.ERROR:
                self.errors.append(str(msg))
            logger.log(level, "[TensorRT] %s", msg)

    return _LoggingBridge()


def _create_builder(trt: Any, trt_logger: Any) -> Any:
    """``trt.Builder``; a failure here almost always means no usable CUDA device."""
    try:
        builder = trt.Builder(trt_logger)
    except Exception as exc:
        builder = None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    else:
        reason = "the builder is null"
    if builder is None:
        raise ExportError(
            f"TensorRT cannot create a builder ({reason}): no usable CUDA GPU? "
            "Build the engine on the device that runs it, with its NVIDIA driver loaded"
        )
    return builder


def _require(value: Any, call: str, trt_logger: Any, *args: Any) -> Any:
    """``value``, or an ExportError when a TensorRT factory call returned ``None``."""
    if value is not None:
        return value
    logged = "; ".join(trt_logger.errors[-3:]) or "no error was logged"
    shown = f"{call}({', '.join(repr(a) for a in args)})"
    raise ExportError(
        note(
            f"TensorRT's {shown} returned None: {logged}",
            "run with -v for TensorRT's log; check that this TensorRT matches the installed "
            "driver and CUDA, and that the GPU has free memory",
        )
    )


def _network_flags(trt: Any, version: tuple[int, int], strongly_typed: bool) -> tuple[int, bool]:
    """Network-creation flags for this TensorRT, and whether the network is strongly typed.

    Values from TensorRT's bindings (NetworkDefinitionCreationFlag): 10.x EXPLICIT_BATCH = 0
    (deprecated and ignored since 10.0: never set), STRONGLY_TYPED = 1; 11.x STRONGLY_TYPED = 0,
    deprecated and ignored because every network is strongly typed, and bit 1 means
    PREFER_JIT_PYTHON_PLUGINS. So 11.x gets no flag at all, and no bit is ever hard-coded.
    """
    creation = trt.NetworkDefinitionCreationFlag
    if version[0] >= 11:
        if not strongly_typed:
            logger.warning("TensorRT %d.%d has no weak typing: building strongly typed", *version)
        return 0, True
    flags = 0
    if strongly_typed:
        if not hasattr(creation, "STRONGLY_TYPED"):
            raise ExportError(
                f"TensorRT {version[0]}.{version[1]} has no strongly typed networks: "
                f"upgrade TensorRT; {_INSTALL_HINT}"
            )
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags, strongly_typed


def _parse_onnx(trt: Any, network: Any, trt_logger: Any, onnx_path: Path) -> None:
    """Parse the file (external weights next to it resolve) or raise with every parser error."""
    parser = trt.OnnxParser(network, trt_logger)
    if parser.parse_from_file(str(onnx_path)):
        return
    lines = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
    if not lines:
        lines = trt_logger.errors[-5:] or ["(the parser gave no details)"]
    raise ExportError(
        note(
            f"TensorRT's ONNX parser rejected {onnx_path} ({len(lines)} error(s)):\n    "
            + "\n    ".join(lines),
            "an op or dtype this TensorRT version cannot import; try a newer TensorRT, or "
            "re-export the graph and check it with ONNX Runtime first",
        )
    )


def _describe_parser_error(error: Any) -> str:
    """One line: node index, name and op type (when known), then TensorRT's description."""

    def ask(method: str) -> Any:
        fn = getattr(error, method, None)
        try:
            return fn() if callable(fn) else None
        except Exception:
            return None

    where = []
    node = ask("node")
    if node is not None and int(node) >= 0:
        where.append(f"node {int(node)}")
    name, op = ask("node_name"), ask("node_operator")
    if name:
        where.append(repr(str(name)))
    if op:
        where.append(f"({op})")
    code = ask("code")
    code_text = f" [{getattr(code, 'name', code)}]" if code is not None else ""
    prefix = " ".join(where) or "graph"
    return f"{prefix}{code_text}: {ask('desc') or error}"


def _add_profile(
    builder: Any, config: Any, network: Any, batch: tuple[int, int, int]
) -> dict[str, tuple[int, ...]]:
    """One optimisation profile: every input's batch axis spans ``batch``, other dims fixed.

    Returns ``{input name: shape at the opt batch}``.
    """
    profile = builder.create_optimization_profile()
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        name, dims = tensor.name, tuple(int(d) for d in tensor.shape)
        if not dims:
            raise ExportError(
                note(f"network input {name!r} is a scalar", "expected a batch axis first")
            )
        if any(d < 0 for d in dims[1:]):
            raise ExportError(
                note(
                    f"network input {name!r} has dynamic non-batch dims {list(dims)}",
                    "export the graph with a fixed H and W; only the batch axis may be dynamic",
                )
            )
        if dims[0] >= 0 and batch != (dims[0],) * 3:
            raise ExportError(
                note(
                    f"network input {name!r} has a fixed batch of {dims[0]} but the batch "
                    f"profile is {list(batch)}",
                    f"re-export with a dynamic batch axis, or pass --batch {dims[0]},{dims[0]},"
                    f"{dims[0]}",
                )
            )
        rest = dims[1:]
        profile.set_shape(name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
        shapes[name] = (batch[1], *rest)
        logger.debug("profile %s: batch %s x %s", name, list(batch), list(rest))
    if not shapes:
        raise ExportError(f"the parsed network has no inputs: {network!r}")
    index = config.add_optimization_profile(profile)
    if index is None or int(index) < 0:  # -1: TensorRT found the profile invalid
        raise ExportError(
            note(
                f"TensorRT rejected the optimisation profile {shapes} (batch {list(batch)}): "
                f"add_optimization_profile returned {index}",
                "check --batch-range MIN:OPT:MAX (1 <= MIN <= OPT <= MAX) and that the graph's "
                "inputs have a dynamic batch axis; run with -v for TensorRT's log",
            )
        )
    return shapes


def _try_timing_cache(config: Any, data: bytes) -> bool:
    """Create and install a timing cache from ``data``; False when TensorRT refuses it.

    ``create_timing_cache`` returns None or raises for a cache from another TensorRT version or
    GPU (Polygraphy guards it the same way), and ``set_timing_cache(..., ignore_mismatch=False)``
    returns False for one it cannot use.
    """
    try:
        cache = config.create_timing_cache(data)
    except Exception as exc:
        logger.debug("create_timing_cache raised: %s", exc)
        return False
    if cache is None:
        return False
    try:
        return bool(config.set_timing_cache(cache, ignore_mismatch=False))
    except Exception as exc:
        logger.debug("set_timing_cache raised: %s", exc)
        return False


def _load_timing_cache(config: Any, path: Path) -> bool:
    """Start from ``path``'s cache if it exists and matches this TensorRT/GPU, else a fresh one.

    Returns False when not even a fresh cache could be installed (the build then goes without,
    and ``path`` is left alone).
    """
    data = path.read_bytes() if path.is_file() else b""
    if _try_timing_cache(config, data):
        if data:
            logger.info("using timing cache %s (%d bytes)", path, len(data))
        return True
    if data:
        # From another TensorRT version or GPU: start fresh; it is replaced after the build.
        logger.warning(
            "timing cache %s does not match this TensorRT/GPU: starting a fresh one", path
        )
        if _try_timing_cache(config, b""):
            return True
    logger.warning("TensorRT would not create a timing cache: building without %s", path)
    return False


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        logger.warning("the builder returned no timing cache: %s not updated", path)
        return
    _atomic_write(path, memoryview(cache.serialize()))
    logger.info("updated timing cache %s", path)


def _build_failed_message(onnx_path: Path, errors: list[str]) -> str:
    detail = "; ".join(errors[-3:]) if errors else "no error was logged"
    return note(
        f"TensorRT failed to build an engine from {onnx_path}: {detail}",
        "run with -v for TensorRT's log; common causes: --workspace-mb too small for the "
        "max batch, or an op unsupported in strongly typed mode on this TensorRT",
    )


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _check_batch(batch: Any) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(b) for b in batch)
    except (TypeError, ValueError):
        raise ExportError(
            note(f"batch must be (min, opt, max), got {batch!r}", "e.g. (1, 1, 8)")
        ) from None
    if not 1 <= lo <= opt <= hi:
        raise ExportError(
            note(f"batch profile {[lo, opt, hi]} is invalid", "need 1 <= min <= opt <= max")
        )
    return lo, opt, hi


def _refuse_overwrite(engine_path: Path, force: bool) -> None:
    if force:
        return
    for path in (engine_path, sidecar_path(engine_path)):
        if path.exists():
            raise OutputExistsError(
                note(f"{path} exists: nothing was overwritten", "pass --force to replace it")
            )


def _read_onnx_facts(onnx_path: Path) -> tuple[dict[str, str], str]:
    """The graph's ``stpm.*`` metadata_props (verbatim) and the file's sha256."""
    model = read_onnx_graph(onnx_path)
    metadata = {k: v for k, v in props(model).items() if k.startswith("stpm.")}
    if not metadata:
        logger.warning("%s has no stpm.* metadata: the runtime will lack thresholds", onnx_path)
    digest = hashlib.sha256()
    with onnx_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return metadata, digest.hexdigest()


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write through a temporary file in the same folder, so a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
