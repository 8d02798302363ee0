"""``stpm-camera``: unattended inspection of a camera, stream, video or image folder.

One job per module:

- :mod:`.sources`  what frames come from (:class:`FrameSource`; OpenCV capture, image folders,
  registered URL schemes for SDK cameras)
- :mod:`.queue`    the bounded frame queue (live: drop oldest; files: block)
- :mod:`.loop`     :class:`InspectionLoop`: capture thread, micro-batched inference, reconnects,
  stats
- :mod:`.genicam`  machine-vision cameras: settings, triggers, pixel formats, lost frames;
  :mod:`.pylon` serves ``pylon://`` (Basler, pypylon)
- :mod:`.sinks`    JSONL log, saved NG frames, display window
- :mod:`.triggers` NG actions: a command, an HTTP POST
- :mod:`.observers` :class:`LoopObserver`: what else watches the loop (metrics, an operator page)
- :mod:`.station`  several cameras in one process, micro-batched per shared model (``--station``)
- :mod:`.monitor`  Prometheus metrics (``--metrics-port``) and the OK-score drift alarm
- :mod:`.config`   parsed flags -> :class:`LoopOptions`
- :mod:`.cli`      the ``stpm-camera`` command (shared argument groups and error handling)

In-process use::

    loop = InspectionLoop(detector, lambda: open_source("parts/"), LoopOptions(log="run.jsonl"))
    stats = loop.run()
"""

# registers pylon:// (pypylon itself is imported only when such a camera opens)
from . import pylon as _pylon  # noqa: F401
from .cli import build_parser, main
from .loop import InspectionLoop, LoopOptions, LoopStats
from .monitor import DriftMonitor, Metrics
from .observers import LoopObserver
from .queue import Frame, FrameQueue
from .sinks import Display, JsonlLog, NgSaver
from .sources import (
    FolderFrameSource,
    FrameSource,
    NoFrame,
    SkipFrame,
    SourceError,
    SourceFrame,
    VideoCaptureSource,
    open_source,
    register_source,
)
from .station import CameraConfig, Station, load_station
from .triggers import CommandTrigger, UrlTrigger

__all__ = [
    "CameraConfig",
    "CommandTrigger",
    "Display",
    "DriftMonitor",
    "FolderFrameSource",
    "Frame",
    "FrameQueue",
    "FrameSource",
    "InspectionLoop",
    "JsonlLog",
    "LoopObserver",
    "LoopOptions",
    "LoopStats",
    "Metrics",
    "NgSaver",
    "NoFrame",
    "SkipFrame",
    "SourceError",
    "SourceFrame",
    "Station",
    "UrlTrigger",
    "VideoCaptureSource",
    "build_parser",
    "load_station",
    "main",
    "open_source",
    "register_source",
]
