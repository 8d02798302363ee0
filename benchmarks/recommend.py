"""``stpm-bench --recommend``: which backend/precision/file to deploy here, from the measurements.

The pick is the fastest measured configuration (mean latency at the smallest batch measured, the
camera's case) whose outputs pass a parity check: the same file run on the candidate backend and
on ONNX Runtime's CPU provider (the reference engine) must give the same OK/NG verdict on every
frame and anomaly maps within :data:`MAP_TOLERANCE` of each map's peak. This catches an engine or
a precision choice (OpenVINO bf16) that changes results; the accuracy of an INT8 *file* against
FP32 is the export's gate, not re-checked here (the recommendation names the file's precision).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.benchmarks.runner import _create_runner, _meta_value, make_feeds
from stpm_edge.runtime.check_arithmetic import FUSED, check_runner_kwargs

logger = logging.getLogger(__name__)

MAP_TOLERANCE = 0.05  # max |map - reference map| / peak of the reference map, worst frame
REFERENCE_BACKEND = "ort-cpu"
PARITY_FRAMES = 4


def _outputs(
    model: str, backend: str, threads: int | None, images: Any, seed: int, **kw: Any
) -> tuple:
    with _create_runner(model, backend, threads, **kw) as runner:
        meta = runner.metadata()
        feeds = make_feeds(runner.input_spec(), PARITY_FRAMES, meta, images, seed)
        return runner.infer(feeds), meta


def parity(
    model: str, backend: str, threads: int | None, images: Any = None, seed: int = 0
) -> dict[str, Any]:
    """Compare ``backend`` with ONNX Runtime CPU on the same frames of ``model``, the reference
    computed as the graph's target computes it (``check_arithmetic``: a TensorRT INT8 graph as
    written, so ONNX Runtime CPU's own fused run of it is compared too).

    Returns:
        ``{"passed", "verdicts_match", "max_rel_map_error", "reference", "frames"}`` or, when a
        run fails, ``{"passed": False, "error": str}``.
    """
    result: dict[str, Any] = {"reference": REFERENCE_BACKEND, "frames": PARITY_FRAMES}
    if not model.endswith(".onnx"):
        # an engine has no ONNX Runtime twin here (TensorRT checks it against the ONNX at build)
        return {**result, "passed": True, "verdicts_match": True, "max_rel_map_error": 0.0}
    as_target = check_runner_kwargs(model, REFERENCE_BACKEND)
    if backend == REFERENCE_BACKEND and as_target.get("graph_optimization", FUSED) == FUSED:
        return {**result, "passed": True, "verdicts_match": True, "max_rel_map_error": 0.0}
    try:
        got, meta = _outputs(model, backend, threads, images, seed)
        want, _ = _outputs(model, REFERENCE_BACKEND, threads, images, seed, **as_target)
    except Exception as exc:  # report it as a failed check; the timings stay valid
        return {**result, "passed": False, "error": str(exc).splitlines()[0]}
    threshold = float(_meta_value(meta, "stpm.image_threshold", 0.5))
    verdicts = bool(np.array_equal(got["score"] >= threshold, want["score"] >= threshold))
    ref_map = want["anomaly_map"].astype(np.float64)
    diff = np.abs(got["anomaly_map"].astype(np.float64) - ref_map).reshape(len(ref_map), -1)
    peaks = np.abs(ref_map).reshape(len(ref_map), -1).max(axis=1).clip(min=1e-12)
    rel = float((diff.max(axis=1) / peaks).max())
    return {**result, "passed": verdicts and rel <= MAP_TOLERANCE, "verdicts_match": verdicts,
            "max_rel_map_error": rel}  # fmt: skip


def _key(rec: dict[str, Any]) -> tuple[str, str, int | None]:
    return rec["model"], rec["backend"], rec.get("threads")


def candidates(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our ``model``-mode records at the smallest batch measured, fastest first (never a
    ``--peer`` graph: foreign files are timed, not deployed)."""
    model_recs = [r for r in records if r.get("mode") == "model" and not r.get("peer")]
    if not model_recs:
        return []
    smallest = min(r["batch"] for r in model_recs)
    chosen = [r for r in model_recs if r["batch"] == smallest]
    return sorted(chosen, key=lambda r: r["latency_ms"]["mean"])


def recommend(
    records: list[dict[str, Any]], images: Any = None, seed: int = 0, check: Any = None
) -> dict[str, Any] | None:
    """The fastest configuration that passes :func:`parity` (checked fastest-first).

    Args:
        records: the run's records (report.json ``records``).
        images, seed: frames for the parity check (as the benchmark used).
        check: ``check(model, backend, threads) -> parity dict``; default :func:`parity`.

    Returns:
        ``{"model", "backend", "precision", "runner", "threads", "batch", "latency_ms_mean",
        "latency_ms_p50", "throughput_ips", "parity", "gate" (:func:`gate_note`),
        "rejected": [...], "ranking": [...]}`` or
        None when nothing was measured or nothing passes.
    """
    check = check or (lambda m, b, t: parity(m, b, t, images, seed))
    ranked = candidates(records)
    rejected, results = [], {}
    for rec in ranked:
        key = _key(rec)
        if key not in results:
            results[key] = check(*key)
        if results[key].get("passed"):
            return {
                "model": rec["model"], "backend": rec["backend"],
                "precision": rec.get("precision"), "runner": rec.get("runner"),
                "threads": rec.get("threads"), "batch": rec["batch"],
                "latency_ms_mean": rec["latency_ms"]["mean"],
                "latency_ms_p50": rec["latency_ms"]["p50"],
                "throughput_ips": rec["throughput_ips"], "parity": results[key],
                "gate": gate_note(rec["model"]), "rejected": rejected,
                "ranking": [{"model": r["model"], "backend": r["backend"],
                             "precision": r.get("precision"), "threads": r.get("threads"),
                             "throughput_ips": r["throughput_ips"]} for r in ranked],
            }  # fmt: skip
        rejected.append({"model": rec["model"], "backend": rec["backend"], "parity": results[key]})
    return None


def gate_note(model: str) -> str | None:
    """What the file says about its INT8 accuracy against FP32 (``stpm-export --gate`` records
    it), for an INT8 ``.onnx``; ``None`` for other files. Parity here compares runtimes on one
    file, so an INT8 file's own accuracy is only known from its gate."""
    if not model.endswith(".onnx") or not Path(model).is_file():
        return None
    from stpm_edge.runtime.metadata import read_model_metadata

    meta = read_model_metadata(model)
    if meta.get("stpm.precision") != "int8":
        return None
    gate = _meta_value(meta, "stpm.int8_gate")
    if not isinstance(gate, dict):
        return (
            "an INT8 file without an accuracy gate: its accuracy against FP32 was not measured; "
            "export it with `--gate DATA --gate-category CAT` before deploying"
        )
    return (
        f"INT8 accuracy gate passed at export on {gate.get('images')} test images of "
        f"{gate.get('category')}: image AUROC loss {gate.get('image_loss', float('nan')):+.4f}, "
        f"pixel {gate.get('pixel_loss', float('nan')):+.4f}"
    )


def render(rec: dict[str, Any] | None) -> list[str]:
    """The report.md section (markdown lines)."""
    lines = ["## Recommendation", ""]
    if rec is None:
        return lines + ["No measured configuration passed the parity check.", ""]
    threads = "default" if rec["threads"] is None else rec["threads"]
    lines += [
        f"Deploy **{Path(rec['model']).name}** on **{rec['backend']}** "
        f"({rec['precision'] or '?'}, {threads} threads): {rec['throughput_ips']:.1f} img/s, "
        f"p50 {rec['latency_ms_p50']:.2f} ms at batch {rec['batch']} — the fastest measured "
        f"configuration whose verdicts and maps match ONNX Runtime CPU on the same file "
        f"(map error {rec['parity'].get('max_rel_map_error', 0.0):.1e} of peak, tolerance "
        f"{MAP_TOLERANCE}).",
        "",
    ]
    if rec.get("gate"):
        lines += [f"The file: {rec['gate']}.", ""]
    for r in rec["rejected"]:
        why = r["parity"].get("error") or (
            f"verdicts match={r['parity'].get('verdicts_match')}, map error "
            f"{r['parity'].get('max_rel_map_error', float('nan')):.1e}"
        )
        lines.append(f"- faster but rejected: {Path(r['model']).name} {r['backend']} ({why})")
    lines += ["", "Ranking (fastest first):", ""]
    lines += [
        f"{i}. {Path(r['model']).name} {r['backend']} {r['precision'] or '?'} "
        f"t{r['threads'] or 'default'}: {r['throughput_ips']:.1f} img/s"
        for i, r in enumerate(rec["ranking"], 1)
    ]
    return lines + [""]
