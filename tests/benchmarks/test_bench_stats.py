"""Percentiles and summaries of benchmarks/stats.py against hand-computed and numpy values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stpm_edge.benchmarks.stats import LatencyStats, mean, percentile, std
from stpm_edge.errors import ConfigError


def test_percentiles_of_1_to_100() -> None:
    samples = list(range(1, 101))
    # rank = 99 * q / 100: p50 -> 49.5 -> 50.5; p90 -> 89.1 -> 90.1; p99 -> 98.01 -> 99.01
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 90) == pytest.approx(90.1)
    assert percentile(samples, 99) == pytest.approx(99.01)
    assert percentile(samples, 0) == 1
    assert percentile(samples, 100) == 100


def test_small_hand_example_any_order() -> None:
    samples = [4.0, 1.0, 3.0, 2.0]  # sorted 1,2,3,4; p25 rank 0.75 -> 1.75; p50 rank 1.5 -> 2.5
    assert percentile(samples, 25) == pytest.approx(1.75)
    assert percentile(samples, 50) == pytest.approx(2.5)
    assert mean(samples) == pytest.approx(2.5)
    assert std(samples) == pytest.approx(math.sqrt(1.25))  # population: mean sq. dev. 5/4


@pytest.mark.parametrize("q", [1, 10, 33.3, 50, 90, 99, 99.9])
def test_matches_numpy_default(q: float) -> None:
    samples = np.random.default_rng(3).gamma(2.0, 3.0, size=257).tolist()
    assert percentile(samples, q) == pytest.approx(np.percentile(samples, q))


def test_latency_stats_from_samples() -> None:
    samples = np.random.default_rng(0).normal(10, 2, size=101).tolist()
    s = LatencyStats.from_samples(samples)
    assert s.count == 101
    assert s.min == min(samples) and s.max == max(samples)
    assert s.p50 == pytest.approx(np.median(samples))
    assert s.std == pytest.approx(np.std(samples))
    assert s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    assert set(s.as_dict()) == {"p50", "p90", "p99", "mean", "std", "min", "max"}
    assert s.throughput(4) == pytest.approx(4000.0 / s.mean)


def test_single_sample_and_errors() -> None:
    s = LatencyStats.from_samples([7.0])
    assert (s.p50, s.p99, s.std) == (7.0, 7.0, 0.0)
    with pytest.raises(ConfigError, match="no latency samples"):
        LatencyStats.from_samples([])
    with pytest.raises(ConfigError, match="out of range"):
        percentile([1.0], 101)
