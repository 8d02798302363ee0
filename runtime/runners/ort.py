"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

onnxruntime is imported when the runner loads, never at module import, so the package imports on a
device that only has TensorRT.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import BackendError, note

from .base import Runner

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
        trt_cache_dir: TensorRT provider engine cache directory. Only used when given: the runner
            never writes a cache into the working directory on its own.
        strict: raise when the first provider fails to initialise (ONNX Runtime would silently
            fall back). ``None`` = strict exactly when ``providers`` is given.

    Our graphs are explicitly typed (fp16 parts carry their own Casts), so ``trt_fp16_enable`` is
    never set: TensorRT must build the precision the graph states.
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
        self.strict = (providers is not None) if strict is None else strict
        self.profile_path: str | None = None
        self.session: Any = None
        self._outputs: list[str] = []
        self._device = "cpu"

    # -- helpers ---------------------------------------------------------------------------------
    def _providers(self, ort: Any) -> list[str | tuple[str, dict[str, str]]]:
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
            if p == TRT_EP and self.trt_cache_dir is not None:
                Path(self.trt_cache_dir).mkdir(parents=True, exist_ok=True)
                opts = {
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(self.trt_cache_dir),
                }
                result.append((p, opts))
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
            path = Path(model)
            if not path.is_file():
                raise BackendError(
                    note(f"model file {path} not found", "pass the model.onnx stpm-export wrote")
                )
            return str(path)
        return model

    # -- backend hooks ---------------------------------------------------------------------------
    def _load(self) -> None:
        ort = import_onnxruntime()
        model = self._resolve_model()
        if hasattr(model, "run") and hasattr(model, "get_inputs"):
            self.session = model  # a ready session: used, not owned (nothing to free anyway)
        else:
            providers = self._providers(ort)
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
