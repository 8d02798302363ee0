"""The inspection loop: a capture thread fills the frame queue, the loop infers in micro-batches
and hands every result to the sinks and triggers.

A source that fails to open or to read is rebuilt with exponential backoff (``reconnect``
events); a finite source that ends without one readable frame stops the run as ``empty``.

In-process use (tests, demos)::

    loop = InspectionLoop(detector, lambda: open_source("parts/"), LoopOptions(log="run.jsonl"))
    stats = loop.run()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from stpm_edge.errors import ConfigError, DataError, note

from .queue import Frame, FrameQueue, now_iso
from .sinks import Display, JsonlLog, NgSaver
from .sources import FrameSource, SkipFrame, SourceError
from .triggers import build_triggers

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


@dataclass
class LoopOptions:
    """Behaviour of :class:`InspectionLoop` (the CLI flags, typed)."""

    log: str | None = None
    save_ng: str | None = None
    max_frames: int | None = None
    duration: float | None = None
    batch: int = 1
    realtime: bool = False
    on_end: str = "stop"
    reconnect_delay: float = 0.5
    max_reconnects: int = 10
    stats_every: float = 5.0
    display: bool = False
    trigger_cmd: str | None = None
    trigger_url: str | None = None
    source_name: str = ""


@dataclass
class LoopStats:
    """Totals of a run (also what the periodic stats line reports).

    ``stopped_by``: end, empty (a finite source without one readable frame), gave_up
    (reconnects exhausted), max_frames, duration, key, or the signal's name.
    """

    frames: int = 0
    ng: int = 0
    drops: int = 0
    corrupt: int = 0
    reconnects: int = 0
    source_lost: int = 0
    elapsed_s: float = 0.0
    fps: float = 0.0
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    e2e_p50_ms: float = float("nan")
    e2e_p99_ms: float = float("nan")
    stopped_by: str = ""
    latencies: list[float] = field(default_factory=list, repr=False)
    e2e: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies")
        data.pop("e2e")
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


class InspectionLoop:
    """Capture thread + inference loop + sinks; :meth:`run` blocks until the end and returns stats.

    Args:
        detector: an :class:`~stpm_edge.runtime.detector.AnomalyDetector` (or anything with the
            same ``predict``/``explain``).
        source_factory: builds a fresh, unopened :class:`FrameSource`; called again on every
            reconnect and every ``--on-end loop`` rewind (tests inject failing sources here),
            and once unopened at start to learn whether the source is live.
        options: the :class:`LoopOptions`.

    Raises:
        ConfigError: invalid options, or an output path that cannot be created.
    """

    def __init__(
        self, detector: Any, source_factory: Callable[[], FrameSource], options: LoopOptions
    ) -> None:
        if options.on_end not in ("stop", "loop"):
            raise ConfigError(note(f"--on-end {options.on_end!r}", "choose stop or loop"))
        if options.batch < 1:
            raise ConfigError(note(f"--batch {options.batch}", "expected >= 1"))
        self.detector = detector
        self.source_factory = source_factory
        self.options = options
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._queue: FrameQueue | None = None
        # sinks first: an unwritable --log/--save-ng fails here, before any thread starts
        self._log = JsonlLog(options.log)
        self._ng = NgSaver(options.save_ng) if options.save_ng else None
        self._display = Display() if options.display else None
        self._triggers = build_triggers(options.trigger_cmd, options.trigger_url)

    # -- control ---------------------------------------------------------------------------------
    def stop(self, reason: str = "stop") -> None:
        """Ask the loop to stop after the current batch (safe from signal handlers and threads)."""
        if not self._stop.is_set():
            self.stats.stopped_by = self.stats.stopped_by or reason
            self._stop.set()

    def event(self, name: str, **fields: Any) -> None:
        """Write an event line (``{"event": name, ...}``); frame lines never carry ``event``."""
        record = {"event": name, "timestamp": now_iso(), "source": self.options.source_name}
        record.update(fields)
        self._log.write(record)
        level = logging.INFO if name in ("start", "stop", "end", "loop") else logging.WARNING
        logger.log(level, "event %s %s", name, dict(fields))

    # -- capture thread --------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> bool:
        """Wait before reconnect ``attempt``; False when attempts are exhausted or stopping."""
        if attempt > self.options.max_reconnects:
            self.event("gave_up", attempts=attempt - 1)
            self.stats.stopped_by = self.stats.stopped_by or "gave_up"
            return False
        delay = min(self.options.reconnect_delay * 2 ** (attempt - 1), MAX_BACKOFF_S)
        self.stats.reconnects += 1
        self.event("reconnect", attempt=attempt, delay_s=round(delay, 3))
        return not self._stop.wait(delay)

    def _open(self) -> FrameSource | None:
        """A fresh, opened source, or None (the failure is logged as ``open_failed``)."""
        source = self.source_factory()
        try:
            source.open()
        except (SourceError, ConfigError, OSError) as exc:
            self.event("open_failed", error=str(exc).splitlines()[0])
            return None
        return source

    def _at_end(self, captured: int) -> bool:
        """A finite source ended; True when the run goes on (``--on-end loop``)."""
        if captured == 0:  # nothing to inspect: say so instead of a silent, successful run
            self.event("empty", corrupt=self.stats.corrupt)
            self.stats.stopped_by = self.stats.stopped_by or "empty"
            return False
        if self.options.on_end == "loop":
            self.event("loop")
            return True
        self.event("end")
        return False

    def _capture(self, queue: FrameQueue) -> None:
        next_id, attempt, source, pace = 0, 0, None, 0.0
        try:
            while not self._stop.is_set():
                if source is None:
                    source = self._open()
                    if source is None:
                        attempt += 1
                        if not self._backoff(attempt):
                            break
                        continue
                    if self.options.realtime and not source.live:
                        pace = 1.0 / source.fps if source.fps > 0 else 0.0
                try:
                    item = source.read()
                except SkipFrame as exc:
                    self.stats.corrupt += 1
                    self.event("corrupt", error=str(exc))
                    continue
                except (SourceError, OSError, cv2.error) as exc:
                    self.event("read_failed", error=str(exc).splitlines()[0])
                    source.close()
                    source = None
                    attempt += 1
                    if not self._backoff(attempt):
                        break
                    continue
                if item is None:
                    self.stats.source_lost += getattr(source, "lost", 0)
                    source.close()
                    source = None
                    if self._at_end(next_id):
                        continue
                    break
                attempt = 0  # a good read resets the backoff
                frame = Frame(next_id, item.image, item.origin, time.perf_counter(), now_iso(),
                              dict(item.meta))  # fmt: skip
                next_id += 1
                if not queue.put(frame, self._stop):
                    break
                if pace:
                    self._stop.wait(pace)
        except Exception as exc:  # never leave the inference loop waiting forever
            logger.exception("capture thread failed")
            self.event("capture_error", error=str(exc))
        finally:
            if source is not None:
                self.stats.source_lost += getattr(source, "lost", 0)
                source.close()
            queue.close()

    # -- results ---------------------------------------------------------------------------------
    def _record(self, frame: Frame, pred: Any, batch: int, e2e_ms: float) -> dict[str, Any]:
        record: dict[str, Any] = {
            "frame": frame.id,
            "timestamp": frame.timestamp,
            "source": self.options.source_name,
        }
        if frame.origin is not None:
            record["file"] = frame.origin
        record.update(frame.meta)
        record.update(
            score=float(pred.score),
            score_normalized=float(pred.score_normalized),
            verdict=pred.verdict,
            latency_ms=round(float(pred.latency_ms), 3),
            e2e_ms=round(e2e_ms, 3),
            batch=batch,
        )
        return record

    def _handle(self, frame: Frame, pred: Any, batch: int) -> None:
        e2e_ms = (time.perf_counter() - frame.t_capture) * 1000.0
        record = self._record(frame, pred, batch, e2e_ms)
        ng = pred.verdict == "NG"
        if ng and (self._ng is not None or self._display is not None):
            self.detector.explain(frame.image, pred, overlay=True)
            record["regions"] = [list(r) for r in pred.regions or []]
        if ng and self._ng is not None:
            record["saved"] = self._ng.save(frame, pred)
        self._log.write(record)
        self.stats.frames += 1
        self.stats.ng += int(ng)
        self.stats.latencies.append(float(pred.latency_ms))
        self.stats.e2e.append(e2e_ms)
        if ng:
            for trigger in self._triggers:
                trigger.fire(record)
        if self._display is not None:
            self._display.show(frame, pred)
            if self._display.quit_requested:
                self.stop("key")

    def _log_stats(self, window: list[float], window_start: float, frames_start: int) -> None:
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        fps = (self.stats.frames - frames_start) / elapsed
        logger.info(
            "stats: %.1f FPS, latency p50 %.2f ms p99 %.2f ms, drops %d, NG %d, frames %d",
            fps,
            _percentile(window, 50),
            _percentile(window, 99),
            self._drops(),
            self.stats.ng,
            self.stats.frames,
        )

    def _drops(self) -> int:
        return self._queue.drops if self._queue is not None else 0

    def _infer(self, frames: list[Frame]) -> None:
        try:
            preds = self.detector.predict([f.image for f in frames])
        except DataError as exc:  # an odd frame (format, ROI) must not stop the line
            self.event("frame_error", frames=[f.id for f in frames], error=str(exc).splitlines()[0])
            return
        for frame, pred in zip(frames, preds, strict=True):
            self._handle(frame, pred, len(frames))

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> LoopStats:
        """Process frames until the source ends, a bound is reached or :meth:`stop` is called."""
        opts = self.options
        # one unopened probe tells live (keep newest, count drops) from files (block, keep all)
        drop = bool(self.source_factory().live) or opts.realtime
        queue = self._queue = FrameQueue(max(2, 2 * opts.batch) if not drop else opts.batch, drop)
        self.event("start", backend=getattr(self.detector, "name", ""), batch=opts.batch)
        thread = threading.Thread(
            target=self._capture, args=(queue,), name="stpm-capture", daemon=True
        )
        start = time.perf_counter()
        window_start, frames_start, window_index = start, 0, 0
        thread.start()
        try:
            while not self._stop.is_set():
                if opts.duration is not None and time.perf_counter() - start >= opts.duration:
                    self.stop("duration")
                    break
                want = opts.batch
                if opts.max_frames is not None:
                    want = min(want, opts.max_frames - self.stats.frames)
                frames = queue.get_batch(want, timeout=0.1)
                if not frames:
                    if queue.finished():
                        self.stats.stopped_by = self.stats.stopped_by or "end"
                        break
                    continue
                self._infer(frames)
                if opts.max_frames is not None and self.stats.frames >= opts.max_frames:
                    self.stop("max_frames")
                if opts.stats_every and time.perf_counter() - window_start >= opts.stats_every:
                    self._log_stats(self.stats.latencies[window_index:], window_start, frames_start)
                    window_start, frames_start = time.perf_counter(), self.stats.frames
                    window_index = len(self.stats.latencies)
        finally:
            self._stop.set()
            thread.join(timeout=5.0)
            self._finish(time.perf_counter() - start)
        return self.stats

    def _finish(self, elapsed: float) -> None:
        s = self.stats
        s.elapsed_s = elapsed
        s.fps = s.frames / elapsed if elapsed > 0 else 0.0
        s.drops = self._drops()
        s.latency_p50_ms, s.latency_p99_ms = (
            _percentile(s.latencies, 50),
            _percentile(s.latencies, 99),
        )
        s.e2e_p50_ms, s.e2e_p99_ms = _percentile(s.e2e, 50), _percentile(s.e2e, 99)
        finite = {k: v for k, v in s.summary().items() if not (isinstance(v, float) and v != v)}
        self.event("stop", **finite)
        self._log.close()
        for trigger in self._triggers:
            trigger.close()
        if self._display is not None:
            self._display.close()
