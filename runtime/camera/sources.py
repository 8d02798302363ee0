"""Frame sources of ``stpm-camera``: what the capture thread reads from.

A source is built unopened by :func:`open_source` (cheap, validates the spec), then opened by the
loop, read until it returns ``None`` (a finite source ended) and closed; on a failure the loop
builds a fresh one (reconnect). Any object with the :class:`FrameSource` shape works, so an SDK
camera (a GenICam driver such as pypylon, later) plugs in by registering a URL scheme with
:func:`register_source` and returning :class:`SourceFrame` items that carry the device's own
timestamp and frame id in ``meta``.

Built in: OpenCV ``VideoCapture`` (camera index, URL, video file, GStreamer pipeline) and image
folders/globs (:class:`FolderFrameSource`).
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from stpm_edge.errors import ConfigError, DataError, StpmEdgeError, note

from ..image import IMAGE_SUFFIXES, decode_raw, list_images  # the one suffix list and decoder


class SourceError(StpmEdgeError):
    """The source could not be opened or a read failed: the loop reconnects."""


class SkipFrame(Exception):
    """One unreadable item (a corrupt image): logged as an event, never fatal."""


class NoFrame(Exception):
    """No frame yet, and that is normal (a hardware-triggered camera waiting for the next part):
    the loop checks whether it should stop and reads again; nothing is logged or counted."""


@dataclass
class SourceFrame:
    """One item read from a source.

    Attributes:
        image: the frame as OpenCV gives it (BGR uint8 HxWx3, or gray/16-bit/BGRA: the detector
            converts by the runtime's one image rule).
        origin: the file it came from (folders), else None.
        meta: device facts written into the frame's log line (``device_timestamp``,
            ``device_frame_id``, ...); empty for OpenCV sources.
    """

    image: np.ndarray
    origin: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class FrameSource(Protocol):
    """What the capture thread needs from a source.

    ``live``: frames arrive in real time and a slow consumer must drop (cameras, streams);
    False for files and folders, which are read in order and block. ``fps``: the nominal rate
    (0 when unknown), used to pace ``--realtime`` replays. ``lost``: frames the device reports as
    lost before they reached us (0 when the source cannot tell).
    """

    name: str
    live: bool
    fps: float
    lost: int

    def open(self) -> None: ...
    def read(self) -> SourceFrame | None: ...
    def close(self) -> None: ...


def _read_image_file(path: Path) -> np.ndarray | None:
    """Decode one image file as the camera would deliver it (OpenCV channel order), by the
    runtime's image module: Unicode-safe, EXIF orientation ignored, as training reads it."""
    try:
        return decode_raw(path)
    except DataError:
        return None


class FolderFrameSource:
    """Images of a folder (sorted by name) or a glob, one frame each; corrupt files are skipped."""

    live = False
    fps = 0.0
    lost = 0

    def __init__(self, spec: str) -> None:
        self.name = spec
        self._spec = spec
        self._paths: list[Path] = []
        self._index = 0

    def open(self) -> None:
        root = Path(self._spec)
        if root.is_dir():
            paths = list_images(root)
        else:
            paths = [Path(p) for p in sorted(glob.glob(self._spec))]
        if not paths:
            raise SourceError(
                note(f"no images in {self._spec}", f"expected files ending in {IMAGE_SUFFIXES}")
            )
        self._paths, self._index = paths, 0

    def read(self) -> SourceFrame | None:
        if self._index >= len(self._paths):
            return None
        path = self._paths[self._index]
        self._index += 1
        image = _read_image_file(path)
        if image is None:
            raise SkipFrame(f"cannot decode {path}")
        return SourceFrame(image, str(path))

    def close(self) -> None:
        self._paths = []


class VideoCaptureSource:
    """An OpenCV ``VideoCapture``: camera index, URL, video file or GStreamer pipeline."""

    lost = 0

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
            raise SourceError(
                note(
                    f"cannot open source {self.name}",
                    "expected a readable video file, a camera index, an rtsp/http URL or a "
                    "GStreamer pipeline ending in appsink",
                )
            )
        self._cap = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def read(self) -> SourceFrame | None:
        assert self._cap is not None, "read() before open()"
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return SourceFrame(frame)
        if self.live:
            raise SourceError(f"read failed on {self.name}")
        return None  # a file ends

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = None


# URL schemes served by a dedicated source (e.g. an SDK camera); everything else with "://"
# goes to OpenCV (rtsp, http, ...).
SourceFactory = Callable[[str], FrameSource]
_SCHEMES: dict[str, SourceFactory] = {}


def register_source(scheme: str, factory: SourceFactory) -> None:
    """Serve ``scheme://...`` specs with ``factory(spec)`` (which must not open the device)."""
    _SCHEMES[scheme.lower()] = factory


def open_source(spec: str) -> FrameSource:
    """Build the (unopened) source for ``--source``.

    Camera index (``0``), a registered scheme, a URL, a GStreamer pipeline (contains ``!``), an
    image folder, glob or single image, or a video file.
    """
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else None
    if scheme in _SCHEMES:
        return _SCHEMES[scheme](spec)
    if "!" in spec:
        return VideoCaptureSource(spec, live=True, api=cv2.CAP_GSTREAMER)
    if spec.isdigit():
        api = cv2.CAP_V4L2 if sys.platform == "linux" else cv2.CAP_ANY
        return VideoCaptureSource(spec, live=True, api=api)
    if scheme is not None:
        return VideoCaptureSource(spec, live=True)
    path = Path(spec)
    if path.is_dir() or any(c in spec for c in "*?[") or path.suffix.lower() in IMAGE_SUFFIXES:
        return FolderFrameSource(spec)
    if not path.exists():
        raise ConfigError(
            note(
                f"--source {spec} not found",
                "expected a camera index, URL, video file, image folder or glob",
            )
        )
    return VideoCaptureSource(spec, live=False)
