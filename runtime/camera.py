"""``stpm-camera``: unattended inspection of a camera, stream, video or image folder.

Architecture: a capture thread reads the source into a bounded queue (live sources keep only the
newest frames and count drops; files and folders block so every frame is processed in order,
unless ``--realtime``); the inference loop takes up to ``--batch`` frames at a time, runs the
detector and feeds the sinks: a JSONL log (one line per frame, plus ``"event"`` lines), saved NG
frames and overlays, an optional window, and optional NG triggers (a command, an HTTP POST).
A source that fails to open or to read is reopened with exponential backoff; SIGINT/SIGTERM stop
cleanly (the current batch finishes, the log is flushed and closed, final stats are printed).

In-process use (tests, demos)::

    loop = InspectionLoop(detector, lambda: open_source("parts/"), LoopOptions(log="run.jsonl"))
    stats = loop.run()
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from stpm_edge.errors import ConfigError, DataError, StpmEdgeError, note

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_BACKOFF_S = 30.0


# ------------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------------
class SourceError(StpmEdgeError):
    """The source could not be opened or a read failed: the loop reconnects."""


class SkipFrame(Exception):
    """One unreadable item (a corrupt image): logged as an event, never fatal."""


class FrameSource(Protocol):
    """What the capture thread needs. ``read`` returns ``None`` at the end of a finite source."""

    name: str
    live: bool
    fps: float

    def open(self) -> None: ...
    def read(self) -> tuple[np.ndarray, str | None] | None: ...
    def close(self) -> None: ...


class ImageFolderSource:
    """Images from a folder (sorted) or a glob, read with ``cv2.imread``; corrupt ones skipped."""

    live = False
    fps = 0.0

    def __init__(self, spec: str) -> None:
        self.name = spec
        self._spec = spec
        self._paths: list[Path] = []
        self._index = 0

    def open(self) -> None:
        root = Path(self._spec)
        if root.is_dir():
            paths = [p for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            paths = [Path(p) for p in sorted(glob.glob(self._spec))]
        if not paths:
            raise SourceError(
                note(f"no images in {self._spec}", f"expected files ending in {IMAGE_SUFFIXES}")
            )
        self._paths, self._index = paths, 0

    def read(self) -> tuple[np.ndarray, str | None] | None:
        if self._index >= len(self._paths):
            return None
        path = self._paths[self._index]
        self._index += 1
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SkipFrame(f"cannot decode {path}")
        return image, str(path)

    def close(self) -> None:
        self._paths = []


class VideoCaptureSource:
    """An OpenCV ``VideoCapture``: camera index, URL, video file or GStreamer pipeline."""

    def __init__(self, spec: str, live: bool, api: int = cv2.CAP_ANY) -> None:
        self.name = spec
        self.live = live
        self.fps = 0.0
        self._target: int | str = int(spec) if spec.isdigit() else spec
        self._api = api
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        cap = cv2.VideoCapture(self._target, self._api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open source {self.name}")
        self._cap = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def read(self) -> tuple[np.ndarray, str | None] | None:
        assert self._cap is not None
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return frame, None
        if self.live:
            raise SourceError(f"read failed on {self.name}")
        return None  # a file ends

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = None


def open_source(spec: str) -> FrameSource:
    """Build the source for ``--source``: camera index, URL, GStreamer (contains ``!``), image
    folder or glob, video file."""
    if "!" in spec:
        return VideoCaptureSource(spec, live=True, api=cv2.CAP_GSTREAMER)
    if spec.isdigit():
        return VideoCaptureSource(
            spec, live=True, api=cv2.CAP_V4L2 if sys.platform == "linux" else cv2.CAP_ANY
        )
    if "://" in spec:
        return VideoCaptureSource(spec, live=True)
    path = Path(spec)
    if path.is_dir() or any(c in spec for c in "*?[") or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource(spec)
    if not path.exists():
        raise ConfigError(
            note(f"source {spec} not found", "expected a camera index, URL, file, folder or glob")
        )
    return VideoCaptureSource(spec, live=False)


# ------------------------------------------------------------------------------------------------
# queue and sinks
# ------------------------------------------------------------------------------------------------
@dataclass
class Frame:
    id: int
    image: np.ndarray
    origin: str | None
    t_capture: float
    timestamp: str


class FrameQueue:
    """Bounded queue. ``drop_oldest``: a full put evicts the oldest frame (counted in ``drops``);
    otherwise a put waits for room (or for ``stop``)."""

    def __init__(self, maxsize: int, drop_oldest: bool) -> None:
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self.maxsize = max(1, maxsize)
        self.drop_oldest = drop_oldest
        self.drops = 0
        self.closed = False

    def put(self, item: Frame, stop: threading.Event) -> bool:
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
            return True

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def get_batch(self, n: int, timeout: float) -> list[Frame]:
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            batch = [self._items.popleft() for _ in range(min(n, len(self._items)))]
            self._cond.notify_all()
            return batch

    def finished(self) -> bool:
        with self._cond:
            return self.closed and not self._items


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


class JsonlLog:
    """Thread-safe JSON-lines writer; every line is flushed whole, so the file always parses."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # append: a restarted service keeps its history; closed in close()
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = None


class UrlTrigger:
    """POSTs NG records as JSON from one background thread (bounded queue, timeout per POST)."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url, self.timeout = url, timeout
        self._queue: collections.deque[dict] = collections.deque(maxlen=100)
        self._event = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="stpm-trigger-url", daemon=True)
        self._thread.start()

    def send(self, record: dict[str, Any]) -> None:
        self._queue.append(record)
        self._event.set()

    def _work(self) -> None:
        while not (self._stop and not self._queue):
            self._event.wait(0.2)
            self._event.clear()
            while self._queue:
                record = self._queue.popleft()
                request = urllib.request.Request(
                    self.url,
                    data=json.dumps(record).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                try:
                    with urllib.request.urlopen(request, timeout=self.timeout) as response:
                        response.read()
                except Exception as exc:  # network errors must never stop the inspection
                    logger.warning("trigger POST to %s failed: %s", self.url, exc)

    def close(self) -> None:
        self._stop = True
        self._event.set()
        self._thread.join(timeout=self.timeout + 1.0)


class CommandTrigger:
    """Runs ``shlex.split(cmd)`` on NG (never through a shell), without waiting; the record is in
    the environment as ``STPM_EVENT`` (JSON), ``STPM_FRAME``, ``STPM_SCORE``, ``STPM_VERDICT``."""

    def __init__(self, command: str) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ConfigError("--trigger-cmd is empty")
        self._running: list[subprocess.Popen] = []

    def fire(self, record: dict[str, Any]) -> None:
        self._running = [p for p in self._running if p.poll() is None]  # reap finished ones
        env = dict(os.environ)
        env.update(
            STPM_EVENT=json.dumps(record),
            STPM_FRAME=str(record.get("frame")),
            STPM_SCORE=str(record.get("score")),
            STPM_VERDICT=str(record.get("verdict")),
        )
        try:
            self._running.append(subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL))
        except OSError as exc:
            logger.warning("trigger command %s failed: %s", self.argv[0], exc)

    def close(self) -> None:
        for process in self._running:
            try:
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                logger.warning("trigger command pid %d still running at exit", process.pid)


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
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
    """Totals of a run (also what the periodic stats line reports)."""

    frames: int = 0
    ng: int = 0
    drops: int = 0
    corrupt: int = 0
    reconnects: int = 0
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
        self._log = JsonlLog(options.log)
        self._queue: FrameQueue | None = None
        self._run_tag = datetime.now().strftime("%Y%m%dT%H%M%S")
        self._cmd = CommandTrigger(options.trigger_cmd) if options.trigger_cmd else None
        self._url = UrlTrigger(options.trigger_url) if options.trigger_url else None
        if options.save_ng:
            Path(options.save_ng).mkdir(parents=True, exist_ok=True)

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
        logger.log(level, "event %s %s", name, {k: v for k, v in fields.items()})

    # -- capture thread --------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> bool:
        """Wait before reconnect ``attempt``; False when attempts are exhausted or stopping."""
        if attempt > self.options.max_reconnects:
            self.event("gave_up", attempts=attempt - 1)
            return False
        delay = min(self.options.reconnect_delay * 2 ** (attempt - 1), MAX_BACKOFF_S)
        self.stats.reconnects += 1
        self.event("reconnect", attempt=attempt, delay_s=round(delay, 3))
        return not self._stop.wait(delay)

    def _capture(self, queue: FrameQueue) -> None:
        next_id, attempt, source = 0, 0, None
        pace = 0.0
        try:
            while not self._stop.is_set():
                if source is None:
                    source = self.source_factory()
                    try:
                        source.open()
                    except (SourceError, ConfigError, OSError) as exc:
                        source = None
                        self.event("open_failed", error=str(exc).splitlines()[0])
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
                    source.close()
                    source = None
                    if self.options.on_end == "loop":
                        self.event("loop")
                        continue
                    self.event("end")
                    break
                attempt = 0  # a good read resets the backoff
                image, origin = item
                frame = Frame(next_id, image, origin, time.perf_counter(), now_iso())
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
                source.close()
            queue.close()

    # -- sinks -----------------------------------------------------------------------------------
    def _handle(self, frame: Frame, pred: Any, batch: int) -> None:
        e2e_ms = (time.perf_counter() - frame.t_capture) * 1000.0
        record: dict[str, Any] = {
            "frame": frame.id,
            "timestamp": frame.timestamp,
            "source": self.options.source_name,
        }
        if frame.origin is not None:
            record["file"] = frame.origin
        record.update(
            score=float(pred.score),
            score_normalized=float(pred.score_normalized),
            verdict=pred.verdict,
            latency_ms=round(float(pred.latency_ms), 3),
            e2e_ms=round(e2e_ms, 3),
            batch=batch,
        )
        ng = pred.verdict == "NG"
        if ng and (self.options.save_ng or self.options.display):
            self.detector.explain(frame.image, pred, overlay=True)
            record["regions"] = [list(r) for r in pred.regions or []]
        if ng and self.options.save_ng:
            record["saved"] = self._save(frame, pred)
        self._log.write(record)
        self.stats.frames += 1
        self.stats.ng += int(ng)
        self.stats.latencies.append(float(pred.latency_ms))
        self.stats.e2e.append(e2e_ms)
        if ng and self._cmd is not None:
            self._cmd.fire(record)
        if ng and self._url is not None:
            self._url.send(record)
        if self.options.display:
            self._show(frame, pred)

    def _save(self, frame: Frame, pred: Any) -> str:
        base = Path(self.options.save_ng) / f"{self._run_tag}_{frame.id:08d}"
        cv2.imwrite(f"{base}.png", frame.image)
        if pred.overlay is not None:
            cv2.imwrite(f"{base}_overlay.jpg", pred.overlay)
        return f"{base}.png"

    def _show(self, frame: Frame, pred: Any) -> None:
        image = pred.overlay if pred.overlay is not None else frame.image
        label = f"{pred.verdict} {pred.score_normalized:.2f}"
        color = (0, 0, 255) if pred.verdict == "NG" else (0, 200, 0)
        image = cv2.putText(image.copy(), label, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0, color, 2)
        try:
            cv2.imshow("stpm-camera", image)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.stop("key")
        except cv2.error as exc:
            logger.error("display unavailable (%s); continuing without --display", exc)
            self.options.display = False

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
                try:
                    preds = self.detector.predict([f.image for f in frames])
                except DataError as exc:  # an odd frame (format, ROI) must not stop the line
                    self.event(
                        "frame_error", frames=[f.id for f in frames], error=str(exc).splitlines()[0]
                    )
                    continue
                for frame, pred in zip(frames, preds, strict=True):
                    self._handle(frame, pred, len(frames))
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
        self.event(
            "stop",
            **{k: v for k, v in s.summary().items() if not (isinstance(v, float) and v != v)},
        )
        self._log.close()
        for trigger in (self._cmd, self._url):
            if trigger is not None:
                trigger.close()
        if self.options.display:
            with contextlib.suppress(cv2.error):
                cv2.destroyAllWindows()


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stpm-camera",
        description="Inspect frames from a camera, stream, video or image folder with an exported "
        "STPM model; log one JSON line per frame.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config",
        help="YAML file with defaults for any flag (keys = flag names); flags override it",
    )
    p.add_argument("--model", help="model.onnx, or model.engine (with its .json sidecar); required")
    p.add_argument(
        "--source",
        help="camera index (0), rtsp/http URL, video file, image folder or glob, or a GStreamer "
        "pipeline ending in appsink (contains '!'); required",
    )
    p.add_argument("--log", help="JSONL log (appended): one line per frame plus 'event' lines")
    p.add_argument("--save-ng", help="folder for NG frames (PNG) and their overlays (JPEG)")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--backend", default="auto", help="auto, tensorrt, ort-trt, ort-cuda or ort-cpu")
    p.add_argument("--threads", type=int, help="ONNX Runtime CPU threads (default: ORT's choice)")
    p.add_argument(
        "--batch", type=int, default=1, help="micro-batch: infer up to N queued frames at once"
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="treat a file/folder like a live source: pace a video at its FPS, drop frames when "
        "inference is slower (default: process every frame in order)",
    )
    p.add_argument(
        "--on-end", default="stop", choices=("stop", "loop"), help="at the end of a file/folder"
    )
    p.add_argument(
        "--reconnect-delay",
        type=float,
        default=0.5,
        help="first reconnect wait (s); doubles each try, max 30 s",
    )
    p.add_argument(
        "--max-reconnects",
        type=int,
        default=10,
        help="consecutive failed reconnects before giving up",
    )
    p.add_argument(
        "--stats-every",
        type=float,
        default=5.0,
        help="seconds between stats lines on stderr (0 = off)",
    )
    p.add_argument(
        "--display", action="store_true", help="show frames and NG overlays in a window (q quits)"
    )
    p.add_argument(
        "--trigger-cmd", help="command run on every NG frame (no shell; record in $STPM_EVENT)"
    )
    p.add_argument("--trigger-url", help="URL that receives an HTTP POST of each NG record (JSON)")
    p.add_argument("--roi", help="fixed crop x,y,w,h in frame pixels, applied before resizing")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """Load ``--config`` (yaml.safe_load) into the parser's defaults; flags still override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    import yaml  # only needed with --config

    path = Path(known.config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            note(f"cannot read config {path}: {exc}", "expected a YAML mapping")
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            note(f"config {path} is not a mapping", "write one `flag: value` per line")
        )
    dests = {a.dest for a in parser._actions} - {"help", "config"}
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise ConfigError(
            note(f"config {path}: unknown keys {unknown}", f"known keys: {sorted(dests)}")
        )
    parser.set_defaults(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``stpm-camera``; returns the exit code (0 ok, 2 user error)."""
    parser = build_parser()
    try:
        _apply_config(parser, argv)
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if not args.model or args.source is None:
            raise ConfigError(
                note("--model and --source are required", "give them as flags or in --config")
            )
        source = str(args.source)
        open_source(source)  # validate the spec now: a typo is a user error, not a reconnect loop
        from .detector import AnomalyDetector  # after arg parsing: --help stays instant

        options = LoopOptions(
            log=args.log,
            save_ng=args.save_ng,
            max_frames=args.max_frames,
            duration=args.duration,
            batch=args.batch,
            realtime=args.realtime,
            on_end=args.on_end,
            reconnect_delay=args.reconnect_delay,
            max_reconnects=args.max_reconnects,
            stats_every=args.stats_every,
            display=args.display,
            trigger_cmd=args.trigger_cmd,
            trigger_url=args.trigger_url,
            source_name=source,
        )
        with AnomalyDetector(
            args.model, backend=args.backend, threads=args.threads, roi=args.roi
        ) as det:
            loop = InspectionLoop(det, lambda: open_source(source), options)
            previous = {
                sig: signal.signal(
                    sig, lambda signum, _frame: loop.stop(signal.Signals(signum).name)
                )
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                stats = loop.run()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    except StpmEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"final_stats": stats.summary()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
