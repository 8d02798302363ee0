"""Observers: what else watches the inspection loop (metrics, drift, an operator page).

An observer is any object with the two :class:`LoopObserver` methods. The loop calls them from its
inference thread after a result is logged, so they see exactly what the JSONL log sees:

- ``on_frame(camera, frame, prediction, record)``: every inspected frame. ``frame`` is the
  :class:`~.queue.Frame` (``frame.image``: the BGR frame as captured), ``prediction`` the
  detector's :class:`~stpm_edge.runtime.detector.Prediction` (``overlay``/``regions`` are filled
  for NG frames when ``--save-ng`` or ``--display`` asked for them), ``record`` the frame's log
  line as a dict (``verdict``, ``score``, ``latency_ms``, ``e2e_ms``, ``saved`` for a saved NG
  frame, ...).
- ``on_event(camera, record)``: every event line (``record["event"]``: start, reconnect,
  corrupt, drift, stop, ...).

``camera`` is the camera's name (``cam0`` for a single ``--source`` run, the ``name`` of each
station camera). Rules for observers: return quickly (the loop is real-time; hand slow work to
your own thread), never mutate ``frame.image`` or the record, and do not raise: an exception is
logged once per observer and the observer is then skipped, so a broken page or exporter can never
stop inspection.

Subscribe with ``loop.add_observer(obs)`` (one camera) or ``station.add_observer(obs)`` (every
camera of a station).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)


@runtime_checkable
class LoopObserver(Protocol):
    """What the loop calls; see the module docstring for the contract."""

    def on_frame(
        self, camera: str, frame: Any, prediction: Any, record: dict[str, Any]
    ) -> None: ...
    def on_event(self, camera: str, record: dict[str, Any]) -> None: ...


class ObserverList:
    """The loop's subscribers; a failing observer is logged once and then left out."""

    def __init__(self) -> None:
        self._items: list[LoopObserver] = []

    def add(self, observer: LoopObserver) -> None:
        if observer not in self._items:
            self._items.append(observer)

    def __len__(self) -> int:
        return len(self._items)

    def frame(self, camera: str, frame: Any, prediction: Any, record: dict[str, Any]) -> None:
        for observer in list(self._items):
            try:
                observer.on_frame(camera, frame, prediction, record)
            except Exception:
                self._drop(observer)

    def event(self, camera: str, record: dict[str, Any]) -> None:
        for observer in list(self._items):
            try:
                observer.on_event(camera, record)
            except Exception:
                self._drop(observer)

    def _drop(self, observer: LoopObserver) -> None:
        logger.exception("observer %r failed; it gets no more frames", observer)
        if observer in self._items:
            self._items.remove(observer)
