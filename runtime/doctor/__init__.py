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

Modules, one job each: :mod:`.environment` (the facts and known-bad combinations),
:mod:`.model` (metadata and the TensorRT rules), :mod:`.parity` (tolerances and the comparison),
:mod:`.backends` (the reference run, one check per backend, latency), :mod:`.report` (JSON,
markdown, the files), :mod:`.cli` (``stpm-doctor``); :mod:`.check` holds the report row.
"""

from .backends import REFERENCE_BACKEND, backend_plan, check_backend, model_checks, reference_run
from .check import FAIL, PASS, SKIP, WARN, Check
from .cli import build_parser, main, run
from .environment import (
    environment_warnings,
    jetson_info,
    parse_l4t_release,
    parse_video_io,
    probe_environment,
)
from .model import default_trt_version, int8_target, summarize_violations, tensorrt_check
from .parity import TOLERANCES, Outputs, Reference, Tolerance, compare_outputs, judge_parity
from .report import REPORT_FILES, SCHEMA, build_report, render_markdown

__all__ = [
    "FAIL",
    "PASS",
    "REFERENCE_BACKEND",
    "REPORT_FILES",
    "SCHEMA",
    "SKIP",
    "TOLERANCES",
    "WARN",
    "Check",
    "Outputs",
    "Reference",
    "Tolerance",
    "backend_plan",
    "build_parser",
    "build_report",
    "check_backend",
    "compare_outputs",
    "default_trt_version",
    "environment_warnings",
    "int8_target",
    "jetson_info",
    "judge_parity",
    "main",
    "model_checks",
    "parse_l4t_release",
    "parse_video_io",
    "probe_environment",
    "reference_run",
    "render_markdown",
    "run",
    "summarize_violations",
    "tensorrt_check",
]
