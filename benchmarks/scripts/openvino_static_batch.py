"""Time OpenVINO graphs compiled as exported (dynamic batch) and with batch 1 fixed, interleaved.

Why the OpenVINO runner fixes the batch (``runtime/runners/openvino.py``): this script measures
it. Each model is compiled twice with the runner's settings (CPU, LATENCY hint, f32 inference
precision, the given threads), then the two compiled models are timed in turn, round after round,
so that a drift of the machine's speed reaches both alike. Prints and writes a Markdown table and
JSON of the per-round medians.

    python benchmarks/scripts/openvino_static_batch.py runs/cpu_reports/lite0_int8_cpu.onnx \\
        --out benchmarks/reports/cpu-epyc-2core/openvino_static_batch

Run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _compile(core, path: Path, static: bool, threads: int):
    from stpm_edge.runtime.runners.openvino import compile_properties, single_image_model

    dynamic = core.read_model(str(path))
    single = single_image_model(dynamic)  # what the runner compiles
    if single is None:
        raise SystemExit(f"{path}: no dynamic batch dimension to compare")
    model = single if static else dynamic
    port = model.inputs[0]
    shape = list(single.inputs[0].get_partial_shape().to_shape())
    compiled = core.compile_model(model, "CPU", compile_properties("latency", "f32", threads))
    dtype = port.get_element_type().to_dtype()
    rng = np.random.default_rng(0)
    frame = (rng.random(shape) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    return compiled.create_infer_request(), frame


def _median_ms(request, frame, iters: int) -> float:
    for _ in range(10):
        request.infer({0: frame})
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        request.infer({0: frame})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import openvino as ov

    core = ov.Core()
    requests = {
        (m.name, static): _compile(core, m, static, args.threads)
        for m in args.models
        for static in (False, True)
    }
    rounds: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for (name, static), (request, frame) in requests.items():
            key = f"{name} {'batch 1 fixed' if static else 'dynamic batch'}"
            rounds.setdefault(key, []).append(_median_ms(request, frame, args.iters))
    lines = [
        f"OpenVINO {ov.get_version()}, CPU, {args.threads} threads, LATENCY, f32; "
        f"p50 of {args.iters} calls per round, {args.rounds} rounds interleaved.",
        "",
        "| model | compiled | p50 per round (ms) |",
        "|---|---|---|",
    ]
    for key, values in rounds.items():
        name, _, how = key.partition(" ")
        lines.append(f"| {name} | {how} | {' / '.join(f'{v:.2f}' for v in values)} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "static_batch.md").write_text(text)
        (args.out / "static_batch.json").write_text(json.dumps(rounds, indent=2) + "\n")


if __name__ == "__main__":
    main()
