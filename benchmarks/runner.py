"""The measurement loop: one configuration (model x backend x batch x threads x mode) -> one record.

Every backend is timed the same way, through ``stpm_edge.runtime.runners.create_runner``: warm-up
iterations, then ``time.perf_counter_ns`` around each call, host to host (numpy in, numpy out).
Modes:

- ``model``: ``runner.infer(feeds)`` on a ready batch (uint8 NHWC frames, or normalised float32
  NCHW for a ``float32_nchw`` graph).
- ``e2e``: JPEG decode (``image.decode_bgr``, the one decoder) of every frame + the detector's pre-processing,
  inference and post-processing (``Detector.predict``, verdict included).
- ``torch``: the PyTorch eager model of a checkpoint (float32 on CPU, autocast fp16 on CUDA),
  including the uint8 -> normalised float conversion the fused graph does internally, so the
  ratio against ``model`` compares like with like. torch is imported only here.

Memory: ``peak_rss_mb`` is the process high-water mark (``ru_maxrss``) after the configuration;
it is per configuration only with ``isolate=True`` (each job in a fresh process), otherwise it is
cumulative over the run. ``rss_delta_mb`` is the resident-set growth across the configuration.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.benchmarks.profiling import (
    make_trt_layer_profiler,
    reduce_openvino_counts,
    reduce_ort_profile,
    stage_shares,
)
from stpm_edge.benchmarks.stats import LatencyStats
from stpm_edge.errors import BackendError, ConfigError, DataError, StpmEdgeError, note
from stpm_edge.runtime.image import synthetic_frames

logger = logging.getLogger(__name__)

MODES = ("model", "e2e", "torch")


@dataclass(frozen=True)
class LoopPolicy:
    """When to stop timing.

    ``iters`` set: exactly that many timed iterations. ``seconds`` set: run until that much time
    has passed (at least ``min_iters``). Neither: ``default_iters`` or ``default_seconds``,
    whichever comes first (at least ``min_iters``) — enough for a usable p99 without taking
    minutes per configuration on a 2-core CPU.
    """

    warmup: int = 10
    iters: int | None = None
    seconds: float | None = None
    default_iters: int = 200
    default_seconds: float = 10.0
    min_iters: int = 10

    def done(self, count: int, elapsed_s: float) -> bool:
        """Whether ``count`` timed iterations over ``elapsed_s`` seconds are enough."""
        if self.iters is not None:
            return count >= self.iters
        if self.seconds is not None:
            return count >= self.min_iters and elapsed_s >= self.seconds
        return count >= self.default_iters or (
            count >= self.min_iters and elapsed_s >= self.default_seconds
        )


def time_loop(step: Callable[[], Any], policy: LoopPolicy) -> list[float]:
    """Call ``step`` ``policy.warmup`` times untimed, then time each call until ``policy.done``.

    Returns:
        Per-iteration latencies in milliseconds (float), in call order.
    """
    for _ in range(policy.warmup):
        step()
    samples: list[float] = []
    start = time.perf_counter_ns()
    while not policy.done(len(samples), (time.perf_counter_ns() - start) / 1e9):
        t0 = time.perf_counter_ns()
        step()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return samples


# -- memory ---------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Process RSS high-water mark in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def current_rss_mb() -> float | None:
    """Current resident set in MiB from /proc/self/statm, None where unavailable."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _gpu_memory_mb(runner: Any) -> float | None:
    """Device memory the runner reports (``device_memory_bytes()``), None if it cannot tell."""
    for attr in ("device_memory_bytes", "gpu_memory_bytes"):
        fn = getattr(runner, attr, None)
        if callable(fn):
            try:
                value = fn()
            except Exception as exc:  # an optional probe: never fail a benchmark on it
                logger.debug("%s() failed: %s", attr, exc)
                return None
            return None if value is None else float(value) / 2**20
    return None


# -- inputs ---------------------------------------------------------------------------------------
def model_metadata(path: str | Path) -> dict[str, str]:
    """The ``stpm.*`` props of an .onnx file or of an engine's sidecar, without a session."""
    from stpm_edge.runtime.metadata import read_model_metadata

    return read_model_metadata(path)


def _meta_value(meta: dict[str, str], key: str, default: Any = None) -> Any:
    raw = meta.get(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def load_images(directory: str | Path, limit: int = 64) -> list[np.ndarray]:
    """Up to ``limit`` images of ``directory`` as uint8 BGR (H, W, 3) (sorted by name), read by
    the image module like every other tool; unreadable files are skipped with a warning."""
    from stpm_edge.runtime import image

    images = []
    for path in image.list_images(directory)[:limit]:
        try:
            images.append(image.decode_bgr(path))
        except DataError as exc:
            logger.warning("skipping %s", exc)
    if not images:
        raise ConfigError(
            note(
                f"--images {directory}: no readable images",
                f"expected image files ({', '.join(image.IMAGE_SUFFIXES)}) in it",
            )
        )
    return images


def _concrete_shape(shape: tuple[int, ...], batch: int, hw: list[int] | None, name: str) -> tuple:
    """Batch on axis 0; other dynamic axes from ``stpm.input_size`` ``[H, W]`` in order."""
    fill = list(hw or [])
    dims = [batch]
    for dim in shape[1:]:
        if dim is not None and dim >= 0:
            dims.append(int(dim))
        elif fill:
            dims.append(int(fill.pop(0)))
        else:
            raise ConfigError(
                note(
                    f"input {name!r} has a dynamic axis besides the batch", "export with fixed H, W"
                )
            )
    return tuple(dims)


def make_feeds(
    spec: dict[str, tuple[np.dtype, tuple]],
    batch: int,
    meta: dict[str, str],
    images: list[np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One batch per input of ``spec``: uint8 frames (random or ``images``), or float32 NCHW.

    uint8 inputs get (N, H, W, 3) frames in the metadata's ``stpm.color_order``; float32 inputs
    get the same frames normalised with ``stpm.mean``/``stpm.std`` (RGB, NCHW) as the exporter's
    ``--input float`` graph expects.
    """
    from stpm_edge.runtime.image import to_model_input

    rng = np.random.default_rng(seed)
    hw = _meta_value(meta, "stpm.input_size")
    order = str(_meta_value(meta, "stpm.color_order", "BGR")).upper()
    feeds = {}
    for name, (dtype, shape) in spec.items():
        dims = _concrete_shape(tuple(shape), batch, hw, name)
        nchw = len(dims) == 4 and dims[1] == 3 and dims[3] != 3
        height, width = (dims[2], dims[3]) if nchw else (dims[1], dims[2])
        if images:
            frames = [images[i % len(images)] for i in range(batch)]
        else:
            frames = list(rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8))
        if np.dtype(dtype) == np.uint8:
            x = to_model_input(frames, (height, width), "uint8_nhwc", order, order="BGR")
            feeds[name] = np.ascontiguousarray(x).reshape(dims)
            continue
        mean, std = _meta_value(meta, "stpm.mean"), _meta_value(meta, "stpm.std")
        if mean is None or std is None:
            raise ConfigError(
                note(
                    f"input {name!r} is float but the model has no stpm.mean/stpm.std metadata",
                    "re-export the model with stpm-export",
                )
            )
        x = to_model_input(frames, (height, width), "float32_nchw", mean=mean, std=std)
        x = x if nchw else x.transpose(0, 2, 3, 1)
        feeds[name] = np.ascontiguousarray(x.astype(np.dtype(dtype))).reshape(dims)
    return feeds


def peer_feeds(
    spec: dict[str, tuple[np.dtype, tuple]], batch: int, seed: int, label: str
) -> dict[str, np.ndarray]:
    """Random input for a foreign graph (``--peer``) of its one input's declared shape and dtype.

    A dynamic first axis is the batch; floats are uniform in [0, 1) (an image scaled to [0, 1],
    what anomalib's graphs take), integers uniform in [0, 255]. Values do not change the timing
    of these graphs; only the shape and dtype matter.

    Raises:
        ConfigError: not exactly one input, or a dynamic axis besides the batch.
    """
    if len(spec) != 1:
        raise ConfigError(
            note(
                f"--peer {label}: the graph has {len(spec)} inputs {list(spec)}",
                "stpm-bench feeds a peer exactly one input (the image batch)",
            )
        )
    ((name, (dtype, shape)),) = spec.items()
    try:
        dims = _concrete_shape(tuple(shape), batch, None, name)
    except ConfigError as exc:
        raise ConfigError(f"--peer {label}: {exc}") from None
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return {name: rng.random(dims, dtype=np.float32).astype(dtype)}
    return {name: rng.integers(0, 256, dims).astype(dtype)}


# -- jobs -----------------------------------------------------------------------------------------
@dataclass
class Job:
    """One configuration to measure (picklable, so ``--isolate`` can ship it to a subprocess)."""

    model: str
    backend: str
    batch: int
    threads: int | None
    mode: str = "model"
    policy: LoopPolicy = field(default_factory=LoopPolicy)
    images: list[np.ndarray] | None = None
    frame_size: tuple[int, int] = (640, 480)  # e2e camera frame (width, height)
    profile_prefix: str | None = None  # where ORT writes its trace; None = no profiling
    profile_iters: int = 20
    profile_top: int = 10
    seed: int = 0
    peer: str | None = None  # label of a foreign graph (--peer): random input, timing only


def _device_of(runner_name: str) -> str:
    name = runner_name.lower()
    return "cpu" if "cpu" in name and "cuda" not in name else "gpu"


def _base_record(job: Job, meta: dict[str, str], runner_name: str) -> dict[str, Any]:
    return {
        "model": job.model,
        "model_name": f"peer:{job.peer}" if job.peer else Path(job.model).stem,
        "peer": job.peer,
        "backend": job.backend,
        "runner": runner_name,
        "device": _device_of(runner_name),
        "precision": _meta_value(meta, "stpm.precision"),
        "layout": _meta_value(meta, "stpm.layout"),
        "batch": job.batch,
        "threads": job.threads,
        "mode": job.mode,
        "input_size": _meta_value(meta, "stpm.input_size"),
    }


def _finish(record: dict[str, Any], samples: list[float], rss0: float | None) -> dict[str, Any]:
    stats = LatencyStats.from_samples(samples)
    rss1 = current_rss_mb()
    record.update(
        iters=stats.count,
        latency_ms=stats.as_dict(),
        throughput_ips=stats.throughput(record["batch"]),
        peak_rss_mb=peak_rss_mb(),
        rss_delta_mb=None if rss0 is None or rss1 is None else rss1 - rss0,
        samples_ms=[round(s, 4) for s in samples],
    )
    record.setdefault("gpu_peak_mb", None)
    return record


#: stpm-bench backend names that are a runtime backend plus options
BACKEND_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "openvino-bf16": ("openvino", {"precision": "bf16"}),
}


def runner_args(backend: str) -> tuple[str, dict[str, Any]]:
    """``(create_runner backend, runner kwargs)`` of an stpm-bench backend name."""
    name, kwargs = BACKEND_ALIASES.get(backend, (backend, {}))
    return name, dict(kwargs)


def _create_runner(path: str, backend: str, threads: int | None, **kw: Any) -> Any:
    from stpm_edge.runtime.runners import create_runner

    name, extra = runner_args(backend)
    return create_runner(path, backend=name, threads=threads, **extra, **kw)


def _profile_ort(job: Job, feeds: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Run a profiling session for ``job.profile_iters`` iterations and reduce its trace."""
    try:
        runner = _create_runner(
            job.model, job.backend, job.threads, profile_prefix=job.profile_prefix
        )
    except TypeError:
        logger.warning("%s: this runner cannot profile (no profile_prefix= option)", job.backend)
        return None
    with runner:
        for _ in range(job.profile_iters + 1):  # +1: the first run is dropped by the reducer
            runner.infer(feeds)
        end = getattr(runner, "end_profiling", None)
        if not callable(end):
            logger.warning("%s: runner has no end_profiling(); no profile", runner.name)
            return None
        trace = end()
    table = reduce_ort_profile(trace, top=job.profile_top)
    return {"file": str(trace), **table}


def _profile_trt(runner: Any, feeds: dict[str, np.ndarray], job: Job) -> dict[str, Any] | None:
    """Per-layer TensorRT time through an IProfiler (unverified: needs the runner's context)."""
    context = getattr(runner, "context", None) or getattr(runner, "_context", None)
    if context is None:
        logger.warning("tensorrt runner exposes no execution context; no layer profile")
        return None
    profiler = make_trt_layer_profiler()
    context.profiler = profiler
    for _ in range(job.profile_iters):
        runner.infer(feeds)
    rows = profiler.table(job.profile_top)
    return {"file": None, "runs": job.profile_iters, "by_op_type": [], "by_node": rows}


def _attach_profile(record: dict[str, Any], profile: dict[str, Any] | None) -> None:
    if profile:
        record["profile_top"] = profile["by_op_type"]
        record["profile_top_nodes"] = profile["by_node"]
        record["profile_file"] = profile["file"]
        for key in ("node_ms_per_run", "conv_ms_per_run"):  # absent from TensorRT's layer times
            if key in profile:
                record[f"profile_{key.removesuffix('_per_run')}"] = profile[key]


def bench_model(job: Job) -> dict[str, Any]:
    """Time ``runner.infer`` on one ready batch (mode ``model``)."""
    rss0 = current_rss_mb()
    t0 = time.perf_counter()
    with _create_runner(job.model, job.backend, job.threads) as runner:
        load_ms = (time.perf_counter() - t0) * 1000.0
        meta = runner.metadata()
        if job.peer:
            feeds = peer_feeds(runner.input_spec(), job.batch, job.seed, job.peer)
        else:
            feeds = make_feeds(runner.input_spec(), job.batch, meta, job.images, job.seed)
        samples = time_loop(lambda: runner.infer(feeds), job.policy)
        record = _base_record(job, meta, runner.name)
        if getattr(runner, "precision", None) == "bf16":  # the runner computes in bf16
            record["graph_precision"], record["precision"] = record["precision"], "bf16"
        record["load_ms"] = load_ms
        record["gpu_peak_mb"] = _gpu_memory_mb(runner)
        _finish(record, samples, rss0)
        trt_profile = (
            _profile_trt(runner, feeds, job)
            if job.profile_prefix and runner.name.startswith("tensorrt")
            else None
        )
    if job.profile_prefix and record["runner"].startswith("onnxruntime"):
        profile = _profile_ort(job, feeds)
        _attach_profile(record, profile)
        if profile and profile.get("file") and not job.peer:  # a peer has no stpm stages
            record["profile_stages"] = _stage_shares(profile["file"], job.model)
    if job.profile_prefix and record["runner"].startswith("openvino") and job.batch == 1:
        profile = _profile_openvino(job, feeds)
        _attach_profile(record, profile)
        record["profile_stages"] = profile["stages"]
    _attach_profile(record, trt_profile)
    return record


def _profile_openvino(job: Job, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """OpenVINO's per-node counters (``PERF_COUNT``) over ``job.profile_iters`` runs."""
    runs = []
    with _create_runner(job.model, job.backend, job.threads, perf_count=True) as runner:
        runner.infer(feeds)  # the first run is dropped, as for ONNX Runtime
        for _ in range(job.profile_iters):
            runner.infer(feeds)
            runs.append(runner.perf_counts())
    model = job.model if job.model.endswith(".onnx") and not job.peer else None
    return {"file": None, **reduce_openvino_counts(runs, model, job.profile_top)}


def _stage_shares(trace: str, model: str) -> dict[str, float] | None:
    """Share of kernel time in pre-processing / backbones / distance tail (None on failure)."""
    try:
        return stage_shares(trace, model)
    except Exception as exc:  # a breakdown is context: never lose the timings for it
        logger.warning("profile stage breakdown of %s failed: %s", model, exc)
        return None


def _detector_class() -> Any:
    from stpm_edge.runtime import detector

    cls = getattr(detector, "Detector", None) or getattr(detector, "AnomalyDetector", None)
    if cls is None:
        raise BackendError("stpm_edge.runtime.detector has no Detector class")
    return cls


def encoded_frames(job: Job) -> list[bytes]:
    """``job.batch`` JPEG-encoded BGR frames (from ``job.images`` or synthetic, frame_size)."""
    import cv2

    width, height = job.frame_size
    frames = job.images or synthetic_frames(job.batch, height, width, job.seed)
    out = []
    for i in range(job.batch):
        ok, buf = cv2.imencode(".jpg", frames[i % len(frames)], [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ConfigError("cv2.imencode failed to encode a benchmark frame as JPEG")
        out.append(buf.tobytes())
    return out


def bench_e2e(job: Job) -> dict[str, Any]:
    """Time decode + pre-processing + inference + post-processing through the Detector."""
    from stpm_edge.runtime.image import decode_bgr

    rss0 = current_rss_mb()
    buffers = encoded_frames(job)
    backend, extra = runner_args(job.backend)
    detector = _detector_class()(job.model, backend=backend, threads=job.threads, **extra)

    def step() -> Any:
        frames = [decode_bgr(buf) for buf in buffers]  # the decode every tool uses
        return detector.predict(frames)  # a list of frames: one batched inference

    try:
        runner = getattr(detector, "runner", None)
        meta = runner.metadata() if runner is not None else model_metadata(job.model)
        samples = time_loop(step, job.policy)
        record = _base_record(job, meta, getattr(runner, "name", job.backend))
        record["frame_size"] = list(job.frame_size)
        record["gpu_peak_mb"] = _gpu_memory_mb(runner)
    finally:
        close = getattr(detector, "close", None)
        if callable(close):
            close()
    return _finish(record, samples, rss0)


def bench_torch(job: Job) -> dict[str, Any]:
    """Time the PyTorch eager model of checkpoint ``job.model`` (imports torch lazily)."""
    import torch

    from stpm_edge.checkpoint import load_model_from_checkpoint

    if job.threads:
        torch.set_num_threads(job.threads)
    cuda = torch.cuda.is_available() and job.backend != "torch-cpu"
    device = torch.device("cuda" if cuda else "cpu")
    rss0 = current_rss_mb()
    model = load_model_from_checkpoint(job.model).to(device).eval()
    height, width = model.size
    mean = torch.tensor(model.config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.config.std, device=device).view(1, 3, 1, 1)
    rng = np.random.default_rng(job.seed)
    frames = rng.integers(0, 256, (job.batch, height, width, 3), dtype=np.uint8)

    def step() -> tuple[np.ndarray, np.ndarray]:
        # Same work as the fused graph: uint8 BGR NHWC -> normalised RGB NCHW -> map + score.
        x = torch.from_numpy(frames).to(device).flip(-1).permute(0, 3, 1, 2).float() / 255.0
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=cuda):
            amap, score = model.score_map((x - mean) / std)
        return amap.float().cpu().numpy(), score.float().cpu().numpy()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    samples = time_loop(step, job.policy)
    record = {
        **_base_record(job, {}, "torch-cuda" if cuda else "torch-cpu"),
        "backend": "torch-cuda" if cuda else "torch-cpu",
        "precision": "fp16-autocast" if cuda else "fp32",
        "layout": None,
        "input_size": [height, width],
    }
    record["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return _finish(record, samples, rss0)


_MODE_FN: dict[str, Callable[[Job], dict[str, Any]]] = {
    "model": bench_model,
    "e2e": bench_e2e,
    "torch": bench_torch,
}


def run_job(job: Job) -> dict[str, Any]:
    """Measure one configuration and return its report.json record (see benchmarks/README.md)."""
    if job.mode not in _MODE_FN:
        raise ConfigError(note(f"unknown benchmark mode {job.mode!r}", f"use one of {MODES}"))
    logger.info(
        "benchmark %s: %s backend=%s batch=%d threads=%s",
        job.mode,
        Path(job.model).name,
        job.backend,
        job.batch,
        job.threads,
    )
    return _MODE_FN[job.mode](job)


def round_job(job: Job, rounds: int, first: bool) -> Job:
    """``job`` as one of ``rounds`` interleaved rounds: 1/rounds of its timing budget (``--iters``
    rounded up; a time budget still runs at least ``min_iters``), profiled in the first round."""
    if rounds <= 1:
        return job
    p = job.policy
    policy = replace(
        p,
        iters=None if p.iters is None else -(-p.iters // rounds),  # exact: the caller's count
        seconds=None if p.seconds is None else p.seconds / rounds,
        default_iters=max(p.min_iters, -(-p.default_iters // rounds)),
        default_seconds=p.default_seconds / rounds,
    )
    return replace(job, policy=policy, profile_prefix=job.profile_prefix if first else None)


def merge_rounds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One record from the rounds of one configuration: the first round's record (load time,
    profile, memory) with the latency statistics of all rounds' samples pooled, plus
    ``rounds`` and ``round_p50_ms`` (how far the machine drifted between rounds)."""
    if len(records) == 1:
        return records[0]
    samples = [s for r in records for s in r["samples_ms"]]
    merged = dict(records[0])
    stats = LatencyStats.from_samples(samples)
    merged.update(
        iters=stats.count,
        latency_ms=stats.as_dict(),
        throughput_ips=stats.throughput(merged["batch"]),
        samples_ms=samples,
        peak_rss_mb=max(r["peak_rss_mb"] for r in records),
        rounds=len(records),
        round_p50_ms=[r["latency_ms"]["p50"] for r in records],
    )
    return merged


def _run_job_safely(job: Job) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) or (None, error text): what a subprocess sends back (errors pickle badly)."""
    try:
        return run_job(job), None
    except StpmEdgeError as exc:
        return None, str(exc)


def run_job_isolated(job: Job) -> dict[str, Any]:
    """``run_job`` in a fresh ``spawn`` process, so ``peak_rss_mb`` belongs to this job alone."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        record, error = pool.submit(_run_job_safely, replace(job)).result()
    if error is not None:
        raise BackendError(error)
    assert record is not None
    return record


def add_compute_metrics(
    record: dict[str, Any], gflop_per_image: float | None, roofline: dict[str, Any]
) -> dict[str, Any]:
    """Fill ``gflop_per_image``, ``achieved_gflops``, ``roofline_fraction``, ``peak_fraction``.

    The rooflines are CPU numbers: GPU records get ``None`` fractions. A record's thread count
    picks the matmul measured with the same threads when there is one; ``threads=None`` (the
    runtime's default) is compared with all usable CPUs. An int8 (bf16) record is compared with
    the int8 (bf16) matmul roofline when one was measured, everything else with the float32 one;
    ``roofline_ref`` names the one used. An INT8 file run with bf16 float parts (``openvino-bf16``,
    ``graph_precision`` int8) counts as int8: its convolutions run in int8 (against the bf16
    matmul such records read 142-178 % of the roofline).
    """
    record["gflop_per_image"] = gflop_per_image
    achieved = None if gflop_per_image is None else gflop_per_image * record["throughput_ips"]
    record["achieved_gflops"] = achieved
    record["roofline_fraction"] = None
    record["peak_fraction"] = None
    if achieved is None or record.get("device") != "cpu":
        return record
    threads = record.get("threads") or roofline.get("usable_cpus") or 1
    precision = "int8" if record.get("graph_precision") == "int8" else record.get("precision")
    low = roofline.get(f"{precision}_matmul") if precision in ("int8", "bf16") else None
    if low:
        by_threads, best, ref_name = low.get("gops_by_threads") or {}, low.get("gops"), precision
    else:
        matmul = roofline.get("matmul") or {}
        by_threads, best, ref_name = (
            matmul.get("gflops_by_threads") or {},
            matmul.get("gflops"),
            "fp32",
        )
    ref = by_threads.get(str(threads), best)
    if ref:
        record["roofline_fraction"] = achieved / ref
        record["roofline_ref"] = f"{ref_name} matmul {ref:.1f} G/s"
    peak = roofline.get("theoretical")
    if peak:
        cores = roofline.get("usable_cpus") or threads
        record["peak_fraction"] = achieved / (peak["per_core_gflops"] * min(threads, cores))
    return record
