"""What the training-speed scripts share: interleaved rounds and the environment they record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from stpm_edge.benchmarks.environment import cpu_info


def interleaved(
    names: Sequence[str], measure: Callable[[str], float], rounds: int
) -> dict[str, list[float]]:
    """``measure(name)`` for every name in turn, ``rounds`` times: the host's drift (these VMs
    swing by tens of percent) then reaches every setting alike."""
    results: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            results[name].append(measure(name))
    return results


def environment() -> dict[str, Any]:
    """The CPU (without its flag list), torch and its thread count."""
    return {
        "cpu": {k: v for k, v in cpu_info().items() if k != "flags"},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
