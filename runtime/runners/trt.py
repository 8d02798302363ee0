"""Native TensorRT 10/11 backend: name-based I/O, cuda-python buffers and stream.

**Unverified here**: the project has had no GPU or TensorRT so far. The glue (profile checks,
buffer reuse, dtype mapping, sidecar reading, CUDA-graph bookkeeping) is tested against the test
doubles in ``tests/fakes`` (the same ones the engine builder's tests use); the TensorRT/cuda-python
calls follow NVIDIA's documented API (``num_io_tensors``, ``get_tensor_name/mode/dtype/shape``,
``get_tensor_profile_shape``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``;
``cudaMalloc``/``cudaMallocHost``/``cudaMemcpyAsync``/``cudaStream*``/``cudaGraph*``).

Every return value that signals failure is checked: ``deserialize_cuda_engine`` and
``create_execution_context`` (``None``), ``set_input_shape``/``set_tensor_address``/
``execute_async_v3`` (``False``), and every cuda-python error code. A CUDA-graph capture always
ends (``cudaStreamEndCapture`` in ``finally``), so the stream never stays in capture mode; when
capture fails the runner warns once and keeps running with plain enqueues.

tensorrt and cuda-python are imported at load time only (or injected, for tests).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import BackendError, note

from ..metadata import read_engine_sidecar
from .base import Runner, format_shape

logger = logging.getLogger(__name__)

# TensorRT DataType names -> numpy (trt.nptype covers these too; a table keeps fakes simple and
# gives a clear error for types numpy lacks, e.g. BF16/FP8).
_TRT_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


def import_tensorrt() -> Any:
    """Import tensorrt or raise a :class:`BackendError` saying what to install."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(
            note(
                "tensorrt is not installed",
                "on Jetson it comes with JetPack; elsewhere pip install tensorrt cuda-python, "
                "or run model.onnx with backend ort-cuda / ort-cpu",
            )
        ) from exc
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (13.x) or ``cuda.cudart`` (12.x)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendError(
                note(
                    "cuda-python is not installed",
                    "pip install cuda-python (match your CUDA major)",
                )
            ) from exc
    return cudart


def trt_to_numpy_dtype(dtype: Any) -> np.dtype:
    """Map a ``tensorrt.DataType`` to numpy by its enum name."""
    name = getattr(dtype, "name", str(dtype)).rsplit(".", 1)[-1].upper()
    if name not in _TRT_DTYPES:
        raise BackendError(
            note(
                f"TensorRT tensor type {name} has no numpy equivalent",
                f"supported: {list(_TRT_DTYPES)}",
            )
        )
    return np.dtype(_TRT_DTYPES[name])


def engine_from_file(path: str | os.PathLike) -> Callable[[], bytes]:
    """A lazy loader: returns a callable that reads the serialised engine when called."""

    def load() -> bytes:
        p = Path(path)
        if not p.is_file():
            raise BackendError(
                note(
                    f"engine file {p} not found",
                    "build it on this device: stpm-export ... --engine, or trtexec --onnx=model.onnx "
                    "--saveEngine=model.engine --stronglyTyped",
                )
            )
        return p.read_bytes()

    return load


class _Buffer:
    """One tensor's pinned host and device memory, grown on demand and reused."""

    __slots__ = ("capacity", "device", "host")

    def __init__(self) -> None:
        self.capacity = 0
        self.device = 0
        self.host = 0


class TrtRunner(Runner):
    """Run a serialised TensorRT engine (TensorRT 10/11 name-based I/O). Unverified on hardware.

    Args:
        engine: path to ``model.engine``/``.plan`` (its ``.json`` sidecar supplies metadata),
            serialised bytes, a loader callable returning bytes or an engine (owned), or a ready
            ``ICudaEngine`` (not owned).
        metadata: ``stpm.*`` props, required when ``engine`` is not a path.
        cuda_graph: after the first run at a given shape, capture copy-in + execute + copy-out as
            a CUDA graph and replay it while the shape stays the same.
        trt_module, cudart_module: injected modules (tests); default imports them at load.
    """

    def __init__(
        self,
        engine: str | os.PathLike | bytes | Callable[[], Any] | Any,
        metadata: dict[str, str] | None = None,
        cuda_graph: bool = False,
        trt_module: Any = None,
        cudart_module: Any = None,
    ) -> None:
        super().__init__("tensorrt")
        self._source = engine
        self._props = dict(metadata) if metadata is not None else None
        self.build_info: dict[str, Any] = {}
        self.cuda_graph = cuda_graph
        self._trt = trt_module
        self._cudart = cudart_module
        self.engine: Any = None
        self.context: Any = None
        self._owns_engine = False
        self._runtime: Any = None  # must outlive the engine it deserialised
        self._stream: Any = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        self._buffers: dict[str, _Buffer] = {}
        self._graph: Any = None
        self._graph_exec: Any = None
        self._graph_shape: tuple | None = None
        self._last_shape: tuple | None = None
        self.allocations = 0  # how many times device buffers were (re)allocated; tests read it

    # -- cuda helpers ----------------------------------------------------------------------------
    def _cuda(self, result: Any, what: str) -> Any:
        """Unpack cuda-python's ``(err, *values)`` tuples; raise on a non-success code."""
        if not isinstance(result, tuple):
            result = (result,)
        err, values = result[0], result[1:]
        if err != self._cudart.cudaError_t.cudaSuccess:
            raise BackendError(
                note(f"tensorrt: {what} failed with {err}", "check the GPU and driver")
            )
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    # -- backend hooks ---------------------------------------------------------------------------
    def _load(self) -> None:
        trt = self._trt = self._trt or import_tensorrt()
        self._cudart = self._cudart or import_cudart()
        source = self._source
        if isinstance(source, (str, os.PathLike)):
            if self._props is None:
                self._props, self.build_info = read_engine_sidecar(source)
            source = engine_from_file(source)
        if callable(source) and not hasattr(source, "create_execution_context"):
            source = source()
            self._owns_engine = True
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            source = self._runtime.deserialize_cuda_engine(bytes(source))
            self._owns_engine = True
            if source is None:
                raise BackendError(self._deserialize_failed(trt))
        if self._props is None:
            raise BackendError(
                note(
                    "tensorrt: no stpm metadata",
                    "pass metadata= or load from a path with its .json sidecar",
                )
            )
        self.engine = source
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(
                note(
                    "tensorrt: create_execution_context returned None",
                    "usually not enough free GPU memory for the engine's activations; close "
                    "other GPU programs or rebuild with a smaller max batch",
                )
            )
        self._stream = self._cuda(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self._dtypes[name] = trt_to_numpy_dtype(self.engine.get_tensor_dtype(name))
            self._shapes[name] = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            self._buffers[name] = _Buffer()
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
                lo, opt, hi = self.engine.get_tensor_profile_shape(name, 0)
                self._profiles[name] = (tuple(lo), tuple(opt), tuple(hi))
            else:
                self._outputs.append(name)
        if self.build_info:
            logger.info("tensorrt: engine built with %s", self.build_info)

    def _deserialize_failed(self, trt: Any) -> str:
        built = self.build_info.get("tensorrt_version")
        gpu = self.build_info.get("gpu_name")
        here = getattr(trt, "__version__", "?")
        origin = f" (built with TensorRT {built} on {gpu or 'an unnamed GPU'}; this is {here})"
        return note(
            "TensorRT could not deserialise the engine" + (origin if built else ""),
            "engines are tied to the TensorRT version and the GPU they were built on; "
            "rebuild model.engine on this device from model.onnx",
        )

    def max_batch_size(self) -> int | None:
        if not self._profiles:
            return None
        return min(int(hi[0]) for _, _, hi in self._profiles.values())

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self._profiles[name]
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
            raise BackendError(
                note(
                    f"tensorrt: input {name!r} shape {format_shape(shape)} is outside the engine's "
                    f"optimisation profile {format_shape(lo)}..{format_shape(hi)}",
                    "split the batch (AnomalyDetector does) or rebuild the engine with a larger "
                    "--maxShapes",
                )
            )

    def _ensure_buffer(self, name: str, nbytes: int) -> bool:
        """Grow ``name``'s buffers to ``nbytes``; returns True when memory moved."""
        buf = self._buffers[name]
        if buf.capacity >= nbytes:
            return False
        self._free_buffer(buf)
        cudart = self._cudart
        buf.device = self._cuda(cudart.cudaMalloc(nbytes), "cudaMalloc")
        buf.host = self._cuda(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        buf.capacity = nbytes
        self.allocations += 1
        if not self.context.set_tensor_address(name, int(buf.device)):
            raise BackendError(
                note(f"tensorrt: set_tensor_address({name!r}) failed", "see the TensorRT log above")
            )
        return True

    def _free_buffer(self, buf: _Buffer) -> None:
        if buf.capacity:
            self._cuda(self._cudart.cudaFree(buf.device), "cudaFree")
            self._cuda(self._cudart.cudaFreeHost(buf.host), "cudaFreeHost")
            buf.capacity, buf.device, buf.host = 0, 0, 0

    def _host_view(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view over the pinned host buffer of ``name``."""
        dtype = self._dtypes[name]
        count = int(np.prod(shape, dtype=np.int64))
        raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(int(self._buffers[name].host))
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def _enqueue(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Copy in, execute, copy out on the stream (also what a CUDA graph captures)."""
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self._inputs:
            buf, nbytes = self._buffers[name], self._nbytes(name, shapes[name])
            self._cuda(
                cudart.cudaMemcpyAsync(buf.device, buf.host, nbytes, h2d, self._stream), "H2D copy"
            )
        # The binding takes the stream as an int handle; cuda-python streams are objects.
        if not self.context.execute_async_v3(int(self._stream)):
            raise BackendError("tensorrt: execute_async_v3 failed (see the TensorRT log above)")
        for name in self._outputs:
            buf, nbytes = self._buffers[name], self._nbytes(name, shapes[name])
            self._cuda(
                cudart.cudaMemcpyAsync(buf.host, buf.device, nbytes, d2h, self._stream), "D2H copy"
            )

    def _nbytes(self, name: str, shape: tuple[int, ...]) -> int:
        return int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize

    def _drop_graph(self) -> None:
        if self._graph_exec is not None:
            self._cuda(self._cudart.cudaGraphExecDestroy(self._graph_exec), "cudaGraphExecDestroy")
            self._cuda(self._cudart.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
        self._graph = self._graph_exec = self._graph_shape = None

    def _capture(self, shapes: dict[str, tuple[int, ...]]) -> bool:
        """Capture copy-in + execute + copy-out as a CUDA graph; False (and graphs off) on failure.

        The capture is ended in ``finally`` whatever happens in between: a stream left in capture
        mode makes every later call on it fail (even a plain enqueue or a synchronize).
        """
        cudart = self._cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        error: str | None = None
        graph = None
        began = cudart.cudaStreamBeginCapture(self._stream, mode)[0]
        if began != cudart.cudaError_t.cudaSuccess:
            error = f"cudaStreamBeginCapture failed with {began}"
        else:
            try:
                self._enqueue(shapes)
            except BackendError as exc:
                error = str(exc).splitlines()[0]
            finally:
                ended = cudart.cudaStreamEndCapture(self._stream)
                if ended[0] == cudart.cudaError_t.cudaSuccess:
                    graph = ended[1]
                elif error is None:
                    error = f"cudaStreamEndCapture failed with {ended[0]}"
        if error is None:
            result = cudart.cudaGraphInstantiate(graph, 0)
            if result[0] == cudart.cudaError_t.cudaSuccess:
                self._graph, self._graph_exec = graph, result[1]
                self._graph_shape = tuple(shapes[n] for n in self._inputs)
                return True
            error = f"cudaGraphInstantiate failed with {result[0]}"
        if graph is not None:
            cudart.cudaGraphDestroy(graph)
        logger.warning("tensorrt: CUDA graph capture failed (%s): using plain enqueues", error)
        self.cuda_graph = False  # what failed once fails again: do not retry every frame
        return False

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        moved = False
        for name in self._inputs:
            shape = tuple(feeds[name].shape)
            self._check_profile(name, shape)
            if not self.context.set_input_shape(name, shape):
                raise BackendError(
                    note(
                        f"tensorrt: set_input_shape({name!r}, {format_shape(shape)}) failed",
                        "the engine refused this shape; see the TensorRT log above",
                    )
                )
        shapes = {n: tuple(feeds[n].shape) for n in self._inputs}
        for name in self._outputs:
            shapes[name] = tuple(int(d) for d in self.context.get_tensor_shape(name))
        for name, shape in shapes.items():
            moved |= self._ensure_buffer(name, self._nbytes(name, shape))
        for name in self._inputs:
            self._host_view(name, shapes[name])[...] = feeds[name]
        key = tuple(shapes[n] for n in self._inputs)
        if moved or (self._graph_shape is not None and self._graph_shape != key):
            self._drop_graph()
        if self.cuda_graph and self._graph_exec is None and self._last_shape == key:
            self._capture(shapes)  # second run at this shape: deferred allocations are done
        if self._graph_exec is not None:
            self._cuda(
                self._cudart.cudaGraphLaunch(self._graph_exec, self._stream), "cudaGraphLaunch"
            )
        else:
            self._enqueue(shapes)
        self._cuda(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        self._last_shape = key
        # copy: the pinned buffers are overwritten by the next call
        return {n: self._host_view(n, shapes[n]).copy() for n in self._outputs}

    def _release(self) -> None:
        self._drop_graph()
        for buf in self._buffers.values():
            self._free_buffer(buf)
        if self._stream is not None:
            self._cuda(self._cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
        self._stream = None
        self.context = None
        if self._owns_engine:
            self.engine = None
            self._runtime = None
        self._inputs, self._outputs = [], []
        self._buffers, self._profiles, self._last_shape = {}, {}, None

    def _input_spec(self) -> dict[str, tuple[np.dtype, tuple[int | None, ...]]]:
        return {n: (self._dtypes[n], self._shapes[n]) for n in self._inputs}

    def _output_names(self) -> list[str]:
        return list(self._outputs)

    def _metadata(self) -> dict[str, str]:
        return dict(self._props or {})
