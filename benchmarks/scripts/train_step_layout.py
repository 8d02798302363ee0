"""Student training step, NCHW vs channels-last (NHWC) weights (and NHWC with bf16 autocast),
timed in interleaved rounds.

    python benchmarks/scripts/train_step_layout.py --out benchmarks/reports/cpu-epyc-2core/train_speed/step_layout.json

One SGD step of ``stpm-train``'s default recipe on a CPU: batch 32, 256 px, efficientnet_lite0
student (random weights: timing does not depend on them), loss against fixed teacher features (the
teacher is cached during training). Each round times every layout in turn, so host drift reaches
both alike; the report keeps every round's seconds per step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from timing_common import environment, interleaved

from stpm_edge import anomaly_map as am
from stpm_edge.model import STPM, ModelConfig

# variant -> (weight layout, bf16 autocast); bf16 is a numerics change, timed for comparison only
VARIANTS = {
    "nchw": (torch.contiguous_format, False),
    "nhwc": (torch.channels_last, False),
    "nhwc_bf16": (torch.channels_last, True),
}


def step_seconds(model: STPM, x: torch.Tensor, teacher: list, variant: str, steps: int) -> float:
    layout, bf16 = VARIANTS[variant]
    student = model.student.to(memory_format=layout)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            features = student(x)
        loss = am.stpm_loss(teacher, [f.float() for f in features], 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: oneDNN picks its kernels for this layout
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = STPM(ModelConfig(image_size=args.image_size, teacher_weights="random"), False)
    model.student.train()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    with torch.no_grad():
        teacher = model.teacher(x)
    rounds = interleaved(
        VARIANTS, lambda variant: step_seconds(model, x, teacher, variant, args.steps), args.rounds
    )
    best = {variant: min(seconds) for variant, seconds in rounds.items()}
    report = {
        **environment(),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "seconds_per_step": rounds,
        "images_per_s_best": {k: args.batch_size / v for k, v in best.items()},
        "speedup_vs_nchw_best": {k: best["nchw"] / v for k, v in best.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
