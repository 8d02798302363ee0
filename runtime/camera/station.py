"""Several cameras, one process: ``stpm-camera --station station.yaml``.

A station file lists the cameras; each is one :class:`~.loop.InspectionLoop` with its own source,
capture thread, queue, reconnect/backoff, ROI, NG folder, triggers, log and stats. Cameras that
name the same model file share one runner: a scheduler thread per model pulls frames round-robin
from those cameras' queues and infers them in one micro-batch (up to ``--batch`` frames, waiting
at most ``--batch-timeout-ms`` after the first frame for more). Nothing waits on one camera:

- capture is per camera, so a camera that hangs, drops or reconnects only starves its own queue;
- batch assembly never blocks on a queue (a poll plus one bounded wait for all queues);
- a frame the detector refuses (a ROI that does not fit, an odd format) is a ``frame_error`` of
  its camera only: a mixed batch that fails is retried camera by camera.

Station file (YAML, ``yaml.safe_load``)::

    defaults:            # optional: keys applied to every camera
      model: brick.onnx
    cameras:
      - name: left       # default cam0, cam1, ... (must be unique)
        source: rtsp://10.0.0.5/stream
        roi: 100,50,640,480
        save_ng: ng/left
        log: left.jsonl
      - name: right
        source: 1
        model: other.onnx
        trigger_url: http://plc.local/ng

Camera keys: ``name``, ``source`` (required), ``model``, ``roi``, ``save_ng``, ``log``,
``trigger_cmd``, ``trigger_url``, ``realtime``, ``on_end``, ``reconnect_delay``,
``max_reconnects``, ``max_frames``. A key a camera leaves out comes from ``defaults``, then from
the command line (``--model``, ``--log`` (a shared file), ``--save-ng`` (a sub-folder per camera),
...). Station-wide settings are flags: ``--backend``, ``--threads``, ``--batch``,
``--batch-timeout-ms``, ``--duration``, ``--stats-every``, ``--metrics-port``. Every log line
carries ``camera``.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from stpm_edge.errors import ConfigError, DataError, note

from ..preprocess import crop_roi
from .loop import InspectionLoop, LoopOptions, LoopStats
from .observers import LoopObserver
from .queue import Frame
from .sinks import JsonlLog, prepare_outputs
from .sources import FrameSource, open_source

logger = logging.getLogger(__name__)


@dataclass
class CameraConfig:
    """One camera of a station file (see the module docstring for the keys)."""

    name: str
    source: str
    model: str | None = None
    roi: str | None = None
    save_ng: str | None = None
    log: str | None = None
    trigger_cmd: str | None = None
    trigger_url: str | None = None
    realtime: bool = False
    on_end: str = "stop"
    reconnect_delay: float = 0.5
    max_reconnects: int = 10
    max_frames: int | None = None


CAMERA_KEYS = tuple(f.name for f in fields(CameraConfig))
# keys a camera inherits from the command line when neither it nor ``defaults`` sets them
_FROM_FLAGS = ("model", "realtime", "on_end", "reconnect_delay", "max_reconnects", "max_frames")


def _camera_keys(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigError(note(f"{where} is not a mapping", "write one `key: value` per line"))
    values = {str(k).replace("-", "_"): v for k, v in entry.items()}
    unknown = sorted(set(values) - set(CAMERA_KEYS))
    if unknown:
        raise ConfigError(note(f"{where}: unknown keys {unknown}", f"known keys: {CAMERA_KEYS}"))
    return values


def parse_station(
    data: Any, path: str, flags: argparse.Namespace | None = None
) -> list[CameraConfig]:
    """The cameras of a station file's mapping; ``flags`` fill keys the file leaves out.

    Raises:
        ConfigError: no cameras, an unknown key, a missing source/model, a duplicate name.
    """
    where = f"--station {path}"
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list):
        raise ConfigError(
            note(f"{where} has no cameras list", "write `cameras:` then `- source: ...`")
        )
    extra = sorted(set(data) - {"cameras", "defaults"})
    if extra:
        raise ConfigError(note(f"{where}: unknown keys {extra}", "known keys: cameras, defaults"))
    defaults = _camera_keys(data.get("defaults") or {}, f"{where} defaults")
    cameras: list[CameraConfig] = []
    for i, entry in enumerate(data["cameras"]):
        values = {**defaults, **_camera_keys(entry, f"{where} camera {i}")}
        values.setdefault("name", f"cam{i}")
        for key in _FROM_FLAGS:
            if key not in values and flags is not None and getattr(flags, key, None) is not None:
                values[key] = getattr(flags, key)
        if flags is not None and "log" not in values and flags.log:
            values["log"] = flags.log  # one shared file; every line says which camera
        if flags is not None and "save_ng" not in values and flags.save_ng:
            values["save_ng"] = str(Path(flags.save_ng) / str(values["name"]))
        if values.get("source") is None or not values.get("model"):
            raise ConfigError(
                note(
                    f"{where} camera {values['name']}: source and model are required",
                    "give them per camera, under defaults, or --model for all",
                )  # fmt: skip
            )
        values["name"], values["source"] = str(values["name"]), str(values["source"])
        cameras.append(CameraConfig(**values))
    names = [c.name for c in cameras]
    if not cameras or len(set(names)) != len(names):
        raise ConfigError(note(f"{where}: camera names {names}", "list >= 1 camera, names unique"))
    return cameras


def load_station(path: str | Path, flags: argparse.Namespace | None = None) -> list[CameraConfig]:
    """Read a station file (``yaml.safe_load``) into its cameras."""
    from stpm_edge.cli.args import load_yaml_mapping

    return parse_station(load_yaml_mapping(path), str(path), flags)


def camera_options(camera: CameraConfig, batch: int, stats_every: float) -> LoopOptions:
    """The :class:`LoopOptions` of one station camera."""
    return LoopOptions(
        log=camera.log,
        save_ng=camera.save_ng,
        max_frames=camera.max_frames,
        batch=batch,
        realtime=camera.realtime,
        on_end=camera.on_end,
        reconnect_delay=camera.reconnect_delay,
        max_reconnects=camera.max_reconnects,
        stats_every=stats_every,
        trigger_cmd=camera.trigger_cmd,
        trigger_url=camera.trigger_url,
        source_name=camera.source,
        camera=camera.name,
    )


@dataclass
class ModelGroup:
    """Cameras that share one model file: one detector (no ROI; cameras crop their own)."""

    label: str
    detector: Any
    loops: list[InspectionLoop]


class Station:
    """Runs the loops of several cameras; :meth:`run` blocks and returns stats per camera.

    Args:
        groups: the cameras, grouped by model (each loop's detector carries its camera's ROI and
            explains NG frames; the group's detector scores the batches).
        batch: most frames in one model call.
        batch_timeout: seconds the scheduler waits, after the first frame, to fill a batch.
        duration: stop after this many seconds (None: when every camera has ended).
    """

    def __init__(
        self,
        groups: Sequence[ModelGroup],
        batch: int = 1,
        batch_timeout: float = 0.01,
        duration: float | None = None,
    ) -> None:
        if batch < 1 or batch_timeout < 0:
            raise ConfigError(
                note(f"--batch {batch}, --batch-timeout-ms", "expected >= 1 and >= 0")
            )
        self.groups = list(groups)
        self.batch, self.batch_timeout, self.duration = batch, batch_timeout, duration
        self.loops = {loop.camera: loop for g in self.groups for loop in g.loops}
        self.models = {loop.camera: g.label for g in self.groups for loop in g.loops}
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def add_observer(self, observer: LoopObserver) -> None:
        """Subscribe ``observer`` to every camera (see :mod:`.observers`)."""
        for loop in self.loops.values():
            loop.add_observer(observer)

    def stop(self, reason: str = "stop") -> None:
        """Stop every camera after its current batch (safe from signal handlers)."""
        for loop in self.loops.values():
            loop.stop(reason)
        self._stop.set()

    # -- scheduling ------------------------------------------------------------------------------
    @staticmethod
    def _done(loop: InspectionLoop) -> bool:
        queue = loop._queue
        return loop.stopping or queue is None or queue.finished()

    def _poll(
        self, loops: list[InspectionLoop], picked: list[tuple[InspectionLoop, Frame]]
    ) -> None:
        """Take queued frames round-robin (one per camera per round) until the batch is full."""
        taken = {loop.camera: 0 for loop in loops}
        progress = True
        while progress and len(picked) < self.batch:
            progress = False
            for loop in loops:
                if len(picked) >= self.batch or taken[loop.camera] >= loop.wants():
                    continue
                got = loop._queue.get_batch(1, timeout=0) if loop._queue else []
                if got:
                    picked.append((loop, got[0]))
                    taken[loop.camera] += 1
                    progress = True

    def _gather(self, group: ModelGroup, notify: threading.Event, turn: int) -> list:
        """One batch: whatever is queued now, plus what arrives within ``batch_timeout``."""
        loops = [lp for lp in group.loops if not lp.stopping]
        loops = loops[turn % len(loops) :] + loops[: turn % len(loops)] if loops else loops
        picked: list[tuple[InspectionLoop, Frame]] = []
        notify.clear()
        self._poll(loops, picked)
        if not picked:
            notify.wait(0.1)
            return picked
        deadline = time.perf_counter() + self.batch_timeout
        while len(picked) < self.batch and not self._stop.is_set():
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            notify.clear()
            before = len(picked)
            self._poll(loops, picked)
            if len(picked) == before:
                notify.wait(left)
        return picked

    def _infer(self, group: ModelGroup, picked: list[tuple[InspectionLoop, Frame]]) -> None:
        by_camera: dict[str, tuple[InspectionLoop, list[int]]] = {}
        for i, (loop, _) in enumerate(picked):
            by_camera.setdefault(loop.camera, (loop, []))[1].append(i)
        try:
            images = [crop_roi(f.image, getattr(lp.detector, "roi", None)) for lp, f in picked]
            preds = group.detector.predict(images)
        except (DataError, ConfigError) as exc:  # a camera's odd frame or ROI: only its problem
            if len(by_camera) == 1:
                loop, _ = next(iter(by_camera.values()))
                loop.frame_error([f for _, f in picked], exc)
                return
            for _loop, index in by_camera.values():
                self._infer(group, [picked[i] for i in index])
            return
        for loop, index in by_camera.values():
            loop.handle_batch([picked[i][1] for i in index], [preds[i] for i in index], len(picked))

    def _schedule(self, group: ModelGroup, notify: threading.Event) -> None:
        turn = 0
        try:
            while not self._stop.is_set() and not all(self._done(lp) for lp in group.loops):
                picked = self._gather(group, notify, turn)
                turn += 1
                if picked:
                    self._infer(group, picked)
        except BaseException as exc:  # a runner failure: stop the station, re-raised by run()
            logger.exception("scheduler of %s failed", group.label)
            self._error = exc
            self.stop("error")

    # -- run -------------------------------------------------------------------------------------
    def run(self) -> dict[str, LoopStats]:
        """Run every camera until all have ended, ``duration`` passed or :meth:`stop`."""
        start = time.perf_counter()
        threads = []
        try:
            for group in self.groups:
                notify = threading.Event()
                for loop in group.loops:
                    loop.start(notify)
                thread = threading.Thread(
                    target=self._schedule, args=(group, notify), name=f"stpm-batch-{group.label}",
                    daemon=True,
                )  # fmt: skip
                thread.start()
                threads.append(thread)
            while any(t.is_alive() for t in threads) and not self._stop.is_set():
                if self.duration is not None and time.perf_counter() - start >= self.duration:
                    self.stop("duration")
                    break
                for loop in self.loops.values():
                    loop.maybe_log_stats()
                self._stop.wait(0.1)
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=10.0)
            self._finish(time.perf_counter() - start)
        if self._error is not None:
            raise self._error
        return {name: loop.stats for name, loop in self.loops.items()}

    def _finish(self, elapsed: float) -> None:
        for loop in self.loops.values():
            loop.stop("end")  # sets stopped_by only where nothing else did
            loop.finish(elapsed)


# ------------------------------------------------------------------------------------------------
# building a station from its file
# ------------------------------------------------------------------------------------------------
SourceFactory = Callable[[str], FrameSource]


class StationResources:
    """The runners, detectors and shared logs a station built; :meth:`close` frees them."""

    def __init__(self) -> None:
        self.detectors: list[Any] = []
        self.runners: list[Any] = []
        self.logs: dict[Path, JsonlLog] = {}

    def log(self, path: str | None) -> JsonlLog | None:
        if path is None:
            return None
        key = Path(path).resolve()
        if key not in self.logs:
            self.logs[key] = JsonlLog(path)
        return self.logs[key]

    def close(self) -> None:
        for log in self.logs.values():
            log.close()
        for det in self.detectors:
            det.close()
        for runner in self.runners:
            runner.close()


def build_station(
    cameras: Sequence[CameraConfig],
    args: argparse.Namespace,
    resources: StationResources,
    source_factory: SourceFactory = open_source,
) -> Station:
    """Runners (one per model file), detectors (one per ROI) and loops for ``cameras``."""
    from ..detector import AnomalyDetector
    from ..runners import create_runner

    shared: dict[Path, ModelGroup] = {}
    for cam in cameras:
        prepare_outputs(cam.log, cam.save_ng)
        key = Path(str(cam.model)).resolve()
        if key not in shared:
            runner = create_runner(str(cam.model), backend=args.backend, threads=args.threads)
            resources.runners.append(runner)
            detector = AnomalyDetector(runner)
            resources.detectors.append(detector)
            shared[key] = ModelGroup(Path(str(cam.model)).name, detector, [])
        group = shared[key]
        detector = group.detector
        if cam.roi:
            detector = AnomalyDetector(group.detector.runner, roi=cam.roi)
            resources.detectors.append(detector)
        options = camera_options(cam, args.batch, args.stats_every)
        loop = InspectionLoop(
            detector, lambda spec=cam.source: source_factory(spec), options,
            log=resources.log(cam.log),
        )  # fmt: skip
        group.loops.append(loop)
    timeout = float(getattr(args, "batch_timeout_ms", 10.0)) / 1000.0
    return Station(list(shared.values()), args.batch, timeout, args.duration)
