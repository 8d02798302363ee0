"""Whole ``stpm-train`` runs, each in its own process, timed in interleaved rounds.

    python benchmarks/scripts/train_whole.py --data D --category gravel --settings default system \\
        --rounds 1 --out benchmarks/reports/cpu-epyc-2core/train_speed/whole_host_memory.json

A setting is a named set of extra ``stpm-train`` flags (``SETTINGS``); every run is the default
recipe plus those flags, in a fresh process, so process-wide settings (``--host-memory``) start
clean. Recorded per run: the wall time of the command, the child's peak resident memory, and
``train_summary.json`` (what the run resolved ``--amp`` and ``--host-memory`` to, its best epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing_common import environment, interleaved

SETTINGS = {
    "default": [],
    "system": ["--host-memory", "system"],
    "bf16": ["--amp", "bf16"],
    "bf16_system": ["--amp", "bf16", "--host-memory", "system"],
}


def run_once(data: str, category: str, seed: int, flags: list[str], runs: list[dict]) -> float:
    """One ``stpm-train`` in a child process; appends its record to ``runs``, returns its wall s."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "stpm_edge.cli.train", "--data", data]
        command += ["--category", category, "--seed", str(seed), "--out", str(out)]
        command += ["--no-progress", "-q", *flags]
        start = time.perf_counter()
        # os.wait4, not Popen.wait: it also returns the child's own resource usage (peak RSS)
        _, status, usage = os.wait4(subprocess.Popen(command).pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"error: {' '.join(command)} exited with {code}")
        summary = json.loads((out / "train_summary.json").read_text())
    runs.append(
        {"flags": flags, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "summary": summary}
    )
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["default"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in args.settings}
    walls = interleaved(
        args.settings,
        lambda name: run_once(args.data, args.category, args.seed, SETTINGS[name], runs[name]),
        args.rounds,
    )
    report = {
        **environment(),
        "category": args.category,
        "seed": args.seed,
        "wall_s": walls,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({name: [round(s, 1) for s in w] for name, w in walls.items()}))


if __name__ == "__main__":
    main()
