"""``stpm-doctor``: the one command a first GPU or Jetson user runs and attaches to a bug report.

    stpm-doctor                                  # the environment only
    stpm-doctor model.onnx --out doctor/         # + TensorRT check, then parity and latency per backend
    stpm-doctor int8.onnx --reference fp32.onnx --images parts/ --engine model.engine

Steps, each a row of the report:

1. **Environment**: OS, Python, CPU (model, SIMD flags), NVIDIA GPUs and driver (``nvidia-smi``),
   CUDA runtime and driver versions (cuda-python), TensorRT, ONNX Runtime and its execution
   providers, OpenVINO, OpenCV's video I/O (GStreamer, FFmpeg, V4L2), Jetson model, L4T release
   and power mode. Known-bad combinations become warnings (both ``onnxruntime`` and
   ``onnxruntime-gpu`` installed, a pip OpenCV without GStreamer on a Jetson, ...).
2. **TensorRT compatibility** of MODEL (:mod:`stpm_edge.export.trt_check`, needs only onnx); a
   warning only for an INT8 graph exported for another target (``stpm.int8_target``).
3. **Every backend that loads here** (``available_backends()``; ``tensorrt`` needs ``--engine``):
   the detector's outputs on synthetic frames (and ``--images``) against the reference, i.e. the
   same ONNX (or ``--reference``) on ONNX Runtime's CPU provider: the map error relative to the
   reference map's peak, the score error relative to the largest reference score, and verdict
   agreement (:data:`TOLERANCES`, per precision); then batch-1 latency p50/p99 for ``--seconds``.
   A reference of another precision is compared on the ``--images`` only (:func:`judge_parity`).

Writes ``doctor.md`` and ``doctor.json`` to ``--out`` (never over an earlier report without
``--force``) and prints the markdown. Exit code: 0 every check passed (warnings allowed), 1 a
check failed (a TensorRT rule violated, a backend that errors, parity beyond tolerance), 2 a usage
error. Torch-free, like the rest of :mod:`stpm_edge.runtime`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import ConfigError, OutputExistsError, note

logger = logging.getLogger(__name__)

SCHEMA = "stpm-doctor/1"
PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
REPORT_FILES = ("doctor.md", "doctor.json")
REFERENCE_BACKEND = "ort-cpu"
ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-training",
)
MIN_JETSON_L4T = (36, 4)  # L4T R36.4 = JetPack 6.1, the first JetPack 6 with TensorRT 10.3


@dataclass(frozen=True)
class Tolerance:
    """How far a backend may stray from the reference, for one model precision.

    Attributes:
        map_rel: max ``|map - ref_map|`` over all frames / max ``|ref_map|`` (the map's peak).
        score_rel: max ``|score - ref_score|`` / max ``|ref_score|`` over the frames.
        verdict_band: a verdict may differ from the reference's only on a frame whose reference
            ``score_normalized`` lies within this distance of the 0.5 decision point.
    """

    map_rel: float
    score_rel: float
    verdict_band: float


#: Per precision of the model checked. fp32 leaves room for TF32 convolutions (on by default in
#: cuDNN/TensorRT on Ampere and newer); fp16 is ~10x the 0.94 % of peak measured for the demo
#: graphs on ORT CPU against fp32; int8 against an fp32 ``--reference`` is bounded loosely and
#: guards against garbage (a graph read with the wrong INT8 types is off by far more): the demo's
#: brick model (20 epochs, 256 px) measured 13-16 % of peak on the map and 6-7 % on the score on
#: real parts, for both INT8 targets, with every verdict equal. Initial values, not yet measured
#: on a GPU: a real device run may tune them (say so in the bug report).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(map_rel=5e-3, score_rel=5e-3, verdict_band=0.01),
    "fp16": Tolerance(map_rel=5e-2, score_rel=3e-2, verdict_band=0.02),
    "int8": Tolerance(map_rel=0.35, score_rel=0.15, verdict_band=0.05),
}


@dataclass
class Check:
    """One row of the report: what was checked, its status and why."""

    name: str
    status: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


# -- environment ---------------------------------------------------------------------------------
def _dist_version(*names: str) -> str | None:
    """Version of the first installed distribution among ``names`` (package metadata only)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _guarded(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run an optional probe; a library that is broken on import is reported, never fatal."""
    try:
        return probe()
    except Exception as exc:  # third-party imports raise anything (OSError from a .so, ...)
        logger.debug("%s failed", probe.__name__, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _cuda_version(call: Callable[[], tuple[Any, int]]) -> str | None:
    """``cudaRuntimeGetVersion``-style call -> ``"12.6"`` (None on error or 0 = no driver)."""
    err, value = call()
    if int(getattr(err, "value", err)) != 0 or not value:
        return None
    return f"{value // 1000}.{value % 1000 // 10}"


def cuda_info() -> dict[str, Any]:
    """cuda-python's version, and the CUDA runtime/driver versions it reports."""
    from stpm_edge.errors import BackendError

    from .runners.trt import import_cudart

    info: dict[str, Any] = {"cuda_python": _dist_version("cuda-python", "cuda-bindings")}
    try:
        cudart = import_cudart()
    except BackendError:
        return {**info, "runtime": None, "driver": None}
    info["runtime"] = _cuda_version(cudart.cudaRuntimeGetVersion)
    info["driver"] = _cuda_version(cudart.cudaDriverGetVersion)
    return info


def tensorrt_info() -> dict[str, Any]:
    """TensorRT's Python version (JetPack's lives in the system Python, without pip metadata)."""
    try:
        import tensorrt
    except ImportError:
        return {"version": None}
    return {"version": getattr(tensorrt, "__version__", None)}


def onnxruntime_info() -> dict[str, Any]:
    """ONNX Runtime version, execution providers and every ORT distribution installed."""
    dists = {n: v for n in ORT_DISTRIBUTIONS if (v := _dist_version(n)) is not None}
    try:
        import onnxruntime
    except ImportError:
        return {"version": None, "providers": [], "distributions": dists}
    return {
        "version": onnxruntime.__version__,
        "providers": list(onnxruntime.get_available_providers()),
        "distributions": dists,
    }


def openvino_info() -> dict[str, Any]:
    """OpenVINO version and devices, when importable."""
    try:
        import openvino
    except ImportError:
        return {"version": None}
    return {
        "version": openvino.get_version(),
        "devices": list(openvino.Core().available_devices),
    }


def parse_video_io(build_info: str) -> dict[str, str]:
    """``GStreamer``/``FFMPEG``/``v4l/v4l2`` lines of ``cv2.getBuildInformation()``, e.g.
    ``{"gstreamer": "NO", "ffmpeg": "YES", "v4l2": "YES (linux/videodev2.h)"}``."""
    keys = {"gstreamer": "gstreamer", "ffmpeg": "ffmpeg", "v4l/v4l2": "v4l2", "v4l2": "v4l2"}
    found = {}
    for line in build_info.splitlines():
        match = re.match(r"\s*([\w/]+):\s*(.+?)\s*$", line)
        if match and match.group(1).lower() in keys:
            found.setdefault(keys[match.group(1).lower()], match.group(2))
    return found


def opencv_info() -> dict[str, Any]:
    """OpenCV version, where its module lives (pip wheel or JetPack) and its video I/O."""
    import cv2

    return {
        "version": cv2.__version__,
        "module": getattr(cv2, "__file__", None),
        "distribution": _dist_version(
            "opencv-python-headless", "opencv-python", "opencv-contrib-python"
        ),
        "video_io": parse_video_io(cv2.getBuildInformation()),
    }


def parse_l4t_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.3, ...`` (/etc/nv_tegra_release) -> ``"36.4.3"``."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def jetson_info(
    release_file: Path = Path("/etc/nv_tegra_release"),
    model_file: Path = Path("/proc/device-tree/model"),
) -> dict[str, Any] | None:
    """Jetson module and L4T release, None on anything that is not a Jetson."""
    try:
        release = release_file.read_text(errors="replace")
    except OSError:
        release = None
    try:
        model = model_file.read_bytes().decode(errors="replace").rstrip("\x00").strip()
    except OSError:
        model = None
    if release is None and not (model and "jetson" in model.lower()):
        return None
    return {"model": model, "l4t": parse_l4t_release(release) if release else None}


def probe_environment() -> dict[str, Any]:
    """Everything the report's ``environment`` object holds (best effort, never raises)."""
    from stpm_edge.benchmarks.environment import capture_environment

    env = _guarded(capture_environment)
    env["cuda"] = _guarded(cuda_info)
    env["tensorrt"] = _guarded(tensorrt_info)
    env["onnxruntime"] = _guarded(onnxruntime_info)
    env["openvino"] = _guarded(openvino_info)
    env["opencv"] = _guarded(opencv_info)
    env["jetson"] = jetson_info()
    return env


def _major_minor(version: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version or "")[:2])


def environment_warnings(env: dict[str, Any]) -> list[str]:
    """Known-bad combinations, each with its fix (see docs/deploy.md, Jetson)."""
    out = []
    dists = env.get("onnxruntime", {}).get("distributions") or {}
    if len(dists) > 1:
        out.append(
            f"several ONNX Runtime packages are installed ({', '.join(sorted(dists))}): they "
            "share the `onnxruntime` module and the last one installed wins (often the CPU one, "
            "hiding the CUDA/TensorRT providers); pip uninstall all of them, then install one"
        )
    jetson = env.get("jetson")
    gstreamer = str(env.get("opencv", {}).get("video_io", {}).get("gstreamer", ""))
    if jetson and not gstreamer.upper().startswith("YES"):
        out.append(
            "this Jetson's cv2 has no GStreamer (pip OpenCV wheels are built without it, "
            "opencv/opencv-python#524): CSI cameras will not open; pip uninstall "
            "opencv-python opencv-python-headless in the venv so JetPack's cv2 is used"
        )
    if jetson and jetson.get("l4t") and _major_minor(jetson["l4t"]) < MIN_JETSON_L4T:
        out.append(
            f"L4T {jetson['l4t']} is older than R36.4 (JetPack 6.1): stpm-edge needs TensorRT "
            "10.3, which comes with JetPack 6.1 and later"
        )
    trt_version = env.get("tensorrt", {}).get("version")
    if trt_version and _major_minor(trt_version) < (10, 0):
        out.append(f"TensorRT {trt_version}: the native runner needs TensorRT 10 or newer")
    cuda = env.get("cuda", {})
    if trt_version and not cuda.get("cuda_python"):
        out.append("TensorRT is importable but cuda-python is not: the native runner needs it")
    py_major, drv_major = _major_minor(cuda.get("cuda_python")), _major_minor(cuda.get("driver"))
    if cuda.get("cuda_python") and cuda.get("driver") and py_major[:1] > drv_major[:1]:
        out.append(
            f"cuda-python {cuda['cuda_python']} is newer than the driver's CUDA "
            f"{cuda['driver']}: install cuda-python<{drv_major[0] + 1} (JetPack 6: <13)"
        )
    return out


# -- TensorRT check ------------------------------------------------------------------------------
def default_trt_version(env: dict[str, Any]) -> str:
    """The installed TensorRT's ``major.minor``, else 10.3 (JetPack 6.1/6.2)."""
    version = env.get("tensorrt", {}).get("version")
    parts = _major_minor(version)
    return ".".join(str(p) for p in parts) if len(parts) == 2 else "10.3"


def summarize_violations(
    violations: list[Any], formatter: Callable[[list[Any]], str], first: int = 5
) -> str:
    """Count per rule, then the first few in full (a bad INT8 graph has hundreds; the full list
    is in doctor.json)."""
    counts: dict[str, int] = {}
    for v in violations:
        counts[v.rule] = counts.get(v.rule, 0) + 1
    rules = ", ".join(f"{rule} x{n}" for rule, n in counts.items())
    text = f"{len(violations)} violation(s): {rules}\n{formatter(violations[:first])}"
    return text + ("\n  ... (all of them in doctor.json)" if len(violations) > first else "")


def int8_target(meta: dict[str, str] | None) -> str | None:
    """``stpm.int8_target`` of an INT8 graph (``cpu``/``tensorrt``/``openvino``), else None."""
    meta = meta or {}
    return meta.get("stpm.int8_target") if meta.get("stpm.precision") == "int8" else None


def tensorrt_check(model: Path, trt_version: str, meta: dict[str, str] | None = None) -> Check:
    """The project's TensorRT parser rules on MODEL (onnx only, no TensorRT needed).

    A violation fails the run, except in an INT8 graph exported for another runtime
    (``--target cpu``/``openvino``): that graph is not meant for TensorRT, so it is a warning.
    """
    name = f"TensorRT {trt_version} compatibility"
    try:
        import onnx  # noqa: F401  (the check reads the graph with onnx)
    except ImportError:
        return Check(name, SKIP, "skipped: onnx not installed (pip install onnx)")
    try:
        from stpm_edge.export.trt_check import check_model, format_violations
    except ImportError as exc:
        return Check(name, SKIP, f"skipped: stpm_edge.export.trt_check unavailable ({exc})")
    try:
        violations = check_model(model, trt_version=trt_version)
    except Exception as exc:  # a graph the checker cannot read is a failure to report
        return Check(name, FAIL, f"{type(exc).__name__}: {exc}")
    if not violations:
        return Check(name, PASS, "no documented TensorRT ONNX-parser limit violated")
    rows = {"violations": [asdict(v) for v in violations]}
    detail = summarize_violations(violations, format_violations)
    target = int8_target(meta)
    if target not in (None, "tensorrt"):
        why = (
            f"INT8 graph exported for target {target}, not TensorRT (stpm-export --target tensorrt)"
        )
        return Check(name, WARN, f"{why}; {detail}", rows)
    return Check(name, FAIL, detail, rows)


# -- parity and latency --------------------------------------------------------------------------
@dataclass
class Outputs:
    """The detector's answers on the frames: maps (N, H, W), scores and normalised scores (N,)."""

    maps: np.ndarray
    scores: np.ndarray
    normalized: np.ndarray

    @property
    def ng(self) -> np.ndarray:
        return self.normalized >= 0.5

    def tail(self, start: int) -> Outputs:
        """The answers for frames ``start:`` (the image-folder part)."""
        return Outputs(self.maps[start:], self.scores[start:], self.normalized[start:])


@dataclass
class Reference:
    """The reference run every backend is compared with.

    ``frames`` are the synthetic frames first (``synthetic`` of them), then the ``--images``.
    """

    path: Path
    precision: str
    frames: list[np.ndarray]
    synthetic: int
    outputs: Outputs


def _predict(detector: Any, frames: list[np.ndarray], chunk: int = 8) -> Outputs:
    preds = [
        p for i in range(0, len(frames), chunk) for p in detector.predict(frames[i : i + chunk])
    ]
    return Outputs(
        maps=np.stack([p.anomaly_map for p in preds]).astype(np.float64),
        scores=np.array([p.score for p in preds], np.float64),
        normalized=np.array([p.score_normalized for p in preds], np.float64),
    )


def compare_outputs(ref: Outputs, got: Outputs, tol: Tolerance) -> tuple[bool, dict[str, Any]]:
    """Parity figures of ``got`` against ``ref`` and whether they are within ``tol``."""
    if got.maps.shape != ref.maps.shape:
        return False, {"error": f"map shape {got.maps.shape} != reference {ref.maps.shape}"}
    finite = bool(np.isfinite(got.maps).all() and np.isfinite(got.scores).all())
    map_err = float(np.abs(got.maps - ref.maps).max() / max(np.abs(ref.maps).max(), 1e-12))
    score_err = float(np.abs(got.scores - ref.scores).max() / max(np.abs(ref.scores).max(), 1e-12))
    flips = got.ng != ref.ng
    hard = flips & (np.abs(ref.normalized - 0.5) > tol.verdict_band)
    data = {
        "frames": int(len(ref.scores)),
        "finite": finite,
        "map_error_of_peak": map_err,
        "score_error_rel": score_err,
        "verdicts_agree": int((~flips).sum()),
        "verdict_flips_outside_band": int(hard.sum()),
        "tolerance": asdict(tol),
    }
    ok = finite and map_err <= tol.map_rel and score_err <= tol.score_rel and not hard.any()
    return ok, data


def judge_parity(ref: Reference, got: Outputs, precision: str) -> tuple[str, dict[str, Any], str]:
    """``(status, figures, note)`` of ``got`` against the reference.

    Same precision (a backend against ORT CPU): every frame is judged. A reference of another
    precision (``--reference fp32.onnx`` for an int8/fp16 model): only the ``--images`` frames are
    judged, because INT8 calibration ranges clip out-of-distribution frames (a white or noise
    frame) by design; the synthetic frames must still give finite outputs.
    """
    tol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    ok_all, all_frames = compare_outputs(ref.outputs, got, tol)
    if precision == ref.precision or "error" in all_frames:
        return (PASS if ok_all else FAIL), all_frames, ""
    note_ = f"{precision} against a {ref.precision} reference: judged on the --images frames"
    finite = bool(np.isfinite(got.maps).all() and np.isfinite(got.scores).all())
    if len(ref.frames) == ref.synthetic:
        why = (
            f"{precision} against a {ref.precision} reference: not judged without --images (the "
            "synthetic frames are out of distribution); "
            + ("outputs finite" if finite else "NaN/Inf in the outputs")
        )
        return (PASS if finite else FAIL), {**all_frames, "judged": False}, why
    ok, data = compare_outputs(ref.outputs.tail(ref.synthetic), got.tail(ref.synthetic), tol)
    data.update(all_frames=all_frames, finite=finite and data["finite"], judged=True)
    return (PASS if ok and finite else FAIL), data, note_


def measure_latency(detector: Any, frame: np.ndarray, seconds: float) -> dict[str, Any]:
    """Batch-1 ``runner.infer`` latency (host to host) for ``seconds`` (at least 10 runs)."""
    from stpm_edge.benchmarks.runner import LoopPolicy, time_loop
    from stpm_edge.benchmarks.stats import LatencyStats

    from .preprocess import prepare_batch

    feeds = {detector.info.input_name: prepare_batch([frame], detector.info)}
    policy = LoopPolicy(warmup=3, seconds=max(seconds, 1e-9), min_iters=10)
    stats = LatencyStats.from_samples(time_loop(lambda: detector.runner.infer(feeds), policy))
    return {"iters": stats.count, "p50_ms": stats.p50, "p99_ms": stats.p99}


def _detector(path: Path, backend: str) -> Any:
    from .detector import AnomalyDetector

    return AnomalyDetector(path, backend=backend)


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
    from .image import synthetic_frames

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
    """Frames (synthetic, then ``--images``) and the reference outputs on ORT CPU."""
    with _detector(reference, REFERENCE_BACKEND) as det:
        height, width = det.info.input_size
        frames = synthetic(args.frames, height, width)
        if args.images:
            frames += folder_frames(Path(args.images), args.max_images)
        return Reference(reference, det.info.precision, frames, args.frames, _predict(det, frames))


def model_checks(args: argparse.Namespace, env: dict[str, Any]) -> list[Check]:
    """TensorRT check, reference run, then one check per backend."""
    from .runners import available_backends

    model = Path(args.model)
    trt_version = args.trt_version or default_trt_version(env)
    checks = [tensorrt_check(model, trt_version, model_metadata(model))]
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


# -- report --------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _env_lines(env: dict[str, Any]) -> list[str]:
    cpu, ort, cv = env.get("cpu") or {}, env.get("onnxruntime") or {}, env.get("opencv") or {}
    cuda, jetson = env.get("cuda") or {}, env.get("jetson")
    gpus = env.get("gpus") or []
    gpu = "; ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in gpus) or "none found"
    rows = [
        ("OS", env.get("os")),
        ("Python", env.get("python")),
        (
            "CPU",
            f"{cpu.get('model')}, {cpu.get('usable_cpus')} usable CPUs, "
            f"{' '.join(cpu.get('flags') or []) or 'no SIMD flags read'}",
        ),
        ("NVIDIA GPU (nvidia-smi)", gpu),
        ("CUDA runtime / driver (cuda-python)", f"{cuda.get('runtime')} / {cuda.get('driver')}"),
        ("cuda-python", cuda.get("cuda_python")),
        ("TensorRT", (env.get("tensorrt") or {}).get("version")),
        ("ONNX Runtime", f"{ort.get('version')} {ort.get('distributions') or ''}"),
        ("ORT providers", ", ".join(ort.get("providers") or []) or None),
        ("OpenVINO", (env.get("openvino") or {}).get("version")),
        ("OpenCV", f"{cv.get('version')} ({cv.get('module')})"),
        ("OpenCV video I/O", json.dumps(cv.get("video_io"))),
        ("Jetson", f"{jetson['model']}, L4T {jetson['l4t']}" if jetson else "not a Jetson"),
        ("Jetson power mode", env.get("jetson_power_mode")),
    ]
    return [f"| {k} | {'—' if v is None else str(v).replace('|', '/')} |" for k, v in rows]


def render_markdown(report: dict[str, Any]) -> str:
    """doctor.md: verdict, environment table, warnings, one row per check."""
    lines = [
        f"# stpm-doctor: {'PASS' if report['ok'] else 'FAIL'}",
        "",
        f"`{report['command']}` at {report['created']} (stpm-edge {report['stpm_edge']})",
        "",
        "| | |",
        "|---|---|",
        *_env_lines(report["environment"]),
        "",
    ]
    model = report.get("model")
    if model:
        meta = model.get("metadata") or {}
        keys = ("stpm.precision", "stpm.layout", "stpm.backbone", "stpm.input_size", "stpm.version")
        facts = ", ".join(f"{k.split('.', 1)[1]} {meta[k]}" for k in keys if k in meta)
        lines += [f"Model: `{model['path']}` ({facts or 'metadata unreadable'})", ""]
    if report["warnings"]:
        lines += ["## Warnings", "", *[f"- {w}" for w in report["warnings"]], ""]
    if report["checks"]:
        lines += ["## Checks", "", "| check | status | detail |", "|---|---|---|"]
        for check in report["checks"]:
            detail = check["detail"].replace("|", "/").replace("\n", "<br>")
            lines.append(f"| {check['name']} | {check['status'].upper()} | {detail} |")
        lines.append("")
    lines.append("Attach doctor.md and doctor.json to a bug report.")
    return "\n".join(lines) + "\n"


def model_metadata(path: Path) -> dict[str, str] | None:
    """The ``stpm.*`` props of MODEL (how it was exported), None when onnx cannot read them."""
    try:
        from stpm_edge.benchmarks.runner import model_metadata as read

        return read(path)
    except Exception as exc:  # onnx missing or a broken file: the checks report the latter
        logger.debug("metadata of %s unreadable: %s", path, exc)
        return None


def build_report(
    args: argparse.Namespace,
    argv: Sequence[str],
    env: dict[str, Any],
    warnings: list[str],
    checks: list[Check],
) -> dict[str, Any]:
    from stpm_edge import __version__

    model = None
    if args.model:
        model = {"path": str(args.model), "metadata": model_metadata(Path(args.model))}
    return {
        "schema_version": SCHEMA,
        "command": shlex.join(["stpm-doctor", *argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stpm_edge": __version__,
        "ok": not any(c.status == FAIL for c in checks),
        "model": model,
        "environment": env,
        "warnings": warnings,
        "checks": [asdict(c) for c in checks],
    }


def _target_dir(out: str, force: bool) -> Path:
    """``--out``, refusing (before any work) to overwrite an earlier report."""
    folder = Path(out)
    existing = [name for name in REPORT_FILES if (folder / name).exists()]
    if existing and not force:
        raise OutputExistsError(
            note(f"{folder} already holds {', '.join(existing)}", "pass --force or another --out")
        )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(note(f"--out {folder} is a file", "give a folder"))
    return folder


# -- CLI -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from stpm_edge.cli.args import add_logging_args, add_output_args
    from stpm_edge.cli.common import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="stpm-doctor",
        description="Check this machine and an exported model on every backend it can load; "
        "writes doctor.md/doctor.json to attach to a bug report. Exit 1 when a check fails.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "model", nargs="?", help="model.onnx from stpm-export (omit: environment only)"
    )
    parser.add_argument(
        "--reference",
        help="ONNX run on ONNX Runtime CPU as the reference (default: MODEL itself), e.g. the "
        "fp32 export when MODEL is fp16/int8",
    )
    parser.add_argument("--engine", help="a TensorRT engine built from MODEL on this device")
    parser.add_argument("--images", help="folder of images compared on top of the synthetic frames")
    parser.add_argument("--max-images", type=int, default=32, help="images read from --images")
    parser.add_argument("--frames", type=int, default=8, help="synthetic frames compared")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="latency time per backend (at least 10 runs)"
    )
    parser.add_argument(
        "--backends",
        type=lambda s: [b.strip() for b in s.split(",") if b.strip()],
        help="comma-separated backends to check (default: every available one)",
    )
    parser.add_argument(
        "--trt-version", help="TensorRT rules to check against (default: installed, else 10.3)"
    )
    add_output_args(parser, help="folder for doctor.md and doctor.json", type=str, default=".")
    add_logging_args(parser)
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.frames < 1:
        raise ConfigError(note(f"--frames {args.frames}", "compare at least 1 synthetic frame"))
    for flag in ("model", "reference", "engine", "images"):
        value = getattr(args, flag)
        if value and not Path(value).exists():
            raise ConfigError(note(f"{flag} {value} not found", "check the path"))
    if args.model is None and (args.reference or args.engine or args.images):
        raise ConfigError(note("--reference/--engine/--images need MODEL", "pass model.onnx"))
    if args.model and Path(args.model).suffix.lower() != ".onnx":
        raise ConfigError(note(f"MODEL {args.model} is not .onnx", "pass engines with --engine"))


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _validate(args)
    folder = _target_dir(args.out, args.force)
    env = probe_environment()
    warnings = environment_warnings(env)
    checks = model_checks(args, env) if args.model else []
    report = build_report(args, argv, env, warnings, checks)
    markdown = render_markdown(report)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "doctor.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (folder / "doctor.md").write_text(markdown)
    print(markdown, end="")
    print(f"report written to {folder / 'doctor.md'} and {folder / 'doctor.json'}")
    return 0 if report["ok"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    from stpm_edge.cli.common import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda args: run(args, argv), build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
