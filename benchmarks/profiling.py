"""Per-operator time: reduce an ONNX Runtime profiler trace, or TensorRT per-layer times.

ONNX Runtime (``SessionOptions.enable_profiling``) writes a JSON list of Chrome trace events. The
ones that matter have ``"cat": "Node"``, a ``"name"`` (node name + ``_kernel_time`` /
``_fence_before`` / ``_fence_after``), a duration ``"dur"`` in microseconds and
``"args": {"op_name": ...}``; each ``session.run`` adds a ``"cat": "Session"`` event named
``model_run``. :func:`reduce_ort_profile` turns that into two top-N tables (per op type, per node)
in milliseconds per run.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stpm_edge.errors import BackendError, ConfigError, note
from stpm_edge.runtime.metadata import BACKBONE_SCOPE

logger = logging.getLogger(__name__)

_KERNEL = "_kernel_time"
# ONNX Runtime names a node its optimiser adds after an existing name plus "_token_<n>": the
# copies of a DequantizeLinear it gives each consumer ("<dq>/duplicated_token_3"), reorders.
_ORT_TOKEN = re.compile(r"_token_\d+$")


def load_trace(path: str | Path) -> list[dict[str, Any]]:
    """The event list of an ORT profile file (``ConfigError`` naming the file if unreadable)."""
    try:
        events = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            note(f"cannot read profiler trace {path}: {exc}", "expected ORT's profile JSON")
        ) from exc
    if isinstance(events, dict):  # Chrome's alternative {"traceEvents": [...]} form
        events = events.get("traceEvents", [])
    if not isinstance(events, list):
        raise ConfigError(note(f"{path} is not a trace", "expected a JSON list of trace events"))
    return events


def _kernel_events(events: list[dict[str, Any]], skip_first_run: bool) -> list[dict[str, Any]]:
    """Node events that carry kernel time, optionally without the first (cold) run."""
    nodes = [e for e in events if e.get("cat") == "Node" and "dur" in e]
    if any(str(e.get("name", "")).endswith(_KERNEL) for e in nodes):
        # Fence events only bracket a kernel; counting them would double-count nothing useful.
        nodes = [e for e in nodes if str(e["name"]).endswith(_KERNEL)]
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e.get("ts", 0),
    )
    if skip_first_run and len(runs) > 1:
        first_end = runs[0].get("ts", 0) + runs[0].get("dur", 0)
        nodes = [e for e in nodes if e.get("ts", 0) > first_end]
    return nodes


def is_convolution(op_type: str) -> bool:
    """Whether an op type (ONNX Runtime's or OpenVINO's) is a convolution kernel: Conv,
    QLinearConv, FusedConv, NhwcFusedConv, ConvInteger, ConvTranspose, Convolution,
    GroupConvolution. Not OpenVINO's ``Convert`` (a type cast), which a substring test would take."""
    return op_type.endswith(("Conv", "Convolution", "ConvInteger", "ConvTranspose"))


def _conv_ms(by_type: dict[str, float], runs: int) -> float:
    """Convolution kernel time per run (ms) of ``{op type: total us}``: the compute a graph
    cannot shed by fusing or trimming the ops around it."""
    return sum(us for op, us in by_type.items() if is_convolution(op)) / 1000.0 / runs


def _rows(totals: dict[str, float], counts: dict[str, int], runs: int, top: int) -> list[dict]:
    grand = sum(totals.values()) or 1.0
    ordered = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return [
        {
            "name": name,
            "total_ms": us / 1000.0,
            "ms_per_run": us / 1000.0 / runs,
            "percent": 100.0 * us / grand,
            "calls": counts[name],
        }
        for name, us in ordered
    ]


def reduce_ort_profile(
    events: Iterable[dict[str, Any]] | str | Path, top: int = 10, skip_first_run: bool = True
) -> dict[str, Any]:
    """Top-N operator time of an ORT trace.

    Args:
        events: the trace event list, or the path of the profile JSON.
        top: rows kept per table.
        skip_first_run: drop the first ``model_run`` (allocations, caches) when there are more.

    Returns:
        ``{"runs", "node_ms_per_run", "conv_ms_per_run", "by_op_type": [row], "by_node": [row]}``
        (``conv_ms_per_run``: the convolution kernels' share of ``node_ms_per_run``), with
        rows ``{"name", "total_ms", "ms_per_run", "percent", "calls"}`` (by_node rows add
        ``"op_type"``), sorted by time, largest first; ``percent`` is of all node time.
    """
    events = load_trace(events) if isinstance(events, str | Path) else list(events)
    nodes = _kernel_events(events, skip_first_run)
    all_runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs = max(1, all_runs - (1 if skip_first_run and all_runs > 1 else 0))
    by_type: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    type_calls: dict[str, int] = defaultdict(int)
    node_calls: dict[str, int] = defaultdict(int)
    node_type: dict[str, str] = {}
    for e in nodes:
        op = str(e.get("args", {}).get("op_name", "?"))
        name = str(e.get("name", "?")).removesuffix(_KERNEL)
        by_type[op] += float(e["dur"])
        by_node[name] += float(e["dur"])
        type_calls[op] += 1
        node_calls[name] += 1
        node_type[name] = op
    node_rows = _rows(by_node, node_calls, runs, top)
    for row in node_rows:
        row["op_type"] = node_type[row["name"]]
    return {
        "runs": runs,
        "node_ms_per_run": sum(by_type.values()) / 1000.0 / runs,
        "conv_ms_per_run": _conv_ms(by_type, runs),
        "by_op_type": _rows(by_type, type_calls, runs, top),
        "by_node": node_rows,
    }


def make_trt_layer_profiler() -> Any:
    """A ``tensorrt.IProfiler`` that sums per-layer milliseconds (unverified without a GPU).

    Attach it with ``context.profiler = prof`` on an ``IExecutionContext``; after some runs,
    ``prof.table(top)`` gives rows shaped like :func:`reduce_ort_profile`'s ``by_node``.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(
            note("TensorRT layer profiling needs tensorrt", "install the [tensorrt] extra")
        ) from exc

    class LayerProfiler(trt.IProfiler):
        """Accumulates ``report_layer_time`` callbacks (TensorRT calls it once per layer per run)."""

        def __init__(self) -> None:
            super().__init__()
            self.total_ms: dict[str, float] = defaultdict(float)
            self.calls: dict[str, int] = defaultdict(int)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.total_ms[layer_name] += ms
            self.calls[layer_name] += 1

        def table(self, top: int = 10) -> list[dict[str, Any]]:
            runs = max(self.calls.values(), default=1)
            us = {k: v * 1000.0 for k, v in self.total_ms.items()}
            return _rows(us, self.calls, runs, top)

    return LayerProfiler()


#: node-name prefix of the backbones in the exported graph (see stpm_edge.export.int8)


def graph_stages(model_path: str | Path) -> dict[str, str]:
    """``{node name: "pre" | "backbones" | "tail"}`` of an exported graph (onnx, no weights).

    Nodes inside ``/pair/`` are the backbones; the other nodes before the first backbone node
    are the pre-processing (cast, layout, normalisation); the rest is the distance tail
    (normalise features, squared difference, upsampling, product, blur, score).
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    stages: dict[str, str] = {}
    seen_backbone = False
    for node in graph.node:
        if node.name.startswith(BACKBONE_SCOPE):
            seen_backbone = True
            stage = "backbones"
        else:
            stage = "tail" if seen_backbone else "pre"
        stages[node.name] = stage
        for out in node.output:  # ORT names fused/relayouted kernels after their output tensor
            stages.setdefault(out, stage)
    return stages


def _stage_of(name: str, stages: dict[str, str]) -> str:
    """Stage of a kernel ORT may have renamed (``<output>_nchwc``, ``QuantizeLinear_<tensor>_1``)."""
    if name in stages:
        return stages[name]
    base = _ORT_TOKEN.sub("", name).removesuffix("/duplicated").removesuffix("_nchwc")
    for prefix in ("QuantizeLinear_", "DequantizeLinear_"):
        base = base.removeprefix(prefix)
    for candidate in (base, base.rsplit("_", 1)[0]):
        if candidate in stages:
            return stages[candidate]
    return "backbones" if BACKBONE_SCOPE in name else "other"


def stage_shares(
    events: Iterable[dict[str, Any]] | str | Path, model_path: str | Path
) -> dict[str, float]:
    """Share (0-1) of ORT kernel time per stage of :func:`graph_stages`, first run dropped.

    Kernels ONNX Runtime created or renamed (fusions, QDQ pairs, NCHWc layout) are attributed
    through the node or output-tensor name they carry; what cannot be placed (layout reorders)
    goes to ``"other"``, so the tail share is never inflated by guesses.
    """
    events = load_trace(events) if isinstance(events, str | Path) else list(events)
    kernels = _kernel_events(events, skip_first_run=True)
    durations = ((str(e.get("name", "")).removesuffix(_KERNEL), float(e["dur"])) for e in kernels)
    return _stage_split(durations, model_path)


def _stage_split(
    durations: Iterable[tuple[str, float]], model_path: str | Path
) -> dict[str, float]:
    """Share (0-1) per stage of :func:`graph_stages` of ``(node name, time)`` pairs."""
    stages = graph_stages(model_path)
    return _shares((_stage_of(name, stages), duration) for name, duration in durations)


def _shares(staged: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Share (0-1) per stage of ``(stage, time)`` pairs."""
    totals: dict[str, float] = defaultdict(float)
    for stage, duration in staged:
        totals[stage] += duration
    grand = sum(totals.values()) or 1.0
    return {k: totals.get(k, 0.0) / grand for k in ("pre", "backbones", "tail", "other")}


def reduce_openvino_counts(
    runs: list[list[dict[str, Any]]], model_path: str | Path | None = None, top: int = 10
) -> dict[str, Any]:
    """Top-N tables (same rows as :func:`reduce_ort_profile`) from OpenVINO per-node counters.

    Args:
        runs: one ``OpenVinoRunner.perf_counts()`` list per profiled run.
        model_path: the ONNX file, for the stage split (``stages``); None skips it.
        top: rows kept per table.
    """
    by_type: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    type_calls: dict[str, int] = defaultdict(int)
    node_calls: dict[str, int] = defaultdict(int)
    node_type: dict[str, str] = {}
    for counts in runs:
        for row in counts:
            by_type[row["type"]] += row["us"]
            by_node[row["name"]] += row["us"]
            type_calls[row["type"]] += 1
            node_calls[row["name"]] += 1
            node_type[row["name"]] = row["type"]
    n = max(1, len(runs))
    node_rows = _rows(by_node, node_calls, n, top)
    for row in node_rows:
        row["op_type"] = node_type[row["name"]]
    result: dict[str, Any] = {
        "runs": n,
        "node_ms_per_run": sum(by_type.values()) / 1000.0 / n,
        "conv_ms_per_run": _conv_ms(by_type, n),
        "by_op_type": _rows(by_type, type_calls, n, top),
        "by_node": node_rows,
        "stages": None,
    }
    if model_path is not None:
        stages = graph_stages(model_path)
        fused = {
            row["name"]: _fused_stage([row["name"], *row.get("original", [])], stages)
            for counts in runs
            for row in counts
        }
        result["stages"] = _shares((fused[name], us) for name, us in by_node.items())
    return result


def _fused_stage(names: list[str], stages: dict[str, str]) -> str:
    """Stage of an executed node from its own and its fused layers' names: a backbone layer
    decides (a convolution carrying fused ops is backbone work), then the tail, then the rest."""
    found = {_stage_of(name, stages) for name in names}
    return next((s for s in ("backbones", "tail", "pre") if s in found), "other")
