"""Basler cameras through pypylon (``pip install 'stpm-edge[pylon]'``): ``--source pylon://...``.

The settings, triggering, conversion and lost-frame counting are :class:`.genicam.GenICamSource`'s
(see :mod:`.genicam` for the URL keys); this module only speaks pypylon: find the device (serial,
index or first), feature access through the node map, ``StartGrabbing`` with
``GrabStrategy_LatestImageOnly`` or ``GrabStrategy_OneByOne``, ``RetrieveResult`` and the result's
``TimeStamp``, ``BlockID`` and ``GetNumberOfSkippedImages()``.

Without hardware, pylon's camera emulation speaks the same API: ``PYLON_CAMEMU=1`` (set before
pypylon is first imported) provides one emulated camera (serial ``0815-0000``); with
``image_files=FOLDER`` it replays those images in name order, cycling::

    PYLON_CAMEMU=1 stpm-camera --model m.onnx \\
        --source 'pylon://0815-0000?image_files=parts/&width=64&height=64&pixel_format=BGR8&trigger=software'
"""

from __future__ import annotations

import importlib.util
from typing import Any

from stpm_edge.errors import ConfigError, note

from .genicam import GenICamSource, Grab
from .sources import SourceError, register_source

INSTALL_HINT = "install the Basler SDK binding: pip install 'stpm-edge[pylon]' (pypylon)"


class PylonSource(GenICamSource):
    """A Basler camera (or pylon's emulation) through pypylon's ``InstantCamera``."""

    scheme = "pylon"

    def __init__(self, spec: str) -> None:
        if importlib.util.find_spec("pypylon") is None:  # a user error, not a reconnect loop
            raise ConfigError(note(f"--source {spec} needs pypylon", INSTALL_HINT))
        super().__init__(spec)
        self._camera: Any = None
        self._nodes: Any = None
        self._format = ""

    def _connect(self) -> None:
        from pypylon import genicam, pylon

        self._pylon, self._genicam = pylon, genicam
        try:
            factory = pylon.TlFactory.GetInstance()
            camera = pylon.InstantCamera(factory.CreateDevice(self._device_info(factory)))
            camera.Open()
        except genicam.GenericException as exc:
            raise SourceError(f"{self.name}: cannot open the camera: {_first_line(exc)}") from exc
        self._camera, self._nodes = camera, camera.GetNodeMap()
        self.serial = camera.GetDeviceInfo().GetSerialNumber()

    def _device_info(self, factory: Any) -> Any:
        target = self.settings.device
        devices = factory.EnumerateDevices()
        if target.isdigit() and len(target) <= 3:
            if int(target) >= len(devices):
                raise SourceError(f"{self.name}: camera index {target}, {len(devices)} found")
            return devices[int(target)]
        for device in devices:
            if not target or device.GetSerialNumber() == target:
                return device
        found = [d.GetSerialNumber() for d in devices]
        raise SourceError(f"{self.name}: no camera {target or ''} (found serials {found})")

    # -- feature access --------------------------------------------------------------------------
    def _has(self, feature: str) -> bool:
        return bool(self._genicam.IsWritable(self._nodes.GetNode(feature)))

    def _set(self, feature: str, value: Any) -> None:
        node = self._nodes.GetNode(feature)
        try:
            node.SetValue(value)
        except self._genicam.GenericException as exc:
            raise ConfigError(
                note(f"{self.name}: cannot set {feature}={value}", _first_line(exc))
            ) from exc

    def _choices(self, feature: str) -> tuple[str, ...]:
        return tuple(self._nodes.GetNode(feature).Symbolics)

    def _execute(self, feature: str) -> None:
        # a software trigger sent before the camera is ready would be lost
        self._camera.WaitForFrameTriggerReady(
            self.settings.timeout_ms, self._pylon.TimeoutHandling_ThrowException
        )
        self._nodes.GetNode(feature).Execute()

    # -- acquisition ----------------------------------------------------------------------------
    def _start(self) -> None:
        pylon = self._pylon
        strategy = (
            pylon.GrabStrategy_LatestImageOnly
            if self.settings.strategy == "latest"
            else pylon.GrabStrategy_OneByOne
        )
        self._format = str(self._nodes.GetNode("PixelFormat").GetValue())
        self._camera.StartGrabbing(strategy)

    def _grab(self, timeout_ms: int) -> Grab | None:
        try:
            result = self._camera.RetrieveResult(timeout_ms, self._pylon.TimeoutHandling_Return)
        except self._genicam.GenericException as exc:  # unplugged, network gone
            raise SourceError(f"{self.name}: grab failed: {_first_line(exc)}") from exc
        if not result.IsValid():
            if self._camera.IsCameraDeviceRemoved():
                raise SourceError(f"{self.name}: the camera was removed")
            return None
        try:
            grab = Grab(
                ok=bool(result.GrabSucceeded()),
                pixel_format=self._format,
                timestamp=int(result.TimeStamp),
                block_id=int(result.BlockID),
                skipped=int(result.GetNumberOfSkippedImages()),
            )
            if grab.ok:
                grab.array = result.GetArray()  # a copy: the buffer goes back to the camera
            else:
                grab.error = f"{result.GetErrorCode():#x} {result.GetErrorDescription()}"
            return grab
        finally:
            result.Release()

    def _disconnect(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.StopGrabbing()
            camera.Close()
        except self._genicam.GenericException:
            pass  # a removed camera cannot be closed cleanly; the next open starts afresh


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


register_source("pylon", PylonSource)
