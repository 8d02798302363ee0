"""``stpm-bench``: latency/throughput of exported STPM models on every backend, one report.

Example::

    stpm-bench model_fp32.onnx model_int8.onnx --backend ort-cpu --batch 1,4 --threads 1,2 \\
        --matmul-roofline --torch-baseline best.ckpt --e2e --profile --out reports/cpu

Writes ``OUT/report.json`` (schema in benchmarks/README.md), ``OUT/report.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from stpm_edge.benchmarks import environment, flops, recommend, report
from stpm_edge.benchmarks.runner import (
    Job,
    LoopPolicy,
    add_compute_metrics,
    load_images,
    merge_rounds,
    round_job,
    run_job,
    run_job_isolated,
    runner_args,
)
from stpm_edge.cli.args import (
    add_backend_args,
    add_batch_args,
    add_config_args,
    add_logging_args,
    add_output_args,
    comma_list,
)
from stpm_edge.cli.common import HelpFormatter, run_cli
from stpm_edge.errors import ConfigError, StpmEdgeError, note

logger = logging.getLogger("stpm_edge.benchmarks")

# openvino-bf16: the openvino backend with precision="bf16" (a precision choice, parity-checked
# by --recommend)
BACKEND_CHOICES = (
    "auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "openvino", "openvino-bf16",
)  # fmt: skip
PEER_LABEL = re.compile(r"[A-Za-z0-9_.-]+")  # --peer LABEL: safe in labels and file names


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ConfigError(
            note(f"{flag} {text!r} is invalid", "expected positive integers, e.g. 1,4,8")
        )
    return values


def _backends(text: str) -> list[str]:
    values = comma_list(text)
    bad = [v for v in values if v not in BACKEND_CHOICES]
    if bad or not values:
        raise ConfigError(note(f"--backend {text!r} is invalid", f"choose from {BACKEND_CHOICES}"))
    return values


def _frame_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(
            note(f"--frame-size {text!r} is invalid", "expected WxH, e.g. 640x480")
        ) from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stpm-bench",
        description="Time exported STPM models (ONNX or TensorRT engines) on each backend, batch\n"
        "size and thread count, host to host, and write report.json/report.md/PNGs.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="model.onnx or model.engine files")
    add_backend_args(p, multiple=True)  # checked against BACKEND_CHOICES by _backends
    add_batch_args(p, multiple=True)
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations per configuration")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument(
        "--iters",
        type=int,
        default=None,
        help="exact timed iterations; None (and no --seconds) = 200 iterations or 10 s, "
        "whichever comes first, at least 10",
    )
    stop.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="time budget per configuration in seconds (at least 10 iterations); None = "
        "see --iters",
    )
    p.add_argument(
        "--e2e",
        action="store_true",
        help="also time JPEG decode + pre/post-processing through the Detector",
    )
    p.add_argument("--frame-size", default="640x480", help="WxH of the synthetic --e2e frames")
    p.add_argument(
        "--images", default=None, help="folder of real images to feed; None = random frames"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile per operator (extra run) and add top-N tables: ONNX Runtime's profiler, "
        "OpenVINO's per-node counters (batch 1)",
    )
    p.add_argument("--profile-iters", type=int, default=20, help="iterations of the profiled run")
    p.add_argument("--profile-top", type=int, default=10, help="rows per profile table")
    p.add_argument(
        "--torch-baseline",
        default=None,
        metavar="CKPT",
        help="also time the PyTorch eager model of this checkpoint (ratios in report)",
    )
    p.add_argument(
        "--matmul-roofline",
        action="store_true",
        help="measure the practical CPU rooflines: float32 numpy matmul GFLOP/s and int8 "
        "(uint8 x int8 -> int32, ONNX Runtime MatMulInteger: VNNI/dot-product) GOP/s",
    )
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul")
    p.add_argument(
        "--peer",
        action="append",
        default=None,
        metavar="LABEL=FILE",
        help="also time a foreign graph (a peer's .onnx, or an OpenVINO .xml on the openvino "
        "backends) with the same batch/threads/warm-up policy, fed random input of its one "
        "input's shape and dtype; reported as peer:LABEL, timing only (no parity, no "
        "--recommend); repeatable",
    )
    p.add_argument(
        "--recommend",
        action="store_true",
        help="name the configuration to deploy here: the fastest measured one (smallest batch) "
        "whose verdicts and maps match ONNX Runtime CPU on the same file",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time the configurations in turn this many times, each round with 1/N of the "
        "--seconds/--iters budget, and pool the samples: a drift of the machine's speed then "
        "reaches every configuration alike (ratios between them stay trustworthy on a noisy "
        "host); per-round p50s are kept in report.json",
    )
    p.add_argument(
        "--isolate",
        action="store_true",
        help="run each configuration in a fresh process (per-configuration peak RSS)",
    )
    add_output_args(
        p, type=str, help="report folder (default: bench-<name>-<UTC time> in the current folder)"
    )
    p.add_argument("--name", default=None, help="machine name in the report; None = the hostname")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input frames")
    add_config_args(p)
    add_logging_args(p)
    return p


def _policy(args: argparse.Namespace) -> LoopPolicy:
    if args.warmup < 0 or (args.iters is not None and args.iters < 1):
        raise ConfigError(
            note("--warmup/--iters are invalid", "expected --warmup >= 0, --iters >= 1")
        )
    if args.seconds is not None and args.seconds <= 0:
        raise ConfigError(note(f"--seconds {args.seconds} is invalid", "expected > 0"))
    return LoopPolicy(warmup=args.warmup, iters=args.iters, seconds=args.seconds)


def _roofline(args: argparse.Namespace, env: dict[str, Any], threads: list[int | None]) -> dict:
    cpu = env["cpu"]
    usable = cpu.get("usable_cpus") or 1
    roof: dict[str, Any] = {"usable_cpus": usable, "matmul": None,
                            "theoretical": flops.theoretical_peak(cpu)}  # fmt: skip
    if args.matmul_roofline:
        counts = sorted({t or usable for t in threads})
        by = {str(t): flops.matmul_gflops(args.matmul_size, reps=3, threads=t) for t in counts}
        roof["matmul"] = {"n": args.matmul_size, "reps": 3, "dtype": "float32",
                          "gflops_by_threads": by, "gflops": max(by.values())}  # fmt: skip
        logger.info("matmul roofline: %s GFLOP/s", by)
        roof["int8_matmul"] = _int8_roofline(args.matmul_size, counts)
        if any(b.endswith("-bf16") for b in _backends(args.backend)):
            roof["bf16_matmul"] = _bf16_roofline(args.matmul_size, counts)
    return roof


def _int8_roofline(n: int, counts: list[int]) -> dict[str, Any] | None:
    """The int8 matmul roofline per thread count, or None when ONNX Runtime cannot run it."""
    return _low_precision_roofline(
        "int8", flops.int8_matmul_gops, n, counts, "GOP/s",
        dtype="uint8 x int8 -> int32", engine="onnxruntime MatMulInteger",
    )  # fmt: skip


def _bf16_roofline(n: int, counts: list[int]) -> dict[str, Any] | None:
    """The bf16 matmul roofline (OpenVINO) per thread count, or None when it cannot run."""
    return _low_precision_roofline(
        "bf16", flops.bf16_matmul_gflops, n, counts, "GFLOP/s",
        dtype="bfloat16 (float32 in/out)", engine="openvino MatMul, INFERENCE_PRECISION_HINT=bf16",
    )  # fmt: skip


def _low_precision_roofline(
    what: str, measure: Any, n: int, counts: list[int], unit: str, **info: str
) -> dict[str, Any] | None:
    """``measure(n, reps=3, threads=t)`` per thread count as a roofline entry, or None when it
    fails (no ONNX Runtime / openvino, or no such instructions on this CPU)."""
    try:
        by = {str(t): measure(n, reps=3, threads=t) for t in counts}
    except Exception as exc:  # a roofline is context: never lose the timings for it
        logger.warning("%s matmul roofline failed: %s", what, exc)
        return None
    logger.info("%s matmul roofline: %s %s", what, by, unit)
    return {"n": n, "reps": 3, **info, "gops_by_threads": by, "gops": max(by.values())}


def _flops_of(model: str) -> dict[str, Any] | None:
    if not model.endswith(".onnx"):
        return None  # an engine has no graph to count: its sibling .onnx can be benchmarked
    try:
        count = flops.count_flops(model)
    except Exception as exc:  # a FLOP count is a nice-to-have; never lose the timings for it
        logger.warning("FLOP count of %s failed: %s", model, exc)
        return None
    return {"gflop_per_image": count.gflop, "dense_fraction": count.conv_fraction(),
            "by_op_type_gflop": {k: v / 1e9 for k, v in count.by_op_type.items()},
            "uncounted_nodes": len(count.uncounted_nodes)}  # fmt: skip


def _peers(specs: list[str] | None) -> list[tuple[str, str]]:
    """``--peer LABEL=FILE`` values as ``(label, file)``: labels unique, files existing."""
    peers: list[tuple[str, str]] = []
    for spec in specs or []:
        label, sep, path = spec.partition("=")
        if not sep or not PEER_LABEL.fullmatch(label) or not path:
            raise ConfigError(
                note(f"--peer {spec!r} is invalid", "expected LABEL=FILE, LABEL of [A-Za-z0-9_.-]")
            )
        if label in {known for known, _ in peers}:
            raise ConfigError(note(f"--peer label {label!r} is given twice", "use one per file"))
        if not Path(path).is_file():
            raise ConfigError(note(f"--peer {label}: {path} not found", "pass an .onnx or .xml"))
        if Path(path).suffix.lower() not in (".onnx", ".xml"):
            raise ConfigError(
                note(f"--peer {label}: cannot time {path}", "expected .onnx or .xml (OpenVINO IR)")
            )
        peers.append((label, path))
    return peers


def _peer_backends(label: str, path: str, backends: list[str]) -> list[str]:
    """The requested backends that can run a peer file: an IR runs on OpenVINO only."""
    if Path(path).suffix.lower() != ".xml":
        return backends
    usable = [b for b in backends if runner_args(b)[0] in ("openvino", "auto")]
    if not usable:
        raise ConfigError(
            note(
                f"--peer {label}: {path} is an OpenVINO IR; --backend {','.join(backends)} "
                "cannot run it",
                "add openvino (or openvino-bf16) to --backend, or pass the peer's .onnx",
            )
        )
    return usable


def _jobs(args: argparse.Namespace, out: Path, policy: LoopPolicy) -> list[Job]:
    backends = _backends(args.backend)
    batches = _int_list("--batch", args.batch)
    threads: list[int | None] = _int_list("--threads", args.threads) if args.threads else [None]
    images = load_images(args.images) if args.images else None
    common = dict(policy=policy, images=images, seed=args.seed, frame_size=_frame_size(args.frame_size),
                  profile_iters=args.profile_iters, profile_top=args.profile_top)  # fmt: skip
    jobs = []
    for model in args.models:
        if not Path(model).is_file():
            raise ConfigError(note(f"model {model} not found", "pass an exported .onnx or .engine"))
        for backend in backends:
            for batch in batches:
                for t in threads:
                    prefix = _profile_prefix(args, out, Path(model).stem, backend, batch, t)
                    jobs.append(
                        Job(model, backend, batch, t, "model", profile_prefix=prefix, **common)
                    )
                    if args.e2e:
                        jobs.append(Job(model, backend, batch, t, "e2e", **common))
    for label, path in _peers(args.peer):  # timing (and profile) only: no e2e, no stpm metadata
        for backend in _peer_backends(label, path, backends):
            for batch in batches:
                for t in threads:
                    prefix = _profile_prefix(args, out, f"peer_{label}", backend, batch, t)
                    jobs.append(
                        Job(path, backend, batch, t, "model", peer=label, profile_prefix=prefix,
                            **common)
                    )  # fmt: skip
    if args.torch_baseline:
        if not Path(args.torch_baseline).is_file():
            raise ConfigError(
                note(f"--torch-baseline {args.torch_baseline} not found", "pass a .ckpt")
            )
        for batch in batches:
            for t in threads:
                jobs.append(Job(args.torch_baseline, "torch", batch, t, "torch", **common))
    return jobs


def _profile_prefix(
    args: argparse.Namespace, out: Path, name: str, backend: str, batch: int, threads: int | None
) -> str | None:
    """Where a model job's profiler trace goes (``out/profiles/NAME-BACKEND-bB-tT``), or None
    without ``--profile``."""
    if not args.profile:
        return None
    return str(out / "profiles" / f"{name}-{backend}-b{batch}-t{threads or 'default'}")


def _tag(job: Job) -> str:
    shown = f"peer:{job.peer}" if job.peer else Path(job.model).name
    return f"{shown} {job.backend} b{job.batch} t{job.threads or 'default'} {job.mode}"


def _measure(
    jobs: list[Job], args: argparse.Namespace, skipped: list[dict[str, str]]
) -> list[tuple[Job, dict[str, Any]]]:
    """Every job's record; with ``--rounds N`` the jobs are timed in turn N times (each with 1/N
    of the budget, profiled in the first round only) and each job's rounds merged."""
    rounds = args.rounds  # >= 1, checked by run()
    parts: dict[int, list[dict[str, Any]]] = {}
    failed: set[int] = set()
    for r in range(rounds):
        for i, job in enumerate(jobs):
            if i in failed:
                continue
            this = round_job(job, rounds, first=r == 0)
            print(f"[{r * len(jobs) + i + 1}/{rounds * len(jobs)}] {_tag(job)}", file=sys.stderr)
            try:
                record = run_job_isolated(this) if args.isolate else run_job(this)
            except StpmEdgeError as exc:
                logger.warning("skipped %s: %s", _tag(job), exc)
                skipped.append({"label": _tag(job), "reason": str(exc)})
                failed.add(i)
                continue
            parts.setdefault(i, []).append(record)
    return [(jobs[i], merge_rounds(parts[i])) for i in sorted(parts) if i not in failed]


def run(args: argparse.Namespace, argv: list[str]) -> Path:
    """Run every configuration and write the report; returns the report folder."""
    if args.rounds < 1:
        raise ConfigError(note(f"--rounds must be >= 1, got {args.rounds}", "e.g. --rounds 3"))
    policy = _policy(args)
    env = environment.capture_environment()
    name = args.name or env["hostname"]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(args.out or f"bench-{name}-{stamp}")
    jobs = _jobs(args, out, policy)  # validates every flag and path before anything is written
    out = report.prepare_out_dir(out, args.force)
    if args.profile:
        (out / "profiles").mkdir(exist_ok=True)
    roof = _roofline(args, env, sorted({j.threads for j in jobs}, key=lambda t: t or 0))
    model_flops = {
        m: _flops_of(m) for m in dict.fromkeys(j.model for j in jobs if j.mode == "model")
    }
    records, skipped = [], []
    for job, record in _measure(jobs, args, skipped):
        gflop = (model_flops.get(job.model) or {}).get("gflop_per_image")
        records.append(add_compute_metrics(record, gflop, roof))
        lat = record["latency_ms"]
        print(f"    {_tag(job)}: p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  "
              f"{record['throughput_ips']:.1f} img/s", file=sys.stderr)  # fmt: skip
    if not records:
        raise ConfigError(
            note(
                "no configuration could be measured", skipped[0]["reason"] if skipped else "no jobs"
            )
        )
    command = shlex.join(["stpm-bench", *argv])
    rep = report.build_report(command, env, roof, records, skipped, name,
                              flops={m: f for m, f in model_flops.items() if f})  # fmt: skip
    if args.recommend:
        rep["recommendation"] = recommend.recommend(records, jobs[0].images, args.seed)
        print("\n".join(recommend.render(rep["recommendation"])[2:4]))
    paths = report.write_report(rep, out, plots=not args.no_plots)
    print(f"report: {paths['md']}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body(args: argparse.Namespace) -> int:
        run(args, argv)
        return 0

    return run_cli(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
