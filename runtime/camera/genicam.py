"""Machine-vision cameras (GenICam) as ``stpm-camera`` sources: the part every SDK shares.

A GenICam camera (GigE Vision, USB3 Vision) is configured through standard feature names
(SFNC: ``PixelFormat``, ``ExposureTime``, ``TriggerMode``, ...) and delivers buffers with a
device timestamp and a block id. :class:`GenICamSource` holds everything that is the same for
every SDK: the settings, setting the standard features, software triggering, turning buffers
into frames by the runtime's one image rule (:func:`~stpm_edge.runtime.image.camera_to_bgr`),
the log fields and lost-frame counting. An SDK adds a subclass with six small methods
(connect, node access, start, trigger, grab, disconnect): :mod:`.pylon` (Basler pypylon) is
one; a Harvesters/GenTL source would be another, registered under its own scheme.

Settings are per source, in the URL's query (so each camera of a station carries its own, on the
command line or as ``source:`` in the ``--config`` YAML)::

    pylon://                                  first camera found, free-run
    pylon://40012345?pixel_format=Mono12&exposure_us=8000&gain_db=3&trigger=line1
    pylon://1?trigger=software&strategy=all   second camera, one frame per read, keep every frame

Keys (all optional):

- ``pixel_format``: Mono8, Mono10, Mono12, Mono16, BGR8, RGB8, BGRa8 (Basler's ``...Packed``
  aliases are accepted); deeper samples are scaled to 8 bits full scale to full scale, the rule
  16-bit files follow (Mono12: ``round(v * 255 / 4095)``).
- ``exposure_us`` (auto exposure off), ``gain_db`` (auto gain off), ``frame_rate`` (free-run cap).
- ``trigger``: ``off`` (free-run, default), ``software`` (one trigger per frame the loop reads),
  ``line1`` ... ``line4`` (hardware trigger on that input; waiting for a part is not an error).
- ``strategy``: ``latest`` (default: keep the newest frame, older ones are skipped on the host
  and not counted as lost) or ``all`` (every frame in order while buffers last).
- ``timeout_ms``: grab timeout (default 1000); free-run and software trigger treat it as a
  failure (the loop reconnects), hardware trigger just waits again (after checking for stop).
- ``width``, ``height``: sensor ROI size.
- ``image_files``: a folder or file for pylon's camera emulation (``PYLON_CAMEMU=1``): the
  emulated camera replays those images instead of its test pattern.

The target before ``?`` is a serial number, an index (at most 3 digits) or empty (first camera).

Each frame's log line gets ``device_timestamp`` (camera ticks), ``device_frame_id`` (block id),
``device_serial`` and ``pixel_format``; ``lost`` counts frames the camera sent but we never
received (gaps in the block ids beyond the frames the strategy skipped on purpose) and failed
grabs (incomplete buffers); the loop reports the total as ``source_lost`` in its stop record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from stpm_edge.errors import ConfigError, DataError, note

from ..image import PIXEL_FORMATS, camera_to_bgr
from .sources import NoFrame, SkipFrame, SourceError, SourceFrame

logger = logging.getLogger(__name__)

TRIGGERS = ("off", "software", "line1", "line2", "line3", "line4")
STRATEGIES = ("latest", "all")
MAX_FAILED_GRABS = 20  # consecutive incomplete buffers before the source counts as broken


@dataclass
class CameraSettings:
    """One camera's settings (the URL's target and query; module doc)."""

    device: str = ""
    pixel_format: str | None = None
    exposure_us: float | None = None
    gain_db: float | None = None
    frame_rate: float | None = None
    trigger: str = "off"
    strategy: str = "latest"
    timeout_ms: int = 1000
    width: int | None = None
    height: int | None = None
    image_files: str | None = None

    @property
    def hardware_trigger(self) -> bool:
        return self.trigger.startswith("line")


def parse_camera_url(spec: str) -> CameraSettings:
    """``scheme://target?key=value&...`` -> :class:`CameraSettings`.

    Raises:
        ConfigError: an unknown key, a value of the wrong type or an unknown choice.
    """
    parts = urlsplit(spec)
    settings = CameraSettings(device=(parts.netloc + parts.path).strip("/"))
    types = {f.name: str(f.type) for f in fields(CameraSettings) if f.name != "device"}
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        if key not in types:
            raise _bad(spec, f"unknown camera setting {key!r}", f"known: {sorted(types)}")
        setattr(settings, key, _convert(spec, key, raw, types[key]))
    choices = {"trigger": TRIGGERS, "strategy": STRATEGIES, "pixel_format": tuple(PIXEL_FORMATS)}
    for key, allowed in choices.items():
        value = getattr(settings, key)
        if value is not None and value not in allowed:
            raise _bad(spec, f"{key}={value}", f"choose one of {', '.join(allowed)}")
    return settings


def _bad(spec: str, what: str, fix: str) -> ConfigError:
    return ConfigError(note(f"--source {spec}: {what}", fix))


def _convert(spec: str, key: str, raw: str, type_name: str) -> Any:
    kind = float if "float" in type_name else int if "int" in type_name else str
    try:
        return kind(raw)
    except ValueError:
        raise _bad(spec, f"{key}={raw!r}", f"expected a {kind.__name__}") from None


@dataclass
class Grab:
    """One buffer as an SDK delivers it (what :meth:`GenICamSource._grab` returns)."""

    ok: bool
    array: np.ndarray | None = None
    pixel_format: str = ""
    timestamp: int = 0
    block_id: int | None = None
    skipped: int = 0  # frames the grab strategy dropped on purpose before this one
    error: str = ""


class GenICamSource:
    """The SDK-independent part of a GenICam camera source (module doc).

    Subclasses implement ``_connect``, ``_has``/``_set``/``_choices`` (feature access by SFNC
    name), ``_execute`` (a command feature), ``_start``, ``_grab`` and ``_disconnect``.
    """

    live = True
    scheme = "genicam"

    def __init__(self, spec: str) -> None:
        self.name = spec
        self.settings = parse_camera_url(spec)
        self.fps = float(self.settings.frame_rate or 0.0)
        self.lost = 0
        self.serial = ""
        self._last_block: int | None = None
        self._open = False

    # -- SDK hooks ---------------------------------------------------------------------------
    def _connect(self) -> None:
        raise NotImplementedError

    def _has(self, feature: str) -> bool:
        raise NotImplementedError

    def _set(self, feature: str, value: Any) -> None:
        raise NotImplementedError

    def _choices(self, feature: str) -> tuple[str, ...]:
        raise NotImplementedError

    def _execute(self, feature: str) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _grab(self, timeout_ms: int) -> Grab | None:
        """The next buffer, or None on timeout."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    # -- FrameSource -------------------------------------------------------------------------
    def open(self) -> None:
        self._connect()
        self._open = True
        self._configure()
        self._last_block = None
        self._start()

    def read(self) -> SourceFrame | None:
        failed = 0
        while True:
            if self.settings.trigger == "software":
                self._execute("TriggerSoftware")
            grab = self._grab(self.settings.timeout_ms)
            if grab is None:
                if self.settings.hardware_trigger:  # no part in front of the camera yet
                    raise NoFrame
                raise SourceError(f"{self.name}: no frame within {self.settings.timeout_ms} ms")
            self._count_gap(grab)
            if grab.ok:
                return self._frame(grab)
            self.lost += 1
            failed += 1
            logger.warning("%s: grab failed: %s", self.name, grab.error)
            if failed >= MAX_FAILED_GRABS:
                raise SourceError(f"{self.name}: {failed} grabs failed in a row ({grab.error})")

    def close(self) -> None:
        if self._open:
            self._open = False
            self._disconnect()

    # -- shared logic ------------------------------------------------------------------------
    def _configure(self) -> None:
        """Standard features from the settings; a feature the camera lacks is a clear error."""
        s = self.settings
        if s.image_files is not None:  # camera emulation: replay files instead of a test pattern
            self._set("ImageFilename", s.image_files)
            self._set("ImageFileMode", "On")
            self._set("TestImageSelector", "Off")
        for feature, value in (("Width", s.width), ("Height", s.height)):
            if value is not None:
                self._set(feature, value)
        if s.pixel_format is not None:
            self._set("PixelFormat", self._pixel_format_name(s.pixel_format))
        if s.exposure_us is not None:
            self._set_optional("ExposureAuto", "Off")
            self._set_first(("ExposureTime", "ExposureTimeAbs"), s.exposure_us)
        if s.gain_db is not None:
            self._set_optional("GainAuto", "Off")
            self._set_first(("Gain", "GainAbs"), s.gain_db)
        if s.frame_rate is not None:
            self._set_optional("AcquisitionFrameRateEnable", True)
            self._set_first(("AcquisitionFrameRate", "AcquisitionFrameRateAbs"), s.frame_rate)
        self._set_optional("TriggerSelector", "FrameStart")
        if s.trigger == "off":
            self._set("TriggerMode", "Off")
        else:
            self._set("TriggerSource", "Software" if s.trigger == "software" else s.trigger.title())
            self._set("TriggerMode", "On")

    def _pixel_format_name(self, wanted: str) -> str:
        """The camera's name for ``wanted`` (SFNC ``BGR8`` or Basler's older ``BGR8Packed``)."""
        choices = self._choices("PixelFormat")
        for name in (wanted, wanted.removesuffix("Packed"), wanted + "Packed"):
            if name in choices:
                return name
        raise _bad(self.name, f"the camera has no pixel format {wanted}", f"it has {choices}")

    def _set_optional(self, feature: str, value: Any) -> None:
        if self._has(feature):
            self._set(feature, value)

    def _set_first(self, features: tuple[str, ...], value: Any) -> None:
        for feature in features:
            if self._has(feature):
                self._set(feature, value)
                return
        raise _bad(self.name, f"the camera has none of the features {features}", "drop the setting")

    def _count_gap(self, grab: Grab) -> None:
        """Block ids the camera sent that neither arrived nor were skipped on purpose."""
        if grab.block_id is None:
            return
        last, self._last_block = self._last_block, grab.block_id
        if last is None or grab.block_id <= last:  # first frame, restart or 16-bit wrap
            return
        self.lost += max(0, grab.block_id - last - 1 - grab.skipped)

    def _frame(self, grab: Grab) -> SourceFrame:
        assert grab.array is not None
        try:
            image = camera_to_bgr(grab.array, grab.pixel_format)
        except DataError as exc:
            raise SkipFrame(str(exc).splitlines()[0]) from exc
        meta = {
            "device_timestamp": int(grab.timestamp),
            "device_frame_id": grab.block_id,
            "device_serial": self.serial,
            "pixel_format": grab.pixel_format,
        }
        return SourceFrame(image, None, meta)
