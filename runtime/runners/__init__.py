"""Inference backends behind one :class:`Runner` interface, and the factory that picks one.

``create_runner("model.onnx")`` chooses the best available backend; ``.engine``/``.plan`` files
always run on native TensorRT, OpenVINO IR ``.xml`` files on OpenVINO. Backends import their heavy
dependencies only when loaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from stpm_edge.errors import BackendError, note

from .base import Runner, check_feeds, format_shape
from .openvino import OpenVinoRunner
from .ort import CPU_EP, CUDA_EP, TRT_EP, OrtRunner, available_providers
from .trt import TrtRunner

__all__ = [
    "BACKENDS",
    "OpenVinoRunner",
    "OrtRunner",
    "Runner",
    "TrtRunner",
    "available_backends",
    "check_feeds",
    "create_runner",
    "format_shape",
]

BACKENDS = ("tensorrt", "ort-trt", "ort-cuda", "openvino", "ort-cpu")
ENGINE_SUFFIXES = (".engine", ".plan")
OPENVINO_SUFFIXES = (".xml",)
_ORT_BACKENDS = {
    "ort-trt": [TRT_EP, CUDA_EP, CPU_EP],
    "ort-cuda": [CUDA_EP, CPU_EP],
    "ort-cpu": [CPU_EP],
}
# What "auto" runs an .onnx file on, best first (GPU providers first: they are what a GPU box
# installed onnxruntime-gpu for). OpenVINO comes after ONNX Runtime's CPU provider because it was
# not measured faster on the default (fp32) graph: efficientnet_lite0 256x256, batch 1, 2 threads
# on the 2-core EPYC VM (benchmarks/reports/cpu-epyc-2core/openvino_int8): ORT 77.1 img/s vs
# OpenVINO f32 50.1 (an earlier run of the same command: 60.4 vs 58.4). It does win on the INT8
# graph (96.5 vs 80.6 img/s; 107.7 vs 89.0), but "auto" does not read the graph's precision:
# `stpm-bench --recommend` measures and names the fastest backend for a given file.
AUTO_ONNX_ORDER = ("ort-trt", "ort-cuda", "ort-cpu", "openvino")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Backends usable here, best-first: a subset of :data:`BACKENDS`, in that order.

    ``tensorrt`` means the tensorrt and cuda-python packages are importable (a GPU is only
    checked when an engine loads); ``openvino`` that the openvino package is.
    """
    found = []
    if _has_module("tensorrt") and _has_module("cuda"):
        found.append("tensorrt")
    providers = available_providers()
    for backend, wanted in _ORT_BACKENDS.items():
        if wanted[0] in providers:
            found.append(backend)
    if _has_module("openvino"):
        found.insert(len(found) - ("ort-cpu" in found), "openvino")
    return found


def _unavailable(backend: str, available: list[str], fix: str) -> BackendError:
    return BackendError(
        note(f"backend {backend!r} is not available here", f"available: {available}; {fix}")
    )


def _require_own_backend(path: Path, backend: str, own: str, kind: str, onnx_use: str = "") -> None:
    """A file only one backend reads (an engine, an IR): refuse any other explicit backend."""
    if backend not in ("auto", own):
        tail = f" {onnx_use}" if onnx_use else ""
        raise BackendError(
            note(
                f"{path.name} is {kind}; backend {backend!r} cannot run it",
                f"use backend {own}, or pass the model.onnx{tail}",
            )
        )


def create_runner(
    path: str | os.PathLike,
    backend: str = "auto",
    threads: int | None = None,
    **kwargs: Any,
) -> Runner:
    """Build (but do not load) the runner for ``path``.

    Args:
        path: ``model.onnx``, a TensorRT ``model.engine``/``model.plan`` or an OpenVINO IR
            ``model.xml``.
        backend: ``"auto"`` or one of :data:`BACKENDS`. ``auto`` runs engines on ``tensorrt``, IR
            on ``openvino``, and ONNX on the first available of :data:`AUTO_ONNX_ORDER`.
        threads: CPU threads for ONNX Runtime / OpenVINO (``None`` = its default); ignored by
            TensorRT.
        **kwargs: passed to :class:`OrtRunner`, :class:`OpenVinoRunner` or :class:`TrtRunner`.

    Raises:
        BackendError: unknown/unavailable backend, or a backend that cannot run this file type.
    """
    path = Path(path)
    if backend != "auto" and backend not in BACKENDS:
        raise BackendError(
            note(f"unknown backend {backend!r}", f"choose auto or one of {list(BACKENDS)}")
        )
    available = available_backends()
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        _require_own_backend(
            path, backend, "tensorrt", "a TensorRT engine", "to run with ONNX Runtime"
        )
        if "tensorrt" not in available:
            raise _unavailable("tensorrt", available, "install TensorRT and cuda-python")
        return TrtRunner(path, **kwargs)
    if suffix in OPENVINO_SUFFIXES:
        _require_own_backend(path, backend, "openvino", "an OpenVINO IR")
        backend = "openvino"
    elif suffix != ".onnx":
        raise BackendError(
            note(
                f"cannot tell the model type of {path.name}",
                f"expected .onnx, .xml (OpenVINO IR) or one of {list(ENGINE_SUFFIXES)}",
            )
        )
    if backend == "tensorrt":
        raise BackendError(
            note(
                f"backend 'tensorrt' runs engines, not {path.name}",
                "build one on this device (stpm-export ... --engine, or trtexec --onnx=... "
                "--saveEngine=model.engine --stronglyTyped), or use backend ort-trt",
            )
        )
    strict = backend != "auto"  # auto may fall back when a provider fails to initialise
    if backend == "auto":
        # OpenVINO runner options differ from ONNX Runtime's: ORT-specific kwargs keep ORT.
        order = AUTO_ONNX_ORDER if not kwargs else tuple(_ORT_BACKENDS)
        candidates = [b for b in order if b in available]
        if not candidates:
            raise _unavailable("auto", available, "pip install onnxruntime (or onnxruntime-gpu)")
        backend = candidates[0]
    elif backend == "openvino" and backend not in available:
        raise _unavailable(backend, available, "pip install 'stpm-edge[openvino]'")
    elif backend not in available:
        raise _unavailable(backend, available, "install onnxruntime-gpu for CUDA/TensorRT")
    if backend == "openvino":
        return OpenVinoRunner(path, threads=threads, **kwargs)
    kwargs.setdefault("strict", strict)
    return OrtRunner(path, providers=_ORT_BACKENDS[backend], threads=threads, **kwargs)
