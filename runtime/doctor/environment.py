"""Environment facts for stpm-doctor: versions, devices, video I/O, Jetson, known-bad combinations.

Every probe is best effort: a missing or broken library becomes a value in the report, never an
exception (:func:`probe_environment`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-training",
)
MIN_JETSON_L4T = (36, 4)  # L4T R36.4 = JetPack 6.1, the first JetPack 6 with TensorRT 10.3


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

    from ..runners.trt import import_cudart

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


def major_minor(version: str | None) -> tuple[int, ...]:
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
    if jetson and jetson.get("l4t") and major_minor(jetson["l4t"]) < MIN_JETSON_L4T:
        out.append(
            f"L4T {jetson['l4t']} is older than R36.4 (JetPack 6.1): stpm-edge needs TensorRT "
            "10.3, which comes with JetPack 6.1 and later"
        )
    trt_version = env.get("tensorrt", {}).get("version")
    if trt_version and major_minor(trt_version) < (10, 0):
        out.append(f"TensorRT {trt_version}: the native runner needs TensorRT 10 or newer")
    cuda = env.get("cuda", {})
    if trt_version and not cuda.get("cuda_python"):
        out.append("TensorRT is importable but cuda-python is not: the native runner needs it")
    py_major, drv_major = major_minor(cuda.get("cuda_python")), major_minor(cuda.get("driver"))
    if cuda.get("cuda_python") and cuda.get("driver") and py_major[:1] > drv_major[:1]:
        out.append(
            f"cuda-python {cuda['cuda_python']} is newer than the driver's CUDA "
            f"{cuda['driver']}: install cuda-python<{drv_major[0] + 1} (JetPack 6: <13)"
        )
    return out
