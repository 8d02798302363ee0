"""Write a benchmark run as ``report.json`` (schema: benchmarks/README.md), ``report.md`` and PNGs.

Nothing is written into an existing non-empty folder without ``force`` (``OutputExistsError``).
Plots use matplotlib's Agg backend (no display needed), imported only when plotting.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "stpm-bench/1"
LATENCY_KEYS = ("p50", "p90", "p99", "mean", "std", "min", "max")
#: The distance tail's budget: its share of an INT8 graph's kernel time (issue 12).
TAIL_BUDGET = 0.10

#: Required record keys and their allowed types (``None`` allowed where listed with NoneType).
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))
RECORD_SCHEMA: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "backend": (str,),
    "runner": (str,),
    "precision": _OPT_STR,
    "layout": _OPT_STR,
    "batch": (int,),
    "threads": (int, type(None)),
    "mode": (str,),
    "iters": (int,),
    "latency_ms": (dict,),
    "throughput_ips": _NUM,
    "gflop_per_image": _OPT_NUM,
    "achieved_gflops": _OPT_NUM,
    "roofline_fraction": _OPT_NUM,
    "peak_rss_mb": _NUM,
}
TOP_SCHEMA: dict[str, tuple[type, ...]] = {
    "schema_version": (str,),
    "command": (str,),
    "created": (str,),
    "environment": (dict,),
    "roofline": (dict,),
    "records": (list,),
}


def prepare_out_dir(out_dir: str | Path, force: bool = False) -> Path:
    """Create ``out_dir``; refuse an existing non-empty one unless ``force``."""
    from stpm_edge.outputs import prepare_output_dir

    return prepare_output_dir(out_dir, force, "pick a new --out folder or pass --force")


def _match(rec: dict[str, Any], other: dict[str, Any], keys: Iterable[str]) -> bool:
    return all(rec.get(k) == other.get(k) for k in keys)


def _speedup(base: dict[str, Any] | None, rec: dict[str, Any]) -> float | None:
    if base is None:
        return None
    return base["latency_ms"]["mean"] / rec["latency_ms"]["mean"]


def add_ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill ``speedup_vs_torch`` and ``speedup_vs_fp32`` (>1 = this record is faster).

    vs torch: the ``torch`` record with the same batch and input size (and threads, when one
    exists): a checkpoint trained at another size than the ONNX is not compared.
    vs fp32: the fp32 record of another model with the same mode, runner, batch and threads.
    A ``--peer`` record gets neither; it gets ``own_best`` instead (:func:`own_best`).
    """
    torch_recs = [r for r in records if r["mode"] == "torch"]
    for rec in records:
        rec["speedup_vs_torch"] = rec["speedup_vs_fp32"] = None
        if rec.get("peer"):
            rec["own_best"] = own_best(rec, records)
            continue
        if rec["mode"] == "torch":
            continue
        size = rec.get("input_size")
        same_batch = [
            t
            for t in torch_recs
            if t["batch"] == rec["batch"]
            and (None in (size, t.get("input_size")) or size == t["input_size"])
        ]
        same = [t for t in same_batch if t["threads"] == rec["threads"]] or same_batch
        rec["speedup_vs_torch"] = _speedup(same[0] if same else None, rec)
        if rec.get("precision") != "fp32":
            fp32 = [
                r
                for r in records
                if r.get("precision") == "fp32"
                and r["model"] != rec["model"]
                and _match(rec, r, ("mode", "runner", "batch", "threads"))
            ]
            rec["speedup_vs_fp32"] = _speedup(fp32[0] if fp32 else None, rec)
    return records


def own_best(peer: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Our fastest ``model`` record on the peer's device, batch and threads, and its speed-up
    over the peer (peer mean / ours, >1 = ours faster); None when we measured none there."""
    ours = [
        r
        for r in records
        if not r.get("peer") and r["mode"] == "model"
        and _match(peer, r, ("device", "batch", "threads"))
    ]  # fmt: skip
    if not ours:
        return None
    best = min(ours, key=lambda r: r["latency_ms"]["mean"])
    return {"label": label(best), "latency_ms_mean": best["latency_ms"]["mean"],
            "speedup": _speedup(peer, best), "conv_floor": conv_floor(peer, best)}  # fmt: skip


def conv_floor(peer: dict[str, Any], ours: dict[str, Any]) -> float | None:
    """The latency ratio ours / peer if everything but our convolutions cost nothing: our
    convolution share of kernel time (profiled) x our mean latency / the peer's (timed, so in
    the same interleaved rounds). None without our profile. When it is near a target ratio, only
    less convolution work (not a cheaper tail or fewer reorders) can reach the target."""
    conv, node = ours.get("profile_conv_ms"), ours.get("profile_node_ms")
    if not conv or not node:
        return None
    return conv / node * ours["latency_ms"]["mean"] / peer["latency_ms"]["mean"]


def build_report(
    command: str,
    environment: dict[str, Any],
    roofline: dict[str, Any],
    records: list[dict[str, Any]],
    skipped: list[dict[str, Any]] | None = None,
    name: str | None = None,
    flops: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report.json object (see benchmarks/README.md for every key)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name or environment.get("hostname"),
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment,
        "roofline": roofline,
        "flops": flops or {},
        "records": add_ratios(records),
        "skipped": skipped or [],
    }


def validate_report(report: dict[str, Any]) -> list[str]:
    """Schema problems of a report object (empty list = valid)."""
    problems = [
        f"top-level {key!r}: expected {' or '.join(t.__name__ for t in types)}"
        for key, types in TOP_SCHEMA.items()
        if not isinstance(report.get(key, ...), types)
    ]
    for i, rec in enumerate(report.get("records") or []):
        for key, types in RECORD_SCHEMA.items():
            value = rec.get(key, ...)
            if not isinstance(value, types) or isinstance(value, bool):
                problems.append(f"records[{i}].{key}: got {value!r}")
        lat = rec.get("latency_ms") or {}
        problems += [
            f"records[{i}].latency_ms.{k} missing or not a number"
            for k in LATENCY_KEYS
            if not isinstance(lat.get(k), _NUM)
        ]
        if rec.get("mode") not in ("model", "e2e", "torch"):
            problems.append(f"records[{i}].mode: {rec.get('mode')!r} is not model/e2e/torch")
        if "profile_top" in rec and not isinstance(rec["profile_top"], list):
            problems.append(f"records[{i}].profile_top: expected a list")
    return problems


# -- markdown -------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def _sig(value: float | None) -> str:
    """Three significant digits (FLOP counts span 1e-4 to 1e3)."""
    return "-" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def label(rec: dict[str, Any]) -> str:
    """Short human label of a configuration, used in tables and plot legends."""
    threads = "default" if rec.get("threads") is None else rec["threads"]
    # a peer's file carries no stpm.precision: its label names the peer, not a "?"
    precision = "" if rec.get("peer") else f"{rec.get('precision') or '?'} "
    return (
        f"{rec.get('model_name', Path(rec['model']).stem)} {rec.get('backend') or rec['runner']} "
        f"{precision}b{rec['batch']} t{threads} {rec['mode']}"
    )


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _env_lines(env: dict[str, Any]) -> list[str]:
    cpu = env.get("cpu") or {}
    gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in env.get("gpus") or [])
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items() if v)
    threads = ", ".join(f"{k}={v}" for k, v in (env.get("thread_env") or {}).items() if v)
    rows = [
        ["host", str(env.get("hostname"))],
        ["OS / Python", f"{env.get('os')} / {env.get('python')}"],
        ["CPU", f"{cpu.get('model')} ({cpu.get('physical_cores')} cores, "
                f"{cpu.get('logical_cpus')} logical, {cpu.get('usable_cpus')} usable)"],
        ["CPU clock (MHz)", f"max {_fmt(cpu.get('max_mhz'), 0)}, now {_fmt(cpu.get('current_mhz'), 0)}"],
        ["SIMD", " ".join(cpu.get("flags") or []) or "-"],
        ["GPU", gpus or "none"],
        ["Jetson power mode", str(env.get("jetson_power_mode") or "-")],
        ["libraries", libs],
        ["thread env", threads or "(none set)"],
    ]  # fmt: skip
    return _table([[k, v.replace("|", "/").replace("\n", " ")] for k, v in rows], ["", ""])


def _roofline_lines(roofline: dict[str, Any]) -> list[str]:
    lines = []
    matmul = roofline.get("matmul")
    if matmul:
        per = ", ".join(f"{t} threads: {g:.1f}" for t, g in matmul["gflops_by_threads"].items())
        lines.append(
            f"- measured float32 matmul ({matmul['n']}x{matmul['n']}, best of {matmul['reps']}): "
            f"{per} GFLOP/s"
        )
    else:
        lines.append("- matmul roofline not measured (pass --matmul-roofline)")
    for kind, unit in (("int8", "GOP/s"), ("bf16", "GFLOP/s")):
        low = roofline.get(f"{kind}_matmul")
        if low:
            per = ", ".join(f"{t} threads: {g:.1f}" for t, g in low["gops_by_threads"].items())
            lines.append(
                f"- measured {kind} matmul ({low['dtype']}, {low['engine']}, {low['n']}x{low['n']}, "
                f"best of {low['reps']}): {per} {unit} — the roofline of {kind} records"
            )
    peak = roofline.get("theoretical")
    if peak:
        lines.append(
            f"- theoretical fp32 peak (ESTIMATE): {peak['per_core_gflops']:.1f} GFLOP/s per core "
            f"= {peak['flop_per_cycle']} FLOP/cycle ({peak['basis']}) x {peak['clock_mhz']:.0f} MHz "
            f"({peak['clock_source']})"
        )
    else:
        lines.append("- theoretical peak unknown (SIMD flags or clock not readable)")
    return lines


_HEADER = ["configuration", "iters", "p50", "p90", "p99", "mean", "std", "min", "max", "img/s",
           "GFLOP/img", "GFLOP/s", "roofline", "peak RSS MB", "vs torch", "vs fp32"]  # fmt: skip


def _record_row(rec: dict[str, Any]) -> list[str]:
    lat = rec["latency_ms"]
    return [
        label(rec),
        str(rec["iters"]),
        *(_fmt(lat[k]) for k in LATENCY_KEYS),
        _fmt(rec["throughput_ips"], 1),
        _sig(rec.get("gflop_per_image")),
        _sig(rec.get("achieved_gflops")),
        _pct(rec.get("roofline_fraction")),
        _fmt(rec.get("peak_rss_mb"), 0),
        _x(rec.get("speedup_vs_torch")),
        _x(rec.get("speedup_vs_fp32")),
    ]


def _peer_lines(peers: list[dict[str, Any]]) -> list[str]:
    """The "Peers" section: foreign graphs timed like ours, and our fastest against each."""
    if not peers:
        return []
    lines = [
        "## Peers (foreign graphs: timing only)",
        "",
        "Timed in this process with the same batch, threads and warm-up/stop policy, on random "
        "input of the graph's own shape and dtype. No parity, accuracy or verdict claim, and "
        "never recommended. `ours` = our fastest `model` record on the same device, batch and "
        "threads; `ours vs peer` = peer mean / ours (>1 = ours faster). With `--profile`: "
        "`conv floor` = the latency ratio ours / peer if everything but our convolutions cost "
        "nothing: our convolution share of kernel time x our mean / the peer's mean.",
        "",
        *_table([_record_row(r) for r in peers], _HEADER),
        "",
    ]
    rows = []
    for rec in peers:
        best = rec.get("own_best") or {}
        floor = best.get("conv_floor")
        rows.append([label(rec), _fmt(rec["latency_ms"]["mean"]), best.get("label", "-"),
                     _fmt(best.get("latency_ms_mean")), _x(best.get("speedup")),
                     f"{floor:.2f}x" if floor else "-"])  # fmt: skip
    header = ["peer", "peer mean", "ours", "ours mean", "ours vs peer", "conv floor (ours / peer)"]
    return lines + _table(rows, header) + [""]


def _profile_lines(rec: dict[str, Any]) -> list[str]:
    lines = [f"### {label(rec)}", ""]
    stages = rec.get("profile_stages")
    if stages:
        parts = ", ".join(f"{k} {100 * v:.1f}%" for k, v in stages.items())
        over = stages.get("tail", 0.0) > TAIL_BUDGET
        flag = f" (over the {TAIL_BUDGET:.0%} budget)" if over else ""
        lines += [f"Kernel time by stage: {parts}; distance tail{flag}.", ""]
    node, conv = rec.get("profile_node_ms"), rec.get("profile_conv_ms")
    if node:
        share = f" ({100 * conv / node:.1f}%)" if conv is not None else ""
        lines += [f"Kernel time {node:.3f} ms per run, convolutions {conv or 0:.3f} ms{share}.", ""]
    for title, key in (("op type", "profile_top"), ("node", "profile_top_nodes")):
        rows = rec.get(key) or []
        if rows:
            lines += [f"Top {len(rows)} by {title} (ms per run, first run dropped):", ""]
            lines += _table(
                [[r["name"], _fmt(r["ms_per_run"], 3), f"{r['percent']:.1f}%", str(r["calls"])]
                 for r in rows],
                [title, "ms/run", "share", "calls"],
            )  # fmt: skip
            lines.append("")
    return lines


def render_markdown(report: dict[str, Any], plots: Iterable[str] = ()) -> str:
    """report.md text: environment, command, one table per mode, ratios, profiles, plots."""
    lines = [
        f"# stpm-bench report: {report.get('name')}",
        "",
        f"Created {report['created']}, schema {report['schema_version']}.",
        "",
        "## Command",
        "",
        "```",
        report["command"],
        "```",
        "",
        "## Environment",
        "",
        *_env_lines(report["environment"]),
        "",
        "## Roofline",
        "",
        *_roofline_lines(report["roofline"]),
        "",
        "Latencies in ms, host to host; img/s = batch x 1000 / mean. `roofline` = achieved "
        "GFLOP/s / measured matmul G(FL)OP/s of the record's precision (int8 records: the int8 "
        "matmul, others: float32; CPU only). `vs torch` / `vs fp32` = speed-up "
        "(mean latency ratio, >1 faster) over the PyTorch eager model / the fp32 model on the "
        "same runner.",
        "",
    ]
    titles = {"model": "Inference (runner.infer)", "e2e": "End to end (decode + detector)",
              "torch": "PyTorch eager baseline"}  # fmt: skip
    for mode, title in titles.items():
        recs = [r for r in report["records"] if r["mode"] == mode and not r.get("peer")]
        if recs:
            lines += [f"## {title}", "", *_table([_record_row(r) for r in recs], _HEADER), ""]
    lines += _peer_lines([r for r in report["records"] if r.get("peer")])
    profiled = [r for r in report["records"] if r.get("profile_top") or r.get("profile_top_nodes")]
    if profiled:
        lines += ["## Profiles", ""]
        for rec in profiled:
            lines += _profile_lines(rec)
    if report.get("skipped"):
        lines += ["## Skipped configurations", ""]
        lines += [
            f"- {s.get('label')}: {s.get('reason', '').splitlines()[0]}" for s in report["skipped"]
        ]
        lines.append("")
    if "recommendation" in report:
        from stpm_edge.benchmarks.recommend import render

        lines += render(report["recommendation"])
    plots = list(plots)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------------
def write_plots(records: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """latency_cdf.png, throughput_vs_batch.png, comparison.png; returns the file names."""
    if not records:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for rec in records:
        samples = sorted(rec.get("samples_ms") or [])
        if samples:
            frac = [(i + 1) / len(samples) for i in range(len(samples))]
            ax.step(samples, frac, where="post", label=label(rec))
    ax.set(xlabel="latency (ms)", ylabel="fraction of iterations", title="Latency CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    written.append(_save(fig, out_dir / "latency_cdf.png"))

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        key = label({**rec, "batch": "*"})
        series.setdefault(key, []).append((rec["batch"], rec["throughput_ips"]))
    for key, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    ax.set_xticks(sorted({r["batch"] for r in records}))
    ax.set(xlabel="batch size", ylabel="images / s", title="Throughput vs batch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    written.append(_save(fig, out_dir / "throughput_vs_batch.png"))

    smallest = min(r["batch"] for r in records)
    chosen = [r for r in records if r["batch"] == smallest]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(chosen)), 5))
    names = [label(r).replace(" ", "\n") for r in chosen]
    means = [r["latency_ms"]["mean"] for r in chosen]
    errs = [r["latency_ms"]["p99"] - r["latency_ms"]["mean"] for r in chosen]
    ax.bar(range(len(chosen)), means, yerr=[[0] * len(errs), errs], capsize=4)
    ax.set_xticks(range(len(chosen)), names, fontsize=6)
    ax.set(
        ylabel="mean latency (ms), whisker = p99", title=f"Backends / precisions, batch {smallest}"
    )
    written.append(_save(fig, out_dir / "comparison.png"))
    return written


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def write_report(
    report: dict[str, Any], out_dir: str | Path, plots: bool = True
) -> dict[str, Path]:
    """Write report.json, report.md and (optionally) the PNGs into ``out_dir`` (must exist)."""
    out = Path(out_dir)
    problems = validate_report(report)
    if problems:  # our own output: a broken schema is a bug, say so loudly but keep the data
        logger.error("report.json schema problems: %s", "; ".join(problems))
    paths = {"json": out / "report.json", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    names = write_plots(report["records"], out) if plots else []
    paths["md"].write_text(render_markdown(report, names), encoding="utf-8")
    paths.update({Path(n).stem: out / n for n in names})
    return paths
