"""The stpm-doctor report: the JSON object, its markdown rendering and the files written."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import ConfigError, OutputExistsError, note

from .check import FAIL, Check

SCHEMA = "stpm-doctor/1"
REPORT_FILES = ("doctor.md", "doctor.json")


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


def build_report(
    args: argparse.Namespace,
    argv: Sequence[str],
    env: dict[str, Any],
    warnings: list[str],
    checks: list[Check],
    metadata: dict[str, str] | None,
) -> dict[str, Any]:
    from stpm_edge import __version__

    model = None
    if args.model:
        model = {"path": str(args.model), "metadata": metadata}
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


def target_dir(out: str, force: bool) -> Path:
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


def write_report(folder: Path, report: dict[str, Any], markdown: str) -> None:
    """``doctor.json`` and ``doctor.md`` in ``folder`` (checked by :func:`target_dir` first)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "doctor.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (folder / "doctor.md").write_text(markdown)
