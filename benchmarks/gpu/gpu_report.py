"""Helpers of ``benchmarks/gpu/check.sh`` (run as a script, not installed).

``iobinding``: time ONNX models on one ONNX Runtime backend with and without IO binding, at each
batch size, the same way ``stpm-bench`` times (``time_loop``, host to host; outputs copied back to
the host once per call). ``stpm-bench`` itself has no IO-binding switch, so this fills the gap.

``summary``: one README.md for the report folder from ``bench/report.json`` (ORT CUDA and PyTorch
CUDA eager, same run) and ``iobinding.json``: mean latency per precision and batch, and the
speed-ups over PyTorch.

    python benchmarks/gpu/gpu_report.py iobinding fp32.onnx fp16.onnx --backend ort-cuda \\
        --batch 1,8 --seconds 5 --out report/iobinding.json
    python benchmarks/gpu/gpu_report.py summary report/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def time_io_binding(
    model: str, backend: str, batch: int, io_binding: bool, seconds: float
) -> dict[str, Any]:
    """One record: mean/p50/p99 latency of ``runner.infer`` on a ready batch."""
    from stpm_edge.benchmarks.runner import LoopPolicy, make_feeds, time_loop
    from stpm_edge.benchmarks.stats import LatencyStats
    from stpm_edge.runtime.runners import create_runner

    with create_runner(model, backend=backend, io_binding=io_binding) as runner:
        meta = runner.metadata()
        feeds = make_feeds(runner.input_spec(), batch, meta)
        samples = time_loop(lambda: runner.infer(feeds), LoopPolicy(seconds=seconds))
        stats = LatencyStats.from_samples(samples)
        return {
            "model": model,
            "precision": meta.get("stpm.precision"),
            "backend": backend,
            "runner": runner.name,
            "batch": batch,
            "io_binding": io_binding,
            "iters": stats.count,
            "latency_ms": stats.as_dict(),
            "throughput_ips": stats.throughput(batch),
        }


def cmd_iobinding(args: argparse.Namespace) -> int:
    batches = [int(b) for b in args.batch.split(",")]
    records = [
        time_io_binding(model, args.backend, batch, io, args.seconds)
        for model in args.models
        for batch in batches
        for io in (False, True)
    ]
    Path(args.out).write_text(json.dumps({"records": records}, indent=2) + "\n")
    for r in records:
        print(
            f"{Path(r['model']).name} b{r['batch']} io_binding={r['io_binding']}: "
            f"mean {r['latency_ms']['mean']:.3f} ms ({r['runner']})"
        )
    return 0


def _mean(record: dict[str, Any] | None) -> float | None:
    return None if record is None else float(record["latency_ms"]["mean"])


def _ratio(slow: float | None, fast: float | None) -> str:
    return "—" if slow is None or fast is None or fast <= 0 else f"{slow / fast:.2f}x"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def summary_rows(bench: dict[str, Any], iob: dict[str, Any]) -> list[str]:
    """Markdown rows: precision x batch -> torch, ORT, ORT + IO binding means and speed-ups."""
    records = bench.get("records") or []
    torch = {r["batch"]: r for r in records if r["mode"] == "torch"}
    ort = {(r["precision"], r["batch"]): r for r in records if r["mode"] == "model"}
    bound = {(r["precision"], r["batch"]): r for r in iob.get("records") or [] if r["io_binding"]}
    rows = []
    for precision, batch in sorted(set(ort) | set(bound), key=lambda k: (str(k[0]), k[1])):
        t = _mean(torch.get(batch))
        o, b = _mean(ort.get((precision, batch))), _mean(bound.get((precision, batch)))
        rows.append(
            f"| {precision} | {batch} | {_ms(t)} | {_ms(o)} | {_ms(b)} | {_ratio(t, o)} | "
            f"{_ratio(t, b)} |"
        )
    return rows


def cmd_summary(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    bench = json.loads((folder / "bench" / "report.json").read_text())
    iob_path = folder / "iobinding.json"
    iob = json.loads(iob_path.read_text()) if iob_path.exists() else {}
    gpus = bench.get("environment", {}).get("gpus") or [{}]
    name = args.gpu or gpus[0].get("name", "unknown GPU")
    sizes = {tuple(r["input_size"]) for r in bench.get("records") or [] if r.get("input_size")}
    size = ", ".join("x".join(str(v) for v in s) for s in sorted(sizes)) or "?"
    lines = [
        f"# GPU check: {name}",
        "",
        f"Written by `benchmarks/gpu/check.sh` ({bench.get('created')}); driver "
        f"{gpus[0].get('driver')}, ONNX Runtime "
        f"{bench.get('environment', {}).get('libraries', {}).get('onnxruntime')}.",
        f"Mean latency per call (host to host), demo `brick` model, 2 epochs, input {size}.",
        "PyTorch = CUDA eager with fp16 autocast (`stpm-bench --torch-baseline`, same run as ORT).",
        "",
        "| graph | batch | PyTorch CUDA | ORT CUDA | ORT CUDA + IO binding "
        "| ORT vs PyTorch | ORT+IOB vs PyTorch |",
        "|---|---|---|---|---|---|---|",
        *summary_rows(bench, iob),
        "",
        "Details: [bench/report.md](bench/report.md), [iobinding.json](iobinding.json), "
        "[doctor-fp32/doctor.md](doctor-fp32/doctor.md), "
        "[doctor-fp16/doctor.md](doctor-fp16/doctor.md), [check.log](check.log).",
    ]
    if bench.get("skipped"):
        lines += ["", "Skipped configurations:"]
        lines += [
            f"- {s.get('label')}: {str(s.get('reason')).splitlines()[0]}" for s in bench["skipped"]
        ]
    (folder / "README.md").write_text("\n".join(lines) + "\n")
    print((folder / "README.md").read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    iob = sub.add_parser("iobinding", help="time models with and without IO binding")
    iob.add_argument("models", nargs="+")
    iob.add_argument("--backend", default="ort-cuda")
    iob.add_argument("--batch", default="1,8", help="comma list of batch sizes")
    iob.add_argument("--seconds", type=float, default=5.0)
    iob.add_argument("--out", required=True, help="JSON file to write")
    iob.set_defaults(func=cmd_iobinding)
    summ = sub.add_parser("summary", help="README.md of a report folder")
    summ.add_argument("folder")
    summ.add_argument("--gpu", help="GPU name for the title (default: the bench environment's)")
    summ.set_defaults(func=cmd_summary)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
