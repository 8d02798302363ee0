"""The reference run and one check per backend: parity (:mod:`.parity`), then batch-1 latency."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..check_arithmetic import check_runner_kwargs
from .check import FAIL, PASS, SKIP, Check
from .model import default_trt_version, int8_weights_check, stacked_int8_check, tensorrt_check
from .parity import Outputs, Reference, judge_parity

logger = logging.getLogger(__name__)

REFERENCE_BACKEND = "ort-cpu"


def _predict(detector: Any, frames: list[np.ndarray], chunk: int = 8) -> Outputs:
    preds = [
        p for i in range(0, len(frames), chunk) for p in detector.predict(frames[i : i + chunk])
    ]
    return Outputs(
        maps=np.stack([p.anomaly_map for p in preds]).astype(np.float64),
        scores=np.array([p.score for p in preds], np.float64),
        normalized=np.array([p.score_normalized for p in preds], np.float64),
    )


def measure_latency(detector: Any, frame: np.ndarray, seconds: float) -> dict[str, Any]:
    """Batch-1 ``runner.infer`` latency (host to host) for ``seconds`` (at least 10 runs)."""
    from stpm_edge.benchmarks.runner import LoopPolicy, time_loop
    from stpm_edge.benchmarks.stats import LatencyStats

    from ..preprocess import prepare_batch

    feeds = {detector.info.input_name: prepare_batch([frame], detector.info)}
    policy = LoopPolicy(warmup=3, seconds=max(seconds, 1e-9), min_iters=10)
    stats = LatencyStats.from_samples(time_loop(lambda: detector.runner.infer(feeds), policy))
    return {"iters": stats.count, "p50_ms": stats.p50, "p99_ms": stats.p99}


def _detector(path: Path, backend: str, **runner_kwargs: Any) -> Any:
    from ..detector import AnomalyDetector

    return AnomalyDetector(path, backend=backend, **runner_kwargs)


def _parity_text(data: dict[str, Any], latency: dict[str, Any]) -> str:
    tol = data["tolerance"]
    return (
        f"map error {data['map_error_of_peak']:.2e} of peak (<= {tol['map_rel']:g}), score "
        f"error {data['score_error_rel']:.2e} (<= {tol['score_rel']:g}), verdicts "
        f"{data['verdicts_agree']}/{data['frames']}, finite {data['finite']}; p50 "
        f"{latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms"
    )


def check_backend(backend: str, path: Path, ref: Reference, seconds: float) -> Check:
    """Run ``path`` on ``backend``: parity against ``ref``, then the batch-1 latency."""
    name = f"backend {backend}"
    try:
        with _detector(path, backend) as det:
            got = _predict(det, ref.frames)
            precision = det.info.precision
            latency = measure_latency(det, ref.frames[0], seconds)
            runner = det.name
    except Exception as exc:  # any backend failure is a finding of the report, not a crash
        logger.debug("%s failed", name, exc_info=True)
        return Check(name, FAIL, f"{type(exc).__name__}: {exc}", {"model": str(path)})
    status, data, why = judge_parity(ref, got, precision)
    data.update(model=str(path), runner=runner, precision=precision, latency=latency)
    if "error" in data:
        return Check(name, FAIL, data["error"], data)
    if data.get("judged") is False:
        return Check(name, status, f"{why}; p50 {latency['p50_ms']:.2f} ms", data)
    detail = _parity_text(data, latency)
    return Check(name, status, f"{why}: {detail}" if why else detail, data)


def synthetic(count: int, height: int, width: int) -> list[np.ndarray]:
    """The project's one synthetic-frame generator (uint8 BGR), starting with the hard inputs
    (black, white, per-pixel noise, a gradient) where numerics break first."""
    from ..image import synthetic_frames

    return list(synthetic_frames(count, height, width, seed=0, extremes=True))


def folder_frames(folder: Path, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` images of ``folder`` as uint8 BGR frames (read by the image module)."""
    from stpm_edge.benchmarks.runner import load_images

    return load_images(folder, limit=limit)


def backend_plan(
    requested: list[str] | None, available: list[str], model: Path, engine: Path | None
) -> list[tuple[str, Path | None, str]]:
    """``(backend, file to run or None = skip, why)`` for every backend to check."""
    plan = []
    for backend in requested or available:
        if backend == "tensorrt":
            why = "needs an engine built on this device: pass --engine model.engine"
            plan.append((backend, engine, "" if engine else why))
        else:
            plan.append((backend, model, ""))
    if engine is not None and "tensorrt" not in (requested or available):
        plan.append(("tensorrt", engine, ""))  # asked for: an unavailable TensorRT is a failure
    return plan


def reference_run(args: argparse.Namespace, reference: Path) -> Reference:
    """Frames (synthetic, then ``--images``) and the reference outputs on ORT CPU, computed as
    the graph's target computes them (``check_arithmetic``: a TensorRT INT8 graph as written)."""
    as_target = check_runner_kwargs(reference, REFERENCE_BACKEND)
    with _detector(reference, REFERENCE_BACKEND, **as_target) as det:
        height, width = det.info.input_size
        frames = synthetic(args.frames, height, width)
        if args.images:
            frames += folder_frames(Path(args.images), args.max_images)
        return Reference(reference, det.info.precision, frames, args.frames, _predict(det, frames))


def model_checks(
    args: argparse.Namespace, env: dict[str, Any], metadata: dict[str, str] | None
) -> list[Check]:
    """TensorRT check, reference run, then one check per backend (``metadata``: MODEL's
    ``stpm.*`` props, :func:`.model.model_metadata`)."""
    from ..runners import available_backends

    model = Path(args.model)
    trt_version = args.trt_version or default_trt_version(env)
    checks = [tensorrt_check(model, trt_version, metadata)]
    for check in (int8_weights_check(model, env, metadata), stacked_int8_check(metadata)):
        checks += [check] if check is not None else []
    name = f"reference ({REFERENCE_BACKEND})"
    try:
        ref = reference_run(args, Path(args.reference) if args.reference else model)
    except Exception as exc:  # without a reference nothing can be compared: report and stop
        return [*checks, Check(name, FAIL, f"{type(exc).__name__}: {exc}")]
    detail = (
        f"{ref.path.name} ({ref.precision}): {len(ref.frames)} frames ({ref.synthetic} synthetic)"
    )
    data = {"model": str(ref.path), "precision": ref.precision, "frames": len(ref.frames)}
    checks.append(Check(name, PASS, detail, data))
    engine = Path(args.engine) if args.engine else None
    for backend, path, why in backend_plan(args.backends, available_backends(), model, engine):
        if path is None:
            checks.append(Check(f"backend {backend}", SKIP, why))
        else:
            checks.append(check_backend(backend, path, ref, args.seconds))
    return checks
