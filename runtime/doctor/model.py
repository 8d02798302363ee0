"""The model checks that need only onnx: its ``stpm.*`` metadata and the TensorRT parser rules."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stpm_edge.errors import note

from .check import FAIL, PASS, SKIP, WARN, Check
from .environment import major_minor

logger = logging.getLogger(__name__)

# x86 CPUs whose integer dot products accumulate u8 x s8 in 32 bits (else in int16 pairs)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def model_metadata(path: Path) -> dict[str, str] | None:
    """The ``stpm.*`` props of MODEL (how it was exported), None when onnx cannot read them."""
    try:
        from stpm_edge.runtime.metadata import read_model_metadata

        return read_model_metadata(path)
    except Exception as exc:  # onnx missing or a broken file: the checks report the latter
        logger.debug("metadata of %s unreadable: %s", path, exc)
        return None


def default_trt_version(env: dict[str, Any]) -> str:
    """The installed TensorRT's ``major.minor``, else 10.3 (JetPack 6.1/6.2)."""
    version = env.get("tensorrt", {}).get("version")
    parts = major_minor(version)
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


def int8_weights_check(
    model: Path, env: dict[str, Any], meta: dict[str, str] | None
) -> Check | None:
    """Whether an INT8 graph's integer kernels saturate on this CPU; None for a float graph.

    x86 CPUs without VNNI add each pair of u8 x s8 products in int16 and saturate above 32767,
    which 8-bit weights reach and the 7-bit weights ``stpm-export --int8`` writes cannot.
    """
    if (meta or {}).get("stpm.precision") != "int8":
        return None
    name = "INT8 weights on this CPU"
    try:
        import onnx

        from stpm_edge.export.int8_weights import PAIR_SAFE_WEIGHT, largest_dense_weight

        largest = largest_dense_weight(onnx.load(model))
    except Exception as exc:  # onnx missing or an unreadable graph: the other checks say which
        return Check(name, SKIP, f"skipped: {type(exc).__name__}: {exc}")
    flags = set(env.get("cpu", {}).get("flags") or [])
    data = {"largest_weight": largest, "cpu_flags": sorted(flags & {"avx2", *VNNI_FLAGS})}
    if largest is None or largest <= PAIR_SAFE_WEIGHT:
        why = f"dense convolution weights within 7 bits (|w| <= {PAIR_SAFE_WEIGHT})"
        return Check(name, PASS, f"{why}: the same outputs on CPUs with and without VNNI", data)
    if "avx2" not in flags or flags & set(VNNI_FLAGS):
        why = "this CPU has VNNI" if flags & set(VNNI_FLAGS) else "not an AVX2 CPU"
        detail = f"8-bit weights (|w| up to {largest}); {why}, so no int16 saturation here"
        return Check(name, PASS, detail, data)
    detail = note(
        f"8-bit weights (|w| up to {largest}) on an x86 CPU without VNNI: ONNX Runtime's and "
        "OpenVINO's integer kernels saturate here, so scores differ from a VNNI CPU's (measured "
        "7-9 % from float32 against 2 %)",
        "re-export with this version's stpm-export --int8 (7-bit weights, the same outputs on "
        "every x86 CPU)",
    )
    return Check(name, WARN, detail, data)


def stacked_int8_check(meta: dict[str, str] | None) -> Check | None:
    """Whether a stacked INT8 graph had its student's streams brought to the teacher's ranges
    (``stpm.student_stream_scales``); None for any other graph.

    Stacked, one INT8 scale per tensor holds both networks: before stpm-edge matched the
    streams, a student several times smaller than its teacher kept two or more bits fewer.
    """
    meta = meta or {}
    if meta.get("stpm.precision") != "int8" or meta.get("stpm.layout") != "stacked":
        return None
    name = "stacked INT8 ranges"
    scales = meta.get("stpm.student_stream_scales")
    if scales:
        try:
            factors = ", ".join(f"{float(x):.3g}" for x in json.loads(scales))
        except (ValueError, TypeError):
            return Check(name, WARN, f"stpm.student_stream_scales is unreadable: {scales!r}")
        return Check(name, PASS, f"student streams matched to the teacher's (factors {factors})")
    detail = note(
        "stacked INT8 graph exported before its student's streams were matched to the teacher's "
        "ranges: it scores farther from float32 than a separate graph (measured: largest map "
        "error 14-44 % of the peak against 4-11 %)",
        "re-export with this version's stpm-export --int8 (it matches them), or --layout separate",
    )
    return Check(name, WARN, detail)
