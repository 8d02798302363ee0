"""Latency statistics: percentiles, mean and standard deviation of per-iteration times.

Conventions (stated once, used by every report):

- ``percentile(samples, q)`` interpolates linearly between the two nearest ranks, exactly like
  ``numpy.percentile(..., method="linear")`` (numpy's default): for sorted samples ``x[0..n-1]``
  the rank is ``h = (n - 1) * q / 100`` and the value ``x[floor(h)] + (h - floor(h)) *
  (x[floor(h) + 1] - x[floor(h)])``.
- ``std`` is the **population** standard deviation (divide by ``n``, numpy's ``ddof=0``): the
  samples are the whole run being described, not an estimate of another population.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from stpm_edge.errors import ConfigError, note


def _checked(samples: Sequence[float]) -> list[float]:
    """Return ``samples`` as a sorted list of floats; empty input is a caller mistake."""
    values = sorted(float(s) for s in samples)
    if not values:
        raise ConfigError(
            note("no latency samples to summarise", "run at least one timed iteration (--iters)")
        )
    return values


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 <= q <= 100) by linear interpolation between closest ranks.

    Args:
        samples: one value per iteration (any order), at least one.
        q: percentile in [0, 100].

    Returns:
        float, equal to ``numpy.percentile(samples, q)`` with numpy's default method.
    """
    if not 0.0 <= q <= 100.0:
        raise ConfigError(note(f"percentile q={q} is out of range", "expected 0 <= q <= 100"))
    values = _checked(samples)
    rank = (len(values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (rank - low) * (values[high] - values[low])


def mean(samples: Sequence[float]) -> float:
    """Arithmetic mean of at least one sample."""
    values = _checked(samples)
    return math.fsum(values) / len(values)


def std(samples: Sequence[float]) -> float:
    """Population standard deviation (``ddof=0``) of at least one sample."""
    values = _checked(samples)
    mu = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mu) ** 2 for v in values) / len(values))


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-iteration latencies, all in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    count: int

    @classmethod
    def from_samples(cls, ms: Sequence[float]) -> LatencyStats:
        """Summarise ``ms`` (one latency per iteration, milliseconds, at least one value)."""
        values = _checked(ms)
        return cls(
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            mean=mean(values),
            std=std(values),
            min=values[0],
            max=values[-1],
            count=len(values),
        )

    def as_dict(self) -> dict[str, float]:
        """The ``latency_ms`` object of report.json (p50..max; ``count`` is reported as iters)."""
        d = asdict(self)
        d.pop("count")
        return d

    def throughput(self, batch: int) -> float:
        """Images per second at this batch size: ``batch * 1000 / mean_ms``."""
        return batch * 1000.0 / self.mean if self.mean > 0 else float("inf")
