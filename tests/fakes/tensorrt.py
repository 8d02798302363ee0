"""A test double of the ``tensorrt`` Python module (10.3 and 11.x) that fails where TensorRT fails.

One double serves the engine builder (``export/trt_build.py``) and the runner
(``runtime/runners/trt.py``): an engine built through :class:`FakeTensorRT`'s ``Builder`` loads in
its ``Runtime`` and computes the ONNX graph's real outputs (ONNX Runtime on the CPU stands in for
the GPU kernels, through the :class:`~fakes.cuda.FakeCudart` "device" memory and streams).

The contract it keeps, with where each part was read:

- **The ONNX parser rejects what TensorRT rejects.** ``parse``/``parse_from_file`` call
  ``stpm_edge.export.trt_check.check_model(model, trt_version=...)``, the project's encoding of
  onnx-tensorrt's ``docs/operators.md`` and parser rules; any violation makes the parse return
  ``False`` with one parser error per violation (``num_errors``/``get_error``: ``node()``,
  ``node_name()``, ``node_operator()``, ``desc()``, ``code()``), as ``IParser`` does.
- **Enum values per version.** ``NetworkDefinitionCreationFlag``: 10.x ``EXPLICIT_BATCH`` = 0
  (deprecated, ignored), ``STRONGLY_TYPED`` = 1 (NvInfer.h 10.x and the python binding
  ``python/src/infer/pyGraph.cpp``, ``py::enum_<NetworkDefinitionCreationFlag>``, NVIDIA/TensorRT;
  later 10.x adds ``PREFER_JIT_PYTHON_PLUGINS`` = 2 and ``PREFER_AOT_PYTHON_PLUGINS`` = 3, absent
  from 10.3). 11.x: ``EXPLICIT_BATCH`` removed, ``STRONGLY_TYPED`` = 0 "deprecated in TensorRT
  11.0 ... retained for API compatibility but ignored" (TensorRT 11.0.0 Python API docs, Builder
  page; the 11.x header as mirrored by docs.rs ``trtx-sys``), followed by
  ``PREFER_JIT_PYTHON_PLUGINS`` = 1 and ``PREFER_AOT_PYTHON_PLUGINS`` = 2 (the 10.x order with
  EXPLICIT_BATCH taken out, as issue 8 read the 11.x bindings; the docs list the members only).
  ``BuilderFlag`` has no ``FP16``/``INT8`` in 11.x ("Removed Python APIs", TensorRT 11.x
  migration guide). ``ILogger.Severity``, ``DataType``, ``TensorIOMode`` and the parser's
  ``ErrorCode`` use the values of NvInferRuntimeBase.h / NvOnnxParser.h.
- **Return values that signal failure**, as documented for the C++/Python API:
  ``Builder(logger)`` raises (pybind's "factory function returned nullptr") without a GPU;
  ``create_network`` returns ``None`` for flag bits this version does not define;
  ``add_optimization_profile`` returns -1 for an invalid profile; ``create_timing_cache`` returns
  ``None`` (or raises, or gives a cache that ``set_timing_cache(..., ignore_mismatch=False)``
  refuses) for a cache written by another TensorRT version or GPU; ``build_serialized_network``
  returns ``None`` after logging an error (also when a dynamic input has no profile);
  ``deserialize_cuda_engine`` returns ``None`` for an engine from another version or GPU;
  ``create_execution_context`` may return ``None``; ``set_input_shape`` returns ``False`` outside
  the profile; ``execute_async_v3(stream_handle: int)`` returns ``False`` on failure.

Failures that need a device to happen are injected with :class:`Faults`.
"""

from __future__ import annotations

import ctypes
import enum
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .cuda import FakeCudart

MAGIC = b"FAKE-TRT-ENGINE/1\n"
CACHE_MAGIC = b"FAKE-TIMING-CACHE|"


@dataclass
class Faults:
    """Failures to inject (all off by default)."""

    no_gpu: bool = False  # Builder(logger) raises, as with no usable CUDA device
    reject_profile: bool = False  # add_optimization_profile returns -1
    foreign_cache: str = "none"  # a cache from elsewhere: "none" | "raise" | "mismatch"
    build_fails: bool = False  # build_serialized_network returns None (logs an error)
    no_context: bool = False  # create_execution_context returns None
    reject_shape: bool = False  # set_input_shape returns False
    execute_fails: bool = False  # execute_async_v3 returns False
    execute_fails_in_capture: bool = False  # ... only while the stream is being captured


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4


class ErrorCode(enum.IntEnum):
    SUCCESS = 0
    INTERNAL_ERROR = 1
    MEM_ALLOC_FAILED = 2
    MODEL_DESERIALIZE_FAILED = 3
    INVALID_VALUE = 4
    INVALID_GRAPH = 5
    INVALID_NODE = 6
    UNSUPPORTED_GRAPH = 7
    UNSUPPORTED_NODE = 8


class _Flags10(enum.IntEnum):  # TensorRT 10.0-10.3
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class _Flags11(enum.IntEnum):  # TensorRT 11.x
    STRONGLY_TYPED = 0
    PREFER_JIT_PYTHON_PLUGINS = 1
    PREFER_AOT_PYTHON_PLUGINS = 2


class _BuilderFlag10(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4


class _BuilderFlag11(enum.IntEnum):  # precision flags removed; the others are not modelled
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4


_ONNX_TO_TRT = {
    "FLOAT": DataType.FLOAT,
    "FLOAT16": DataType.HALF,
    "BFLOAT16": DataType.BF16,
    "INT8": DataType.INT8,
    "UINT8": DataType.UINT8,
    "INT32": DataType.INT32,
    "INT64": DataType.INT64,
    "BOOL": DataType.BOOL,
}


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, msg: str) -> None:  # overridden by real loggers
        pass


class Logger(ILogger):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(Severity)

    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity
        self.messages: list[tuple[Severity, str]] = []

    def log(self, severity: Severity, msg: str) -> None:
        self.messages.append((severity, msg))


@dataclass
class _Tensor:
    name: str
    dtype: DataType
    shape: tuple[int, ...]


class ParserError:
    def __init__(self, code: ErrorCode, desc: str, node: int = -1, name: str = "", op: str = ""):
        self._code, self._desc, self._node, self._name, self._op = code, desc, node, name, op

    def code(self) -> ErrorCode:
        return self._code

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def __str__(self) -> str:
        return f"{self._code.name}: {self._desc}"


class FakeTensorRT(ModuleType):
    """The ``tensorrt`` module double. ``calls`` records what the code under test asked for."""

    Severity = Severity
    DataType = DataType
    TensorIOMode = TensorIOMode
    MemoryPoolType = MemoryPoolType
    ErrorCode = ErrorCode
    ILogger = ILogger
    Logger = Logger

    def __init__(
        self,
        version: str = "10.3.0",
        cudart: FakeCudart | None = None,
        faults: Faults | None = None,
    ) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        match = re.match(r"(\d+)\.(\d+)", version)
        assert match, version
        self.major, self.minor = int(match.group(1)), int(match.group(2))
        self.cudart = cudart if cudart is not None else FakeCudart()
        self.faults = faults if faults is not None else Faults()
        self.calls: list[tuple] = []
        if self.major >= 11:
            self.NetworkDefinitionCreationFlag = _Flags11
            self.BuilderFlag = _BuilderFlag11
        else:
            self.NetworkDefinitionCreationFlag = _Flags10
            self.BuilderFlag = _BuilderFlag10
        fake = self

        class Builder(_Builder):
            def __init__(self, logger: ILogger) -> None:
                super().__init__(fake, logger)

        class OnnxParser(_OnnxParser):
            def __init__(self, network: _Network, logger: ILogger) -> None:
                super().__init__(fake, network, logger)

        class Runtime(_Runtime):
            def __init__(self, logger: ILogger) -> None:
                super().__init__(fake, logger)

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    # -- helpers for tests ----------------------------------------------------------------------
    @property
    def gpu(self) -> str:
        return self.cudart.gpu_name.decode()

    @property
    def check_version(self) -> str:
        return f"{self.major}.{self.minor}"

    def called(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]

    def cache_header(self) -> bytes:
        return CACHE_MAGIC + f"{self.__version__}|{self.gpu}|".encode()


# ------------------------------------------------------------------------------------------------
# Builder side
# ------------------------------------------------------------------------------------------------


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []
        self.onnx_bytes: bytes | None = None

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]

    def get_output(self, i: int) -> _Tensor:
        return self.outputs[i]

    def get_flag(self, flag: int) -> bool:
        return bool(self.flags & (1 << int(flag)))


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, input: str) -> list[tuple[int, ...]]:  # noqa: A002
        return list(self.shapes.get(input, ()))


class _TimingCache:
    def __init__(self, header: bytes, entries: int) -> None:
        self.header, self.entries = header, entries

    def serialize(self) -> bytes:
        return self.header + f"entries={self.entries}".encode()


class _BuilderConfig:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake
        self.profiles: list[_Profile] = []
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.flags: set[int] = set()
        self.cache: _TimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.fake.calls.append(("set_memory_pool_limit", pool, size))
        self.pool_limits[pool] = int(size)

    def set_flag(self, flag: int) -> None:
        self.fake.calls.append(("set_flag", flag))
        self.flags.add(int(flag))

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.fake.calls.append(("add_optimization_profile", dict(profile.shapes)))
        valid = bool(profile.shapes) and all(
            len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi))
            for lo, opt, hi in profile.shapes.values()
        )
        if not valid or self.fake.faults.reject_profile:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized: Any) -> _TimingCache | None:
        data = bytes(serialized)
        self.fake.calls.append(("create_timing_cache", data))
        if not data:
            return _TimingCache(self.fake.cache_header(), 0)
        header = self.fake.cache_header()
        if data.startswith(header):
            return _TimingCache(header, int(data[len(header) :].split(b"=")[-1] or 0))
        mode = self.fake.faults.foreign_cache
        if mode == "raise":
            raise RuntimeError("[TensorRT] ITimingCache: cache was built by another version")
        if mode == "mismatch":
            return _TimingCache(data.split(b"entries=")[0], 0)
        return None

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        if cache is None:
            raise TypeError("set_timing_cache(): incompatible function arguments (None)")
        self.fake.calls.append(("set_timing_cache", cache.header, ignore_mismatch))
        if cache.header != self.fake.cache_header() and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self.cache


class _Builder:
    def __init__(self, fake: FakeTensorRT, logger: ILogger) -> None:
        if fake.faults.no_gpu:
            raise TypeError("pybind11::init(): factory function returned nullptr")
        self.fake, self.logger = fake, logger
        fake.calls.append(("Builder",))

    def create_network(self, flags: int = 0) -> _Network | None:
        self.fake.calls.append(("create_network", int(flags)))
        known = 0
        for member in self.fake.NetworkDefinitionCreationFlag:
            known |= 1 << int(member)
        if int(flags) & ~known:
            self.logger.log(Severity.ERROR, f"createNetworkV2: invalid flags {int(flags):#x}")
            return None
        return _Network(int(flags))

    def create_builder_config(self) -> _BuilderConfig:
        return _BuilderConfig(self.fake)

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _BuilderConfig) -> bytes | None:
        self.fake.calls.append(("build_serialized_network", network.flags))
        if network.onnx_bytes is None:
            self.logger.log(Severity.ERROR, "Network must have at least one output")
            return None
        dynamic = [t.name for t in network.inputs if any(d < 0 for d in t.shape)]
        profile = config.profiles[0] if config.profiles else None
        if dynamic and (profile is None or any(n not in profile.shapes for n in dynamic)):
            self.logger.log(
                Severity.ERROR,
                "Network has dynamic or shape inputs, but no optimization profile has been defined.",
            )
            return None
        if self.fake.faults.build_fails:
            self.logger.log(Severity.ERROR, "Requested amount of GPU memory could not be met")
            return None
        if config.cache is not None:
            config.cache.entries += 1  # the build tuned (and cached) some tactics
        header = {
            "tensorrt": self.fake.__version__,
            "gpu": self.fake.gpu,
            "inputs": [[t.name, t.dtype.name, list(t.shape)] for t in network.inputs],
            "outputs": [[t.name, t.dtype.name, list(t.shape)] for t in network.outputs],
            "profile": {
                k: [list(s) for s in v] for k, v in (profile.shapes if profile else {}).items()
            },
        }
        return MAGIC + json.dumps(header).encode() + b"\n" + network.onnx_bytes


class _OnnxParser:
    def __init__(self, fake: FakeTensorRT, network: _Network, logger: ILogger) -> None:
        self.fake, self.network, self.logger = fake, network, logger
        self.errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> ParserError:
        return self.errors[index]

    def clear_errors(self) -> None:
        self.errors = []

    def parse_from_file(self, model: str) -> bool:
        self.fake.calls.append(("parse_from_file", model))
        try:
            data = Path(model).read_bytes()
        except OSError as exc:
            self.errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED, str(exc)))
            return False
        return self._parse(data)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        self.fake.calls.append(("parse", path))
        return self._parse(bytes(model))

    def _parse(self, data: bytes) -> bool:
        import onnx
        import pytest

        try:
            from stpm_edge.export.trt_check import check_model
        except ImportError:  # helper H1's module; the double must not accept what it cannot check
            pytest.skip("stpm_edge.export.trt_check is not available: the fake parser needs it")
        try:
            model = onnx.load_from_string(data)
        except Exception as exc:
            self.errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED, str(exc)))
            return False
        violations = check_model(model, trt_version=self.fake.check_version)
        if violations:
            index = {n.name: i for i, n in enumerate(model.graph.node)}
            for v in violations:
                node = getattr(v, "node", "")
                pos = node if isinstance(node, int) else index.get(str(node), -1)
                name = model.graph.node[pos].name if isinstance(node, int) else str(node)
                desc = f"{v.message} [{v.rule}]"
                self.errors.append(
                    ParserError(ErrorCode.UNSUPPORTED_NODE, desc, pos, name, v.op_type)
                )
                self.logger.log(Severity.ERROR, f"ModelImporter: {desc}")
            return False
        inits = {t.name for t in model.graph.initializer}
        try:
            inputs = [_tensor(v) for v in model.graph.input if v.name not in inits]
            outputs = [_tensor(v) for v in model.graph.output]
        except KeyError as exc:  # a graph I/O type TensorRT has no DataType for (e.g. DOUBLE)
            self.errors.append(ParserError(ErrorCode.UNSUPPORTED_GRAPH, f"I/O type {exc}"))
            return False
        self.network.inputs, self.network.outputs = inputs, outputs
        self.network.onnx_bytes = data
        return True


def _tensor(value_info: Any) -> _Tensor:
    import onnx

    t = value_info.type.tensor_type
    elem = onnx.TensorProto.DataType.Name(t.elem_type)
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return _Tensor(value_info.name, _ONNX_TO_TRT[elem], dims)


# ------------------------------------------------------------------------------------------------
# Runtime side
# ------------------------------------------------------------------------------------------------


class _Runtime:
    def __init__(self, fake: FakeTensorRT, logger: ILogger) -> None:
        self.fake, self.logger = fake, logger

    def deserialize_cuda_engine(self, data: Any) -> _Engine | None:
        data = bytes(data)
        self.fake.calls.append(("deserialize_cuda_engine", len(data)))
        if not data.startswith(MAGIC):
            self.logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: magic tag mismatch")
            return None
        head, _, onnx_bytes = data[len(MAGIC) :].partition(b"\n")
        header = json.loads(head)
        if header["tensorrt"] != self.fake.__version__ or header["gpu"] != self.fake.gpu:
            self.logger.log(
                Severity.ERROR,
                "The engine plan file is not compatible with this version of TensorRT "
                f"({header['tensorrt']} on {header['gpu']} vs {self.fake.__version__} on "
                f"{self.fake.gpu})",
            )
            return None
        return _Engine(self.fake, header, onnx_bytes)


class _Engine:
    def __init__(self, fake: FakeTensorRT, header: dict, onnx_bytes: bytes) -> None:
        self.fake, self.onnx_bytes = fake, onnx_bytes
        self.io: dict[str, tuple[TensorIOMode, DataType, tuple[int, ...]]] = {}
        for mode, key in ((TensorIOMode.INPUT, "inputs"), (TensorIOMode.OUTPUT, "outputs")):
            for name, dtype, shape in header[key]:
                self.io[name] = (mode, DataType[dtype], tuple(shape))
        self.profile = {k: tuple(tuple(s) for s in v) for k, v in header["profile"].items()}
        self._session: Any = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, index: int) -> str:
        return list(self.io)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.io[name][0] if name in self.io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.io[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.io[name][2]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if profile_index != 0 or name not in self.profile:
            raise ValueError(f"no profile shape for {name!r} in profile {profile_index}")
        return list(self.profile[name])

    def create_execution_context(self) -> _Context | None:
        self.fake.calls.append(("create_execution_context",))
        if self.fake.faults.no_context:
            return None
        return _Context(self)

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self._session = ort.InferenceSession(
                self.onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        return self._session


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.fake = engine, engine.fake
        self.addresses: dict[str, int] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        self.fake.calls.append(("set_input_shape", name, shape))
        lo, _, hi = self.engine.profile.get(name, ((), (), ()))
        ok = len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))
        if not ok or self.fake.faults.reject_shape:
            return False  # the real call logs an error and returns False
        self.input_shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        mode, _, declared = self.engine.io[name]
        if mode == TensorIOMode.INPUT:
            return self.input_shapes.get(name, declared)
        batch = next(iter(self.input_shapes.values()), (-1,))[0]
        return tuple(batch if d < 0 else d for d in declared)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return name in self.engine.io

    def _view(self, name: str) -> np.ndarray:
        dtype = np.dtype(_NP[self.engine.io[name][1]])
        shape = self.get_tensor_shape(name)
        count = int(np.prod(shape, dtype=np.int64))
        raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(self.addresses[name])
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int):  # the binding's signature: stream_handle: int
            raise TypeError(
                "execute_async_v3(): incompatible function arguments (stream_handle: int)"
            )
        stream = self.fake.cudart.stream(stream_handle)
        faults = self.fake.faults
        if stream is None or faults.execute_fails:
            return False
        if stream.capturing and faults.execute_fails_in_capture:
            stream.invalidated = True  # an illegal operation during capture invalidates it
            return False
        names = [n for n, (mode, _, _) in self.engine.io.items() if mode == TensorIOMode.INPUT]
        if set(names) - set(self.input_shapes) or set(self.engine.io) - set(self.addresses):
            return False  # shapes or addresses missing: enqueue fails

        def compute() -> None:
            feeds = {n: self._view(n).copy() for n in names}
            outputs = [o.name for o in self.engine.session().get_outputs()]
            for name, value in zip(outputs, self.engine.session().run(outputs, feeds)):
                self._view(name)[...] = value

        self.fake.cudart.enqueue(stream_handle, compute)
        return True


_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.UINT8: np.uint8,
    DataType.INT32: np.int32,
    DataType.INT64: np.int64,
    DataType.BOOL: np.bool_,
}
