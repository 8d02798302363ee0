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
from dataclasses import dataclass, field, fields
from typing import Any

import cv2

from stpm_edge.errors import ConfigError, DataError, note

from .latency import LatencyWindow
from .observers import LoopObserver, ObserverList
from .queue import Frame, FrameQueue, now_iso
from .sinks import Display, JsonlLog, NgSaver
from .sources import FrameSource, NoFrame, SkipFrame, SourceError
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
    camera: str | None = None  # a station camera's name: then every log line carries "camera"


@dataclass
class LoopStats:
    """Totals of a run (also what the periodic stats line reports).

    ``stopped_by``: end, empty (a finite source without one readable frame), gave_up
    (reconnects exhausted), max_frames, duration, key, or the signal's name.

    Memory stays bounded however long the run: ``latencies`` (the model call) and ``e2e``
    (capture to verdict) are :class:`~.latency.LatencyWindow` recorders, so the ``*_p50_ms`` /
    ``*_p99_ms`` figures cover the last ``LatencyWindow.size`` frames (default 4096), while
    ``*_mean_ms`` / ``*_max_ms`` are exact over the whole run.
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
    latency_mean_ms: float = float("nan")
    latency_max_ms: float = float("nan")
    e2e_mean_ms: float = float("nan")
    e2e_max_ms: float = float("nan")
    latencies: LatencyWindow = field(default_factory=LatencyWindow, repr=False, compare=False)
    e2e: LatencyWindow = field(default_factory=LatencyWindow, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """The scalar fields, floats rounded (the recorders stay out: logs get their figures)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        del data["latencies"], data["e2e"]
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


class InspectionLoop:
    """Capture thread + inference loop + sinks; :meth:`run` blocks until the end and returns stats.

    Args:
        detector: an :class:`~stpm_edge.runtime.detector.AnomalyDetector` (or anything with the
            same ``predict``/``explain``).
        source_factory: builds a fresh, unopened :class:`FrameSource`; called again on every
            reconnect and every ``--on-end loop`` rewind (tests inject failing sources here),
            and once unopened at start to learn whether the source is live.
        options: the :class:`LoopOptions`.
        log: a JSONL log shared with other cameras (a station's one file); the caller closes it.
            Default: the loop's own ``options.log``.

    Observers (:mod:`.observers`) subscribe with :meth:`add_observer`. A station drives several
    loops itself through :meth:`start`, :meth:`handle_batch` and :meth:`finish` (what :meth:`run`
    does for one camera).

    Raises:
        ConfigError: invalid options, or an output path that cannot be created.
    """

    def __init__(
        self,
        detector: Any,
        source_factory: Callable[[], FrameSource],
        options: LoopOptions,
        log: JsonlLog | None = None,
    ) -> None:
        if options.on_end not in ("stop", "loop"):
            raise ConfigError(note(f"--on-end {options.on_end!r}", "choose stop or loop"))
        if options.batch < 1:
            raise ConfigError(note(f"--batch {options.batch}", "expected >= 1"))
        self.detector = detector
        self.source_factory = source_factory
        self.options = options
        self.stats = LoopStats()
        self.camera = options.camera or "cam0"
        self.observers = ObserverList()
        self._stop = threading.Event()
        self._queue: FrameQueue | None = None
        self._thread: threading.Thread | None = None
        self._window = (time.perf_counter(), 0, 0)  # stats line: start time, frames, latency count
        # sinks first: an unwritable --log/--save-ng fails here, before any thread starts
        self._owns_log = log is None
        self._log = JsonlLog(options.log) if log is None else log
        self._ng = NgSaver(options.save_ng) if options.save_ng else None
        self._display = Display() if options.display else None
        self._triggers = build_triggers(options.trigger_cmd, options.trigger_url)

    # -- control ---------------------------------------------------------------------------------
    def add_observer(self, observer: LoopObserver) -> None:
        """Subscribe ``observer`` to this loop's frames and events (see :mod:`.observers`)."""
        self.observers.add(observer)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, reason: str = "stop") -> None:
        """Ask the loop to stop after the current batch (safe from signal handlers and threads)."""
        if not self._stop.is_set():
            self.stats.stopped_by = self.stats.stopped_by or reason
            self._stop.set()

    def event(self, name: str, **fields: Any) -> None:
        """Write an event line (``{"event": name, ...}``); frame lines never carry ``event``."""
        record = {"event": name, "timestamp": now_iso(), "source": self.options.source_name}
        if self.options.camera is not None:
            record["camera"] = self.options.camera
        record.update(fields)
        self._log.write(record)
        level = logging.INFO if name in ("start", "stop", "end", "loop") else logging.WARNING
        logger.log(level, "event %s %s%s", name, self._tag(), dict(fields))
        self.observers.event(self.camera, record)

    def _tag(self) -> str:
        """``camera NAME `` in a station's stderr lines, nothing for a single camera."""
        return f"camera {self.options.camera} " if self.options.camera is not None else ""

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
                except NoFrame:
                    continue
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
        if self.options.camera is not None:
            record["camera"] = self.options.camera
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
        self.observers.frame(self.camera, frame, pred, record)
        if self._display is not None:
            self._display.show(frame, pred)
            if self._display.quit_requested:
                self.stop("key")

    def maybe_log_stats(self) -> None:
        """Log the stats line (FPS, latency, drops, NG) once every ``stats_every`` seconds.

        Its p50/p99 cover the frames since the previous line (at most the recorder's last
        ``size``, which a 5 s line at 30 fps never reaches)."""
        every = self.options.stats_every
        window_start, frames_start, counted = self._window
        now = time.perf_counter()
        if not every or now - window_start < every:
            return
        latencies = self.stats.latencies
        new = latencies.count - counted
        logger.info(
            "stats: %s%.1f FPS, latency p50 %.2f ms p99 %.2f ms, drops %d, NG %d, frames %d",
            self._tag(),
            (self.stats.frames - frames_start) / max(now - window_start, 1e-9),
            latencies.percentile(50, last=new),
            latencies.percentile(99, last=new),
            self.drops,
            self.stats.ng,
            self.stats.frames,
        )
        self._window = (now, self.stats.frames, latencies.count)

    @property
    def drops(self) -> int:
        """Frames the live queue dropped so far (0 before :meth:`start`)."""
        return self._queue.drops if self._queue is not None else 0

    def _infer(self, frames: list[Frame]) -> None:
        try:
            preds = self.detector.predict([f.image for f in frames])
        except DataError as exc:  # an odd frame (format, ROI) must not stop the line
            self.frame_error(frames, exc)
            return
        self.handle_batch(frames, preds)

    def frame_error(self, frames: list[Frame], exc: Exception) -> None:
        """Log frames the detector refused (``frame_error`` event); the run goes on."""
        self.event("frame_error", frames=[f.id for f in frames], error=str(exc).splitlines()[0])

    def handle_batch(self, frames: list[Frame], preds: Sequence[Any], batch: int = 0) -> None:
        """Log, save and signal each frame's result; ``batch``: the size of the model call the
        frames were part of (a station batches several cameras; default: ``len(frames)``)."""
        for frame, pred in zip(frames, preds, strict=True):
            self._handle(frame, pred, batch or len(frames))
        if self.options.max_frames is not None and self.stats.frames >= self.options.max_frames:
            self.stop("max_frames")

    def wants(self) -> int:
        """How many more frames this loop may process (``--max-frames``), capped at the batch."""
        want = self.options.batch
        if self.options.max_frames is not None:
            want = min(want, self.options.max_frames - self.stats.frames)
        return max(want, 0)

    # -- main loop -------------------------------------------------------------------------------
    def start(self, notify: threading.Event | None = None) -> FrameQueue:
        """Write the start event and start the capture thread; returns the frame queue.

        ``notify`` is set whenever a frame is queued (a station waits on one event for all its
        cameras).
        """
        opts = self.options
        # one unopened probe tells live (keep newest, count drops) from files (block, keep all)
        drop = bool(self.source_factory().live) or opts.realtime
        size = max(2, 2 * opts.batch) if not drop else opts.batch
        queue = self._queue = FrameQueue(size, drop, notify=notify)
        self.event("start", backend=getattr(self.detector, "name", ""), batch=opts.batch)
        self._thread = threading.Thread(
            target=self._capture, args=(queue,), name=f"stpm-capture-{self.camera}", daemon=True
        )
        self._window = (time.perf_counter(), 0, 0)
        self._thread.start()
        return queue

    def run(self) -> LoopStats:
        """Process frames until the source ends, a bound is reached or :meth:`stop` is called."""
        opts = self.options
        queue = self.start()
        start = time.perf_counter()
        try:
            while not self._stop.is_set():
                if opts.duration is not None and time.perf_counter() - start >= opts.duration:
                    self.stop("duration")
                    break
                frames = queue.get_batch(self.wants(), timeout=0.1)
                if not frames:
                    if queue.finished():
                        self.stats.stopped_by = self.stats.stopped_by or "end"
                        break
                    continue
                self._infer(frames)
                self.maybe_log_stats()
        finally:
            self.finish(time.perf_counter() - start)
        return self.stats

    def finish(self, elapsed: float) -> None:
        """Stop the capture thread, write the final ``stop`` event and close the sinks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._finish(elapsed)

    def _finish(self, elapsed: float) -> None:
        s = self.stats
        s.elapsed_s = elapsed
        s.fps = s.frames / elapsed if elapsed > 0 else 0.0
        s.drops = self.drops
        # percentiles: the last ``size`` frames; mean and max: the whole run (see LoopStats)
        s.latency_p50_ms, s.latency_p99_ms = s.latencies.percentile(50), s.latencies.percentile(99)
        s.e2e_p50_ms, s.e2e_p99_ms = s.e2e.percentile(50), s.e2e.percentile(99)
        s.latency_mean_ms, s.latency_max_ms = s.latencies.mean, s.latencies.max
        s.e2e_mean_ms, s.e2e_max_ms = s.e2e.mean, s.e2e.max
        finite = {k: v for k, v in s.summary().items() if not (isinstance(v, float) and v != v)}
        self.event("stop", **finite)
        if self._owns_log:
            self._log.close()
        for trigger in self._triggers:
            trigger.close()
        if self._display is not None:
            self._display.close()
