"""Bounded latency recording: runtime/camera/latency.py and its use by the inspection loop."""

from __future__ import annotations

import logging
import re
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from stpm_edge.errors import ConfigError
from stpm_edge.runtime.camera import InspectionLoop, LoopOptions
from stpm_edge.runtime.camera.latency import LatencyWindow
from stpm_edge.runtime.camera.queue import Frame

SIZE = 4096


def _growth_bytes(step, n: int) -> int:
    """Bytes still allocated after ``n`` calls of ``step(i)`` (what a long run would keep)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            step(i)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_window_memory_stays_bounded() -> None:
    window = LatencyWindow(SIZE)
    # a list of 100k floats keeps ~3 MB; the ring was allocated up front and keeps nothing more
    assert _growth_bytes(lambda i: window.append(i * 0.001), 100_000) < 16 * 1024
    assert window.size == SIZE and window.recent().shape == (SIZE,)


def test_window_percentiles_cover_the_last_n_and_totals_cover_all() -> None:
    values = np.random.default_rng(0).gamma(2.0, 5.0, 100_000)
    values[10] = 1e4  # a spike long gone from the window: only the whole-run max keeps it
    window = LatencyWindow(SIZE)
    for v in values:
        window.append(v)
    last = values[-SIZE:]
    np.testing.assert_array_equal(window.recent(), last)  # oldest first, wrap-around included
    for q in (50, 99):
        assert window.percentile(q) == pytest.approx(np.percentile(last, q), rel=0, abs=1e-12)
        assert window.percentile(q) != pytest.approx(np.percentile(values, q), rel=1e-6)
    assert window.percentile(50, last=100) == pytest.approx(np.percentile(values[-100:], 50))
    assert window.count == values.size
    assert window.mean == pytest.approx(values.mean(), rel=1e-12)
    assert window.max == 1e4 and window.percentile(100) < 1e4


def test_window_before_and_just_after_wrapping() -> None:
    window = LatencyWindow(3)
    assert window.count == 0 and np.isnan(window.percentile(50)) and np.isnan(window.max)
    assert np.isnan(window.mean) and window.recent().size == 0
    for v in (5.0, 1.0, 2.0, 7.0):
        window.append(v)
    np.testing.assert_array_equal(window.recent(), [1.0, 2.0, 7.0])
    np.testing.assert_array_equal(window.recent(last=2), [2.0, 7.0])
    np.testing.assert_array_equal(window.recent(last=99), [1.0, 2.0, 7.0])
    assert window.recent(last=0).size == 0
    assert (window.count, window.mean, window.max) == (4, 3.75, 7.0)


def test_window_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"latency window size 0[\s\S]*Note: expected >= 1"):
        LatencyWindow(0)


# -- the loop's stats --------------------------------------------------------------------------
def _loop(**options) -> InspectionLoop:
    # handle_batch never calls the detector for OK frames without sinks, nor the source factory
    return InspectionLoop(None, lambda: None, LoopOptions(**({"stats_every": 0} | options)))


def _feed(loop: InspectionLoop, latency_ms: float, n: int = 1) -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    for _ in range(n):
        frame = Frame(loop.stats.frames, image, None, time.perf_counter(), "t")
        pred = SimpleNamespace(score=0.1, score_normalized=0.1, verdict="OK", latency_ms=latency_ms)
        loop.handle_batch([frame], [pred])


def test_long_run_keeps_loop_stats_bounded() -> None:
    loop = _loop()
    _feed(loop, 500.0)  # the run's worst frame, long out of the percentile window at the end
    # 40k frames (~22 min at 30 fps): unbounded lists would keep ~2.5 MB here, days keep GBs
    assert _growth_bytes(lambda i: _feed(loop, 1.0 + i % 10), 40_000) < 64 * 1024
    loop.finish(elapsed=1.0)
    summary = loop.stats.summary()
    fed = [500.0] + [1.0 + i % 10 for i in range(40_000)]
    last = fed[-SIZE:]
    assert summary["frames"] == 40_001
    assert summary["latency_p50_ms"] == round(float(np.percentile(last, 50)), 3)
    assert summary["latency_p99_ms"] == round(float(np.percentile(last, 99)), 3)
    assert summary["latency_max_ms"] == 500.0  # exact over the whole run
    assert summary["latency_mean_ms"] == round(float(np.mean(fed)), 3)
    assert summary["e2e_max_ms"] >= summary["e2e_p99_ms"] > 0
    assert "latencies" not in summary and "e2e" not in summary


def test_stats_line_covers_the_frames_since_the_previous_line(caplog) -> None:
    loop = _loop(stats_every=1e-9)
    caplog.set_level(logging.INFO, logger="stpm_edge.runtime.camera.loop")
    _feed(loop, 100.0, 30)
    loop.maybe_log_stats()
    _feed(loop, 2.0, 20)
    loop.maybe_log_stats()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stats:")]
    p50 = [float(re.search(r"p50 ([\d.]+) ms", line).group(1)) for line in lines]
    assert p50 == [100.0, 2.0] and lines[-1].endswith("frames 50")
