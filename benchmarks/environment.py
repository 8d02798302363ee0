"""Capture the machine a benchmark ran on, so a report can be read (and reproduced) later.

Everything here is best effort: a field that cannot be read is ``None``, never an error. External
tools (``nvidia-smi``, ``nvpmodel``) are called with argument lists (no shell) and a timeout.
Library versions come from package metadata: torch is never imported just to read its version.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Distributions whose versions a report states (first installed name of each tuple wins).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "onnx": ("onnx",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-libs"),
    "openvino": ("openvino",),
    "nncf": ("nncf",),
    "torch": ("torch",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
    "stpm-edge": ("stpm-edge",),
}

#: Environment variables that change threading (and therefore latency).
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "KMP_AFFINITY",
    "CUDA_VISIBLE_DEVICES",
)


def _run(argv: list[str], timeout: float = 10.0) -> str | None:
    """stdout of ``argv`` (no shell), or None when the tool is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("%s failed: %s", argv[0], exc)
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name, physical cores, MHz and SIMD flags from ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    physical: set[tuple[str, str]] = set()
    phys_id = core_id = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        fields.setdefault(key, value)
        if key == "physical id":
            phys_id = value
        elif key == "core id":
            core_id = value
            physical.add((phys_id or "0", core_id))
    model = fields.get("model name") or fields.get("Model") or fields.get("Hardware")
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    mhz = fields.get("cpu MHz")
    return {
        "model": model,
        "physical_cores": len(physical) or None,
        "current_mhz": float(mhz) if mhz else None,
        "flags": sorted(f for f in flags if f.startswith(("avx", "fma", "sse4", "asimd", "neon"))),
    }


def _max_clock_mhz() -> float | None:
    """Max CPU clock from cpufreq (kHz in sysfs), None when not exposed (VMs, containers)."""
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def cpu_info() -> dict[str, Any]:
    """CPU model, core counts, clocks and SIMD flags (``None`` for what is unreadable)."""
    try:
        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        info = {"model": platform.processor() or None, "physical_cores": None}
        info.update(current_mhz=None, flags=[])
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    info["logical_cpus"] = os.cpu_count()
    info["usable_cpus"] = len(affinity) if affinity is not None else os.cpu_count()
    info["max_mhz"] = _max_clock_mhz()
    return info


def gpu_info() -> list[dict[str, str]]:
    """One dict per NVIDIA GPU (name, driver, memory) from nvidia-smi; empty without one."""
    out = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,compute_cap",
            "--format=csv,noheader",
        ]
    )
    gpus = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        keys = ("name", "driver", "memory_total", "compute_capability")
        gpus.append(dict(zip(keys, parts, strict=False)))
    return gpus


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide the numbers (None if absent)."""
    versions: dict[str, str | None] = {}
    for label, dists in LIBRARIES.items():
        versions[label] = None
        for dist in dists:
            try:
                versions[label] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def capture_environment() -> dict[str, Any]:
    """Everything report.json's ``environment`` object holds (see benchmarks/README.md)."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "jetson_power_mode": _run(["nvpmodel", "-q"]),
        "libraries": library_versions(),
        "thread_env": {k: os.environ.get(k) for k in THREAD_VARS},
    }
