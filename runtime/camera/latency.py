"""A bounded latency recorder: a camera loop runs for days, so it keeps only the recent samples.

:class:`LatencyWindow` holds the last ``size`` samples in a fixed ring (the p50/p99 of the stats
line and of the final summary are "the last ``size`` frames"), plus an exact count, mean and
maximum over every sample of the run. Its memory and the cost of a percentile stay constant
however long the run is.
"""

from __future__ import annotations

import numpy as np

from stpm_edge.errors import ConfigError, note

DEFAULT_WINDOW = 4096  # ~2 min at 30 fps: enough frames for a stable p99, 32 KiB per recorder


class LatencyWindow:
    """The last ``size`` latencies (ms) for percentiles; count, mean and max over all of them.

    Not thread-safe: one loop thread appends and reads.

    Raises:
        ConfigError: ``size`` < 1.
    """

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise ConfigError(note(f"latency window size {size}", "expected >= 1"))
        self._ring = np.zeros(size, dtype=np.float64)  # allocated once, overwritten in place
        self._count = 0
        self._sum = 0.0
        self._max = float("nan")

    @property
    def size(self) -> int:
        """Capacity: how many recent samples the percentiles cover at most."""
        return int(self._ring.size)

    @property
    def count(self) -> int:
        """Samples recorded over the whole run."""
        return self._count

    @property
    def mean(self) -> float:
        """Exact mean over the whole run (nan before the first sample)."""
        return self._sum / self._count if self._count else float("nan")

    @property
    def max(self) -> float:
        """Exact maximum over the whole run (nan before the first sample)."""
        return self._max

    def append(self, value: float) -> None:
        value = float(value)
        if not self._count or value > self._max:
            self._max = value
        self._ring[self._count % self._ring.size] = value
        self._count += 1
        self._sum += value

    def recent(self, last: int | None = None) -> np.ndarray:
        """A copy of the last ``last`` samples (default and at most: ``size``), oldest first."""
        held = min(self._count, self._ring.size)
        n = held if last is None else max(0, min(int(last), held))
        end = self._count % self._ring.size
        # the ring's newest sample sits just before ``end``; take n back from there, wrapping
        idx = (np.arange(end - n, end) % self._ring.size) if n else np.arange(0)
        return self._ring[idx]

    def percentile(self, q: float, last: int | None = None) -> float:
        """The ``q``-th percentile of :meth:`recent` (``last``), nan when there is no sample."""
        values = self.recent(last)
        return float(np.percentile(values, q)) if values.size else float("nan")
