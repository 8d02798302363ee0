"""OpenVINO backend (CPU): reads the exported ONNX directly, explicit threads and precision.

openvino is an optional dependency (``pip install 'stpm-edge[openvino]'``), imported when the
runner loads, never at module import; numpy is the only other need (no onnx, no torch).

Settings are explicit because OpenVINO's defaults depend on the machine: on a CPU with BF16 units
its default inference precision is bf16, which changes the anomaly maps. Here the precision is
``f32`` unless the caller asks for ``bf16`` — a precision choice like the fp16 graph, to be
parity-checked (``stpm-bench --recommend`` does) and reported, never silently different verdicts.

Two execution modes (``hint``):

- ``latency``: one synchronous infer request, image after image (OpenVINO's LATENCY hint: one
  stream using every thread). Best for batch 1, the camera's usual case.
- ``throughput``: OpenVINO's THROUGHPUT hint (several streams sharing the threads) and a pool of
  asynchronous infer requests; a batch is split into single images that run concurrently on the
  streams, and the outputs are stacked back in order. Best for micro-batches on several cores.
  (Plain requests with ``start_async``/``wait``, not ``AsyncInferQueue``: a queue holding a
  Python callback deadlocked on release with OpenVINO 2026.4.)
- ``auto`` (default): ``latency`` compiled at load; the first batch larger than one also compiles
  the ``throughput`` model and every batch > 1 uses it from then on.

Every request runs one image (a ``latency`` request given a batch runs its images one after the
other), so a graph exported with a dynamic batch dimension is compiled with batch 1 fixed: the CPU
plugin then plans its memory and kernels once instead of per call (2 threads on the project's
VM: 21 % faster for the INT8 efficientnet_lite0 graph, 8 % for the stacked INT8 resnet18 one;
benchmarks/reports/cpu-epyc-2core/openvino_static_batch/).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import BackendError, note
from stpm_edge.runtime.metadata import props

from .base import Runner, model_file

logger = logging.getLogger(__name__)

HINTS = ("auto", "latency", "throughput")
#: accepted spellings -> OpenVINO's INFERENCE_PRECISION_HINT value
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}
MODEL_SUFFIXES = (".onnx", ".xml")  # the exported ONNX, or an OpenVINO IR written from it

ModelSource = str | os.PathLike | Callable[[], Any]


def import_openvino() -> Any:
    """Import openvino or raise a :class:`BackendError` saying what to install."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendError(
            note(
                "openvino is not installed",
                "pip install 'stpm-edge[openvino]' (or pip install openvino), or use backend "
                "ort-cpu",
            )
        ) from exc
    return openvino


def _any_value(value: Any) -> str:
    """An rt_info entry (``OVAny``) as a string."""
    for attr in ("astype", "get"):
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                return str(fn(str)) if attr == "astype" else str(fn())
            except Exception:  # OVAny raises its own types for the wrong cast: try the next way
                continue
    return str(getattr(value, "value", value))


def read_ov_metadata(model: Any, path: Path | None = None) -> dict[str, str]:
    """The ONNX ``metadata_props`` of an ``openvino.Model``.

    OpenVINO's ONNX frontend keeps them in the model's rt_info under ``framework``; an IR saved
    from such a model keeps them too. When they are absent (an older OpenVINO) and the source is
    an ``.onnx`` file, the props are read with onnx if it is installed; else ``{}``.
    """
    try:
        framework = model.get_rt_info()["framework"]
        entries = framework.astype(dict) if hasattr(framework, "astype") else dict(framework)
        meta = {str(k): _any_value(v) for k, v in entries.items()}
    except Exception:  # no "framework" entry, or an rt_info this version cannot convert
        meta = {}
    if meta or path is None or path.suffix.lower() != ".onnx":
        return meta
    try:
        import onnx
    except ImportError:
        logger.warning("%s: no metadata in OpenVINO's rt_info and onnx is not installed", path)
        return {}
    proto = onnx.load(str(path), load_external_data=False)
    return props(proto)


def compile_properties(
    hint: str,
    precision: str = "f32",
    threads: int | None = None,
    perf_count: bool = False,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The properties the runner compiles with (``config`` last, so its entries win); benchmark
    scripts that compile a model themselves use the same."""
    props: dict[str, Any] = {
        "PERFORMANCE_HINT": hint.upper(),
        "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
    }
    if threads is not None:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    if perf_count:
        props["PERF_COUNT"] = True
    props.update(config or {})
    return props


def single_image_model(model: Any) -> Any | None:
    """A copy of ``model`` with its dynamic batch dimension fixed to 1, or ``None`` when that is
    not the case for every input (other dimensions dynamic, or the batch already fixed)."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or len(shape) == 0 or shape[0].is_static:
            return None
        if not all(dim.is_static for dim in list(shape)[1:]):
            return None
        shapes[port.get_any_name()] = [1, *(dim.get_length() for dim in list(shape)[1:])]
    single = model.clone()  # the caller's model stays as it was (a model passed in is not owned)
    single.reshape(shapes)
    return single


class OpenVinoRunner(Runner):
    """Run an exported STPM graph with OpenVINO.

    Args:
        model: path to ``model.onnx`` (or an OpenVINO IR ``model.xml``), a ready ``openvino.Model``
            (used, not owned), or a loader callable returning either.
        threads: ``INFERENCE_NUM_THREADS``; ``None`` = OpenVINO's default (every core).
        precision: ``"f32"`` (default) or ``"bf16"`` (``INFERENCE_PRECISION_HINT``); bf16 needs
            a CPU with BF16 support (else :class:`BackendError`).
        hint: ``"auto"``, ``"latency"`` or ``"throughput"`` (see the module docstring).
        device: OpenVINO device name (``"CPU"``; others are untested here).
        num_requests: parallel requests in throughput mode; ``None`` = the compiled model's
            ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``.
        config: extra OpenVINO properties, applied last (they win).
        perf_count: collect OpenVINO's per-node timings (``PERF_COUNT``; a little overhead);
            :meth:`perf_counts` returns those of the last batch-1/latency request.
    """

    def __init__(
        self,
        model: ModelSource | Any,
        threads: int | None = None,
        precision: str = "f32",
        hint: str = "auto",
        device: str = "CPU",
        num_requests: int | None = None,
        config: dict[str, Any] | None = None,
        perf_count: bool = False,
    ) -> None:
        if threads is not None and threads < 1:
            raise BackendError(note(f"threads must be >= 1, got {threads}", "None = all cores"))
        if precision not in PRECISIONS:
            raise BackendError(
                note(
                    f"unknown OpenVINO precision {precision!r}", f"choose one of {list(PRECISIONS)}"
                )
            )
        if hint not in HINTS:
            raise BackendError(note(f"unknown OpenVINO hint {hint!r}", f"choose one of {HINTS}"))
        self.precision = PRECISIONS[precision]
        super().__init__(f"openvino[{device},{self.precision}]")
        self._model = model
        self.threads = threads
        self.hint = hint
        self.device = device
        self.num_requests = num_requests
        self.config = dict(config or {})
        self.perf_count = perf_count
        self._ov: Any = None
        self._core: Any = None
        self._ov_model: Any = None  # as read: its input spec is what callers may feed
        self._single: Any = None  # a batch-1 copy of it, when its batch dimension is dynamic
        self._latency: Any = None  # compiled model (LATENCY) and its request
        self._request: Any = None
        self._throughput: Any = None  # compiled model (THROUGHPUT) and its request pool
        self._pool: list[Any] = []
        self._meta: dict[str, str] = {}
        self._inputs: list[str] = []
        self._outputs: list[str] = []

    # -- helpers ---------------------------------------------------------------------------------
    def _resolve(self) -> tuple[Any, Path | None]:
        model = self._model
        if callable(model) and not hasattr(model, "get_rt_info"):
            model = model()
        if hasattr(model, "get_rt_info"):
            return model, None
        path = model_file(model)
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise BackendError(
                note(f"OpenVINO cannot read {path.name}", f"expected one of {MODEL_SUFFIXES}")
            )
        try:
            return self._core.read_model(str(path)), path
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(
                note(f"OpenVINO could not read {path}: {exc}", "check the file is a valid ONNX")
            ) from exc

    def _check_precision(self) -> None:
        if self.precision != "bf16" or self.device != "CPU":
            return
        caps = self._core.get_property(self.device, "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            raise BackendError(
                note(
                    "this CPU has no BF16 support (OpenVINO capabilities: " + ", ".join(caps) + ")",
                    "use precision f32 (the default)",
                )
            )

    def _compile(self, hint: str) -> Any:
        try:
            model = self._ov_model if self._single is None else self._single
            props = compile_properties(
                hint, self.precision, self.threads, self.perf_count, self.config
            )
            return self._core.compile_model(model, self.device, props)
        except Exception as exc:
            raise BackendError(
                note(f"OpenVINO could not compile the model for {self.device}: {exc}", "")
            ) from exc

    def _request_pool(self) -> list[Any]:
        if not self._pool:
            logger.info("%s: compiling the THROUGHPUT model for micro-batches", self.name)
            self._throughput = self._compile("throughput")
            jobs = self.num_requests or self._throughput.get_property(
                "OPTIMAL_NUMBER_OF_INFER_REQUESTS"
            )
            self._pool = [self._throughput.create_infer_request() for _ in range(max(1, jobs))]
        return self._pool

    # -- backend hooks ---------------------------------------------------------------------------
    def _load(self) -> None:
        self._ov = import_openvino()
        self._core = self._ov.Core()
        self._check_precision()
        self._ov_model, path = self._resolve()
        self._single = single_image_model(self._ov_model)
        self._meta = read_ov_metadata(self._ov_model, path)
        self._inputs = [p.get_any_name() for p in self._ov_model.inputs]
        self._outputs = [p.get_any_name() for p in self._ov_model.outputs]
        if self.hint == "throughput":
            self._request_pool()
        else:
            self._latency = self._compile("latency")
            self._request = self._latency.create_infer_request()
        self._originals: dict[str, list[str]] | None = None  # of this compiled model, on demand

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values())))
        if self.hint == "throughput" or (self.hint == "auto" and batch > 1):
            return self._infer_split(feeds, batch)
        if batch > 1 and self._single is not None:  # latency hint, batch-1 model: one by one
            parts = [
                self._infer_one({n: a[i : i + 1] for n, a in feeds.items()}) for i in range(batch)
            ]
            return {n: np.concatenate([p[n] for p in parts]) for n in self._outputs}
        return self._infer_one(feeds)

    def _infer_one(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer(feeds)  # copies the outputs (share_outputs=False)
        return {name: np.asarray(results[name]) for name in self._outputs}

    def _infer_split(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """One single-image request per image, concurrently on the throughput streams."""
        pool = self._request_pool()
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, batch, len(pool)):
            running = []
            for request, i in zip(pool, range(start, min(start + len(pool), batch))):
                request.start_async({name: array[i : i + 1] for name, array in feeds.items()})
                running.append(request)
            for request in running:  # in image order: the outputs stay in input order
                request.wait()
                parts.append({n: request.get_tensor(n).data.copy() for n in self._outputs})
        return {n: np.concatenate([p[n] for p in parts]) for n in self._outputs}

    def _release(self) -> None:
        self._pool = []
        self._throughput = None
        self._request = self._latency = None
        self._ov_model = self._single = self._core = None

    def _input_spec(self) -> dict[str, tuple[np.dtype, tuple[int | None, ...]]]:
        spec = {}
        for port in self._ov_model.inputs:
            dtype = np.dtype(port.get_element_type().to_dtype())
            dims = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            spec[port.get_any_name()] = (dtype, dims)
        return spec

    def _output_names(self) -> list[str]:
        return list(self._outputs)

    def perf_counts(self) -> list[dict[str, Any]]:
        """Per-node ``{"name", "type", "exec_type", "us"}`` of the last latency-mode request
        (``perf_count=True`` only; empty otherwise)."""
        self._require_loaded("perf_counts")
        if not self.perf_count or self._request is None:
            return []
        originals = self._original_names()
        return [
            {"name": p.node_name, "type": p.node_type, "exec_type": p.exec_type,
             "us": p.real_time.total_seconds() * 1e6,
             "original": originals.get(p.node_name, [])}
            for p in self._request.profiling_info
        ]  # fmt: skip

    def _original_names(self) -> dict[str, list[str]]:
        """``{executed node: the model's layers fused into it}`` (its ``originalLayersNames``).

        The CPU plugin fuses the graph's ops (e.g. a dequantisation and the tail's product become
        one ``Multiply_123`` node): the original names are what a stage split can attribute.
        """
        if self._originals is None:
            self._originals = {}
            for op in self._latency.get_runtime_model().get_ordered_ops():
                info = op.get_rt_info()
                if "originalLayersNames" in info:
                    names = info["originalLayersNames"].astype(str)
                    self._originals[op.get_friendly_name()] = [n for n in names.split(",") if n]
        return self._originals

    def _metadata(self) -> dict[str, str]:
        return dict(self._meta)
