"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

onnxruntime is imported when the runner loads, never at module import, so the package imports on a
device that only has TensorRT.

TensorRT provider options (ONNX Runtime's TensorRT EP documentation; explicit profiles from ORT
PR #15546, timing cache from #14767):

- ``trt_profile_min_shapes`` / ``trt_profile_opt_shapes`` / ``trt_profile_max_shapes``
  (``"image:1x256x256x3"``, one ``name:dims`` per dynamic input, comma separated) fix the engine's
  batch range, so a new batch size inside it does not rebuild the engine (minutes on a Jetson).
  The range is the caller's ``trt_batch_range``, else the graph's ``stpm.batch_range`` metadata
  (JSON ``[min, opt, max]``), else :data:`DEFAULT_TRT_BATCH_RANGE` ``(1, 1, 8)``.
- With ``trt_cache_dir``: ``trt_engine_cache_enable/path`` and ``trt_timing_cache_enable/path``
  in ``<trt_cache_dir>/<key>``, where the key (:func:`trt_cache_key`) names the ONNX Runtime and
  TensorRT versions and the GPU. ONNX Runtime already puts the GPU's compute capability
  (``..._sm87.engine``) into its cache file names, but not the TensorRT or ORT version, so an
  upgrade would otherwise meet stale engines.
- ``trt_fp16_enable`` is never set by default: with TensorRT >= 9 the TensorRT EP creates the
  network with ``kSTRONGLY_TYPED`` (the precision the graph states, our explicit fp16/fp32 mix)
  *unless* ``trt_fp16_enable``/``trt_int8_enable`` is set (``network_flags |= fp16_enable_ ||
  int8_enable_ ? 0 : 1U << kSTRONGLY_TYPED`` in ``tensorrt_execution_provider.cc``, as shown in
  ORT PR #24298); the flag switches back to weak typing, where TensorRT may run the float32
  normalisation in fp16. ``trt_fp16=True`` opts in, for fp16 graphs only. (Older ORT builds a
  weakly typed network either way; the fp16 graph then runs at TensorRT's choice of precision.)
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import BackendError, note
from stpm_edge.runtime.metadata import props

from .base import Runner, model_file

logger = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PREFERENCE = (TRT_EP, CUDA_EP, CPU_EP)
_SHORT = {"tensorrt": TRT_EP, "trt": TRT_EP, "cuda": CUDA_EP, "cpu": CPU_EP}
_OPT_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "disable": "ORT_DISABLE_ALL",
}
_ORT_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

ModelSource = str | os.PathLike | bytes | Callable[[], Any]

DEFAULT_TRT_BATCH_RANGE = (1, 1, 8)
BATCH_RANGE_KEY = "stpm.batch_range"
_TRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-libs")
_NVINFER_LIBS = ("libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so", "nvinfer_10.dll")


def import_onnxruntime() -> Any:
    """Import onnxruntime or raise a :class:`BackendError` saying what to install."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(
            note(
                "onnxruntime is not installed",
                "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA/TensorRT); on Jetson use "
                "the Jetson build of onnxruntime-gpu",
            )
        ) from exc
    return onnxruntime


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, best-first among those we use."""
    try:
        ort = import_onnxruntime()
    except BackendError:
        return []
    offered = ort.get_available_providers()
    return [p for p in PREFERENCE if p in offered]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def tensorrt_version() -> str | None:
    """The TensorRT version ONNX Runtime will load, without importing ``tensorrt``.

    From the pip distribution's metadata, else from ``getInferLibVersion()`` of the libnvinfer
    the dynamic loader finds (JetPack installs TensorRT as system packages, not pip). ``None``
    when neither is found.
    """
    for dist in _TRT_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    for name in _NVINFER_LIBS:
        try:
            lib = ctypes.CDLL(name)
            code = int(lib.getInferLibVersion())
        except (OSError, AttributeError):
            continue
        # TensorRT >= 10 encodes MAJOR*10000 + MINOR*100 + PATCH (NvInferVersion.h)
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return None


def gpu_name(device: int = 0) -> str | None:
    """The CUDA device's name via cuda-python, or ``None`` when it cannot be asked."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            cudart = importlib.import_module(module)
            err, prop = cudart.cudaGetDeviceProperties(device)
        except Exception:
            continue
        if int(err) == 0:
            name = prop.name
            if isinstance(name, bytes):
                name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
            return str(name).strip() or None
    return None


def trt_cache_key(ort_version: str, trt_version: str | None, gpu: str | None) -> str:
    """Folder name for the TensorRT EP's caches: ``ort1.20.1_trt10.3.0_nvidia-jetson-orin``.

    Unknown parts read ``unknown``/``gpu``: the folder is then shared, and ONNX Runtime's own
    compute-capability suffix is what keeps engines apart.
    """
    return f"ort{_slug(ort_version)}_trt{_slug(trt_version or 'unknown')}_{_slug(gpu or 'gpu')}"


def read_model_facts(
    model: str | bytes,
) -> tuple[dict[str, tuple[int | None, ...]], dict[str, str]]:
    """``({input name: shape, None = dynamic}, metadata_props)`` of an ONNX path or bytes.

    Read with ``onnx`` (no weights loaded) when installed, else with a CPU ONNX Runtime session.
    """
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        if isinstance(model, bytes):
            proto = onnx.load_from_string(model)
        else:
            proto = onnx.load(model, load_external_data=False)
        inits = {t.name for t in proto.graph.initializer}
        inputs = {
            v.name: tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in v.type.tensor_type.shape.dim
            )
            for v in proto.graph.input
            if v.name not in inits
        }
        return inputs, props(proto)
    ort = import_onnxruntime()
    session = ort.InferenceSession(model, providers=[CPU_EP])
    inputs = {
        a.name: tuple(d if isinstance(d, int) and d > 0 else None for d in a.shape)
        for a in session.get_inputs()
    }
    return inputs, dict(session.get_modelmeta().custom_metadata_map)


def batch_range_from(
    metadata: dict[str, str], override: Sequence[int] | None
) -> tuple[int, int, int]:
    """The TensorRT profile's batch range: ``override``, else ``stpm.batch_range``, else default."""
    source = "trt_batch_range"
    value: Any = override
    if value is None and BATCH_RANGE_KEY in metadata:
        source = f"metadata {BATCH_RANGE_KEY}"
        try:
            value = json.loads(metadata[BATCH_RANGE_KEY])
        except ValueError:
            value = metadata[BATCH_RANGE_KEY]
    if value is None:
        return DEFAULT_TRT_BATCH_RANGE
    try:
        lo, opt, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        lo = opt = hi = 0
    if not 1 <= lo <= opt <= hi:
        raise BackendError(
            note(
                f"{source} {value!r} is not a batch range",
                "expected [MIN, OPT, MAX] with 1 <= MIN <= OPT <= MAX, e.g. [1, 1, 8]",
            )
        )
    return lo, opt, hi


def trt_profile_options(
    inputs: dict[str, tuple[int | None, ...]], batch: tuple[int, int, int]
) -> dict[str, str]:
    """``trt_profile_{min,opt,max}_shapes`` for every input whose batch axis is dynamic.

    Empty when no input is dynamic, or when a non-batch axis is dynamic too (no single profile
    fits; ONNX Runtime then builds from the shapes it sees, with a warning here).
    """
    dynamic = {n: s for n, s in inputs.items() if s and s[0] is None}
    if not dynamic:
        return {}
    if any(d is None for s in dynamic.values() for d in s[1:]):
        logger.warning("input shapes %s have dynamic non-batch axes: no TensorRT profile", dynamic)
        return {}
    options = {}
    for key, size in zip(("min", "opt", "max"), batch):
        options[f"trt_profile_{key}_shapes"] = ",".join(
            f"{n}:{'x'.join(str(d) for d in (size, *s[1:]))}" for n, s in dynamic.items()
        )
    return options


class OrtRunner(Runner):
    """Run an ONNX model with ONNX Runtime.

    Args:
        model: path to ``model.onnx``, its bytes, a ready ``InferenceSession`` (not owned), or a
            loader callable returning a path, bytes or session.
        providers: execution providers best-first, full names or ``"tensorrt"``/``"cuda"``/
            ``"cpu"``. ``None`` picks every available one of TensorRT, CUDA, CPU (in that order)
            and lets ONNX Runtime fall back; an explicit list must have its first provider active
            after loading, else :class:`BackendError`.
        threads: ``intra_op_num_threads``; ``None`` keeps ONNX Runtime's default.
        graph_optimization: ``"all"``, ``"extended"``, ``"basic"`` or ``"disable"``.
        io_binding: bind inputs and outputs with ``IOBinding`` (outputs stay on the device until
            one copy at the end; worthwhile on CUDA/TensorRT).
        profile_prefix: enable ONNX Runtime profiling, writing ``<prefix>_<date>.json``; call
            :meth:`end_profiling` to finish the file (its path is then :attr:`profile_path`).
        trt_cache_dir: root of the TensorRT provider's engine and timing caches; they go to the
            sub-folder :func:`trt_cache_key` names (ORT/TensorRT versions, GPU). Only used when
            given: the runner never writes a cache into the working directory on its own.
        trt_batch_range: ``(min, opt, max)`` batch of the TensorRT profile; ``None`` = the
            graph's ``stpm.batch_range`` metadata, else ``(1, 1, 8)``.
        trt_fp16: set ``trt_fp16_enable`` (fp16 graphs only). Off by default: it turns the
            TensorRT EP's strongly typed build (the graph's own precision) into a weakly typed
            one that may run the float32 parts in fp16.
        strict: raise when the first provider fails to initialise (ONNX Runtime would silently
            fall back). ``None`` = strict exactly when ``providers`` is given.
    """

    def __init__(
        self,
        model: ModelSource | Any,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        graph_optimization: str = "all",
        io_binding: bool = False,
        profile_prefix: str | os.PathLike | None = None,
        trt_cache_dir: str | os.PathLike | None = None,
        strict: bool | None = None,
        trt_batch_range: Sequence[int] | None = None,
        trt_fp16: bool = False,
    ) -> None:
        if graph_optimization not in _OPT_LEVELS:
            raise BackendError(
                note(
                    f"unknown graph_optimization {graph_optimization!r}",
                    f"choose one of {list(_OPT_LEVELS)}",
                )
            )
        if threads is not None and threads < 1:
            raise BackendError(note(f"threads must be >= 1, got {threads}", "None = ORT default"))
        self._model = model
        self._requested = None if providers is None else [_SHORT.get(p, p) for p in providers]
        first = (self._requested or [CPU_EP])[0]
        super().__init__(f"onnxruntime[{first}]")
        self.threads = threads
        self.graph_optimization = graph_optimization
        self.io_binding = io_binding
        self.profile_prefix = profile_prefix
        self.trt_cache_dir = trt_cache_dir
        self.trt_batch_range = trt_batch_range
        self.trt_fp16 = trt_fp16
        self.trt_options: dict[str, str] = {}  # what the TensorRT provider was given (logs, doctor)
        self.strict = (providers is not None) if strict is None else strict
        self.profile_path: str | None = None
        self.session: Any = None
        self._outputs: list[str] = []
        self._device = "cpu"

    # -- helpers ---------------------------------------------------------------------------------
    def _trt_options(self, ort: Any, model: Any) -> dict[str, str]:
        """The TensorRT provider's options for ``model`` (see the module docstring)."""
        inputs, metadata = read_model_facts(model)
        batch = batch_range_from(metadata, self.trt_batch_range)
        options = trt_profile_options(inputs, batch)
        if self.trt_cache_dir is not None:
            key = trt_cache_key(
                getattr(ort, "__version__", "unknown"), tensorrt_version(), gpu_name()
            )
            folder = Path(self.trt_cache_dir) / key
            folder.mkdir(parents=True, exist_ok=True)
            options.update(
                trt_engine_cache_enable="True",
                trt_engine_cache_path=str(folder),
                trt_timing_cache_enable="True",
                trt_timing_cache_path=str(folder),
            )
        if self.trt_fp16:
            precision = metadata.get("stpm.precision", "unknown")
            if precision != "fp16":
                raise BackendError(
                    note(
                        f"trt_fp16 asked for a {precision} graph",
                        "trt_fp16_enable only makes sense for an fp16 export (stpm-export --fp16); "
                        "without it TensorRT builds the precision the graph states",
                    )
                )
            logger.warning("trt_fp16_enable: TensorRT may run the graph's float32 parts in fp16")
            options["trt_fp16_enable"] = "True"
        logger.info("TensorRT provider options: %s", options)
        return options

    def _providers(self, ort: Any, model: Any = None) -> list[str | tuple[str, dict[str, str]]]:
        offered = ort.get_available_providers()
        if self._requested is None:
            chosen = [p for p in PREFERENCE if p in offered]
        else:
            unavailable = [p for p in self._requested if p not in offered]
            if unavailable:
                raise BackendError(
                    note(
                        f"ONNX Runtime provider(s) {unavailable} requested but not available",
                        f"available: {offered}; install onnxruntime-gpu for CUDA/TensorRT",
                    )
                )
            chosen = list(self._requested)
        result: list[str | tuple[str, dict[str, str]]] = []
        for p in chosen:
            if p == TRT_EP and isinstance(model, (str, bytes)):
                self.trt_options = self._trt_options(ort, model)
                result.append((p, dict(self.trt_options)))
            else:
                result.append(p)
        return result

    def _session_options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPT_LEVELS[self.graph_optimization]
        )
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        if self.profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(self.profile_prefix)
        options.log_severity_level = 3  # errors only: provider fallback is reported by us
        return options

    def _resolve_model(self) -> Any:
        model = self._model
        if callable(model) and not hasattr(model, "run"):
            model = model()
        if isinstance(model, (str, os.PathLike)):
            return str(model_file(model))
        return model

    # -- backend hooks ---------------------------------------------------------------------------
    def _load(self) -> None:
        ort = import_onnxruntime()
        model = self._resolve_model()
        if hasattr(model, "run") and hasattr(model, "get_inputs"):
            self.session = model  # a ready session: used, not owned (nothing to free anyway)
        else:
            providers = self._providers(ort, model)
            try:
                self.session = ort.InferenceSession(
                    model, sess_options=self._session_options(ort), providers=providers
                )
            except Exception as exc:  # ORT raises its own exception types
                raise BackendError(
                    note(
                        f"ONNX Runtime could not load the model: {exc}",
                        "check the file is a valid ONNX",
                    )
                ) from exc
            active = self.session.get_providers()
            if self.strict and self._requested is not None and self._requested[0] not in active:
                raise BackendError(
                    note(
                        f"ONNX Runtime provider {self._requested[0]} failed to initialise",
                        f"active providers: {active}; check the CUDA/TensorRT libraries",
                    )
                )
            wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
            if wanted not in active:
                logger.warning("%s unavailable at session creation, using %s", wanted, active[0])
        active = self.session.get_providers()
        self.name = f"onnxruntime[{active[0]}]"
        self._device = "cuda" if active[0] in (TRT_EP, CUDA_EP) else "cpu"
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.io_binding:
            values = self.session.run(self._outputs, feeds)
            return dict(zip(self._outputs, values, strict=True))
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._outputs:
            binding.bind_output(name, self._device)
        self.session.run_with_iobinding(binding)
        return dict(zip(self._outputs, binding.copy_outputs_to_cpu(), strict=True))

    def _release(self) -> None:
        if (
            self.profile_prefix is not None
            and self.profile_path is None
            and self.session is not None
        ):
            self.end_profiling()
        self.session = None

    def _input_spec(self) -> dict[str, tuple[np.dtype, tuple[int | None, ...]]]:
        spec = {}
        for arg in self.session.get_inputs():
            if arg.type not in _ORT_TYPES:
                raise BackendError(
                    f"{self.name}: input {arg.name!r} has unsupported type {arg.type}"
                )
            shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
            spec[arg.name] = (np.dtype(_ORT_TYPES[arg.type]), shape)
        return spec

    def _output_names(self) -> list[str]:
        return list(self._outputs)

    def _metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    # -- profiling -------------------------------------------------------------------------------
    def end_profiling(self) -> str | None:
        """Stop profiling and return the JSON trace path (``None`` if profiling was off)."""
        if self.profile_prefix is None or self.session is None or self.profile_path:
            return self.profile_path
        self.profile_path = self.session.end_profiling()
        return self.profile_path
