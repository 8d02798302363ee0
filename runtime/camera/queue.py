"""The bounded frame queue between the capture thread and the inference loop.

Two policies: live sources drop the OLDEST frame when full (the newest frame is the one worth
inspecting; drops are counted), files and folders block the reader so every frame is processed
in order.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np


def now_iso() -> str:
    """Local wall-clock time with offset, millisecond resolution (the log's timestamp format)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


@dataclass
class Frame:
    """A frame in flight: its id in this run, where it came from and when it was captured."""

    id: int
    image: np.ndarray
    origin: str | None
    t_capture: float  # time.perf_counter() at capture: end-to-end latency
    timestamp: str  # now_iso() at capture: the log's wall-clock time
    meta: dict[str, Any] = field(default_factory=dict)


class FrameQueue:
    """Bounded queue. ``drop_oldest``: a full put evicts the oldest frame (counted in ``drops``);
    otherwise a put waits for room (or for ``stop``). ``notify``: an event set on every put and
    on close, so one consumer can wait for several queues (a station's scheduler)."""

    def __init__(
        self, maxsize: int, drop_oldest: bool, notify: threading.Event | None = None
    ) -> None:
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self.maxsize = max(1, maxsize)
        self.drop_oldest = drop_oldest
        self.drops = 0
        self.closed = False
        self._notify = notify

    def put(self, item: Frame, stop: threading.Event) -> bool:
        """Queue ``item``; False when ``stop`` was set while waiting for room."""
        with self._cond:
            while len(self._items) >= self.maxsize:
                if self.drop_oldest:
                    self._items.popleft()
                    self.drops += 1
                    break
                if stop.is_set():
                    return False
                self._cond.wait(0.05)
            self._items.append(item)
            self._cond.notify_all()
        if self._notify is not None:
            self._notify.set()
        return True

    def close(self) -> None:
        """No more puts: readers drain what is left, then :meth:`finished` is True."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        if self._notify is not None:
            self._notify.set()

    def get_batch(self, n: int, timeout: float) -> list[Frame]:
        """Up to ``n`` frames, waiting at most ``timeout`` s for the first one."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            batch = [self._items.popleft() for _ in range(min(n, len(self._items)))]
            self._cond.notify_all()
            return batch

    def finished(self) -> bool:
        with self._cond:
            return self.closed and not self._items
