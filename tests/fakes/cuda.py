"""A test double of cuda-python's runtime module (``cuda.bindings.runtime`` / ``cuda.cudart``).

It keeps the contract our code relies on, including the failures:

- every call returns a tuple ``(cudaError_t, *values)``, never raises;
- error codes are the real ``cudaError_t`` values (driver_types.h / cuda-python's
  ``cudaError_t``: ``cudaSuccess`` 0, ``cudaErrorInvalidValue`` 1, ``cudaErrorMemoryAllocation`` 2,
  ``cudaErrorStreamCaptureUnsupported`` 900, ``cudaErrorStreamCaptureInvalidated`` 901);
- a stream is an *object* (``cudaStream_t``, convertible with ``int()``), not a bare int;
- stream capture is a state of the stream: work enqueued while capturing is recorded, not run;
  ``cudaStreamSynchronize`` on a capturing stream fails with ``cudaErrorStreamCaptureUnsupported``
  and invalidates the capture, and ``cudaStreamEndCapture`` after an invalidation returns
  ``cudaErrorStreamCaptureInvalidated`` (CUDA runtime API, "Graph management" / stream capture);
  a stream that is never ended stays in capture mode, so later plain work fails too.

"Device" memory is host memory (numpy buffers addressed by their pointer), so a copy is a memmove.
Failures are injected with the ``fail_*`` attributes.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 (cuda-python's name)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStream_t:  # noqa: N801
    """A stream handle object; ``int(stream)`` is its address, as in cuda-python."""

    _next = 0x7000

    def __init__(self) -> None:
        cudaStream_t._next += 0x10
        self._ptr = cudaStream_t._next
        self.capture: list[Callable[[], None]] | None = None  # recorded work while capturing
        self.invalidated = False
        self.destroyed = False

    def __int__(self) -> int:
        return self._ptr

    def getPtr(self) -> int:  # noqa: N802 (cuda-python's name)
        return self._ptr

    @property
    def capturing(self) -> bool:
        return self.capture is not None


class FakeCudart:
    """cuda-python runtime double; see the module docstring for the contract it keeps."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStream_t = cudaStream_t

    def __init__(self, gpu_name: bytes = b"NVIDIA Fake GPU", cc: tuple[int, int] = (8, 7)) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.streams: dict[int, cudaStream_t] = {}
        self.graph_launches = 0
        self.gpu_name, self.cc = gpu_name, cc
        # failure injection
        self.fail_malloc = False
        self.fail_begin_capture = False  # e.g. capture not supported on this stream
        self.fail_end_capture = False  # EndCapture reports an invalidated capture
        self.fail_instantiate = False

    # -- device facts -------------------------------------------------------------------------
    def cudaGetDeviceProperties(self, device: int):  # noqa: N802
        name = self.gpu_name + b"\0" * 8 + b"garbage"  # a fixed char[256], NUL-padded
        return cudaError_t.cudaSuccess, SimpleNamespace(
            name=name, major=self.cc[0], minor=self.cc[1]
        )

    def cudaDriverGetVersion(self):  # noqa: N802
        return cudaError_t.cudaSuccess, 12060

    # -- memory -------------------------------------------------------------------------------
    def _alloc(self, nbytes: int):
        if self.fail_malloc:
            return cudaError_t.cudaErrorMemoryAllocation, 0
        buf = np.zeros(max(int(nbytes), 1), np.uint8)
        self.memory[buf.ctypes.data] = buf
        return cudaError_t.cudaSuccess, buf.ctypes.data

    def cudaMalloc(self, nbytes: int):  # noqa: N802
        return self._alloc(nbytes)

    def cudaMallocHost(self, nbytes: int):  # noqa: N802
        return self._alloc(nbytes)

    def _free(self, ptr: int):
        if self.memory.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (cudaError_t.cudaSuccess,)

    def cudaFree(self, ptr: int):  # noqa: N802
        return self._free(ptr)

    def cudaFreeHost(self, ptr: int):  # noqa: N802
        return self._free(ptr)

    # -- streams ------------------------------------------------------------------------------
    def cudaStreamCreate(self):  # noqa: N802
        stream = cudaStream_t()
        self.streams[int(stream)] = stream
        return cudaError_t.cudaSuccess, stream

    def stream(self, handle: Any) -> cudaStream_t | None:
        """The stream object for a ``cudaStream_t`` or its int handle (what TensorRT receives)."""
        return self.streams.get(int(handle))

    def cudaStreamDestroy(self, handle):  # noqa: N802
        stream = self.streams.pop(int(handle), None)
        if stream is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        stream.destroyed = True
        return (cudaError_t.cudaSuccess,)

    def enqueue(self, handle: Any, op: Callable[[], None]) -> cudaError_t:
        """Run ``op`` now, or record it when the stream is capturing."""
        stream = self.stream(handle)
        if stream is None:
            return cudaError_t.cudaErrorInvalidValue
        if stream.capturing:
            stream.capture.append(op)
        else:
            op()
        return cudaError_t.cudaSuccess

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        return (self.enqueue(stream, lambda: ctypes.memmove(int(dst), int(src), int(nbytes))),)

    def cudaStreamSynchronize(self, handle):  # noqa: N802
        stream = self.stream(handle)
        if stream is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        if stream.capturing:  # not permitted while capturing; it also invalidates the capture
            stream.invalidated = True
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return (cudaError_t.cudaSuccess,)

    # -- capture and graphs -------------------------------------------------------------------
    def cudaStreamBeginCapture(self, handle, mode):  # noqa: N802
        stream = self.stream(handle)
        if stream is None or stream.capturing:
            return (cudaError_t.cudaErrorInvalidValue,)
        if self.fail_begin_capture:
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        stream.capture, stream.invalidated = [], False
        return (cudaError_t.cudaSuccess,)

    def cudaStreamIsCapturing(self, handle):  # noqa: N802
        stream = self.stream(handle)
        return cudaError_t.cudaSuccess, int(bool(stream and stream.capturing))

    def cudaStreamEndCapture(self, handle):  # noqa: N802
        stream = self.stream(handle)
        if stream is None or not stream.capturing:
            return cudaError_t.cudaErrorInvalidValue, None
        ops, stream.capture = stream.capture, None  # the stream leaves capture mode either way
        if stream.invalidated or self.fail_end_capture:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        return cudaError_t.cudaSuccess, SimpleNamespace(ops=ops, destroyed=False)

    def cudaGraphInstantiate(self, graph, flags):  # noqa: N802
        if self.fail_instantiate or graph is None:
            return cudaError_t.cudaErrorInvalidValue, None
        return cudaError_t.cudaSuccess, SimpleNamespace(ops=list(graph.ops), destroyed=False)

    def cudaGraphLaunch(self, graph_exec, handle):  # noqa: N802
        if graph_exec is None or graph_exec.destroyed:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.graph_launches += 1
        for op in graph_exec.ops:
            err = self.enqueue(handle, op)
            if err != cudaError_t.cudaSuccess:
                return (err,)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphExecDestroy(self, graph_exec):  # noqa: N802
        graph_exec.destroyed = True
        return (cudaError_t.cudaSuccess,)

    def cudaGraphDestroy(self, graph):  # noqa: N802
        graph.destroyed = True
        return (cudaError_t.cudaSuccess,)
