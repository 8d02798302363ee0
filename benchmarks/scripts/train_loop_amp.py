"""``stpm-train``'s own epoch loop in float32 and with bf16 autocast, timed in interleaved rounds.

    python benchmarks/scripts/train_loop_amp.py --data D --category gravel --out benchmarks/reports/cpu-epyc-2core/train_speed/loop_amp.json

``train_step_layout.py`` times the student's step alone; this runs ``stpm_edge.train.train_epoch``
(the data loader, the cached teacher features, the step, the optimizer) on a benchmark category
with the default recipe, so it shows what ``--amp bf16`` changes in a real run. Each round runs
``--epochs`` epochs per setting on a fresh model after one warm-up epoch (the teacher cache fill).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from timing_common import environment, interleaved

from stpm_edge.mixed_precision import resolve_autocast
from stpm_edge.model import STPM
from stpm_edge.train import TeacherFeatureCache, TrainConfig, train_epoch, train_val_datasets

SETTINGS = ("off", "bf16")


def seconds_per_epoch(cfg: TrainConfig, amp: str, epochs: int) -> float:
    torch.manual_seed(cfg.seed)
    model = STPM(cfg.model_config())
    train_set, _ = train_val_datasets(cfg, model.config)
    cache = TeacherFeatureCache(model, len(train_set))
    optimizer = torch.optim.SGD(
        model.student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    autocast, device = resolve_autocast(amp, torch.device("cpu")), torch.device("cpu")
    scaler = autocast.grad_scaler()
    train_epoch(model, optimizer, scaler, train_set, cfg, 0, device, autocast, cache)  # warm-up
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        train_epoch(model, optimizer, scaler, train_set, cfg, epoch, device, autocast, cache)
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    cfg = TrainConfig(data=args.data, category=args.category, progress=False)
    rounds = interleaved(
        SETTINGS, lambda amp: seconds_per_epoch(cfg, amp, args.epochs), args.rounds
    )
    best = {amp: min(s) for amp, s in rounds.items()}
    report = {
        **environment(),
        "category": args.category,
        "batch_size": cfg.batch_size,
        "epochs_per_round": args.epochs,
        "seconds_per_epoch": rounds,
        "speedup_vs_off_best": {amp: best["off"] / s for amp, s in best.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["speedup_vs_off_best"]), rounds)


if __name__ == "__main__":
    main()
