"""stpm-camera on a Basler camera through pypylon, offline: pylon's camera emulation
(``PYLON_CAMEMU=1``) in image-file mode replays the demo images; the verdicts must equal those of
the same images read from disk. The SDK-independent logic (lost frames, pixel formats) is also
tested without pypylon.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import frames_and_events

from stpm_edge.errors import ConfigError, DataError
from stpm_edge.runtime import AnomalyDetector
from stpm_edge.runtime.camera import InspectionLoop, LoopOptions, main, open_source
from stpm_edge.runtime.camera.genicam import GenICamSource, Grab, parse_camera_url
from stpm_edge.runtime.camera.sources import NoFrame
from stpm_edge.runtime.image import bits_to_uint8, camera_to_bgr, decode_bgr, to_uint8

HAVE_PYPYLON = importlib.util.find_spec("pypylon") is not None
needs_pypylon = pytest.mark.skipif(
    not HAVE_PYPYLON, reason="pypylon is not installed (pip install 'stpm-edge[pylon]')"
)
SERIAL = "0815-0000"  # pylon's first emulated camera


def _stpm_camera(model: Path, source: str, log: Path, *bounds: str) -> subprocess.CompletedProcess:
    """stpm-camera in a fresh process: PYLON_CAMEMU must be set before pypylon loads."""
    env = dict(os.environ, PYLON_CAMEMU="1")
    argv = ["--model", str(model), "--source", source, "--log", str(log)]
    argv += [*bounds, "--stats-every", "0", "--threads", "1"]
    code = "import sys; from stpm_edge.runtime.camera import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def parts(demo_data, tmp_path_factory) -> list[Path]:
    """The demo test images (good and defective), renamed so name order is a known order."""
    folder = tmp_path_factory.mktemp("camemu")
    paths = []
    for i, src in enumerate(demo_data.test_images()):
        dst = folder / f"{i:02d}.png"
        dst.write_bytes(src.read_bytes())
        paths.append(dst)
    return paths


@needs_pypylon
def test_emulated_camera_verdicts_equal_disk_verdicts(exported_onnx, parts, tmp_path) -> None:
    folder, n = parts[0].parent, len(parts)
    spec = (
        f"pylon://{SERIAL}?image_files={folder}&width=64&height=64"
        "&pixel_format=BGR8&trigger=software&strategy=all"
    )
    log = tmp_path / "pylon.jsonl"
    done = _stpm_camera(exported_onnx, spec, log, "--max-frames", str(2 * n))
    assert done.returncode == 0, done.stderr
    frames, events = frames_and_events(log)
    with AnomalyDetector(exported_onnx, threads=1) as det:
        disk = det.predict([decode_bgr(p) for p in parts])
    assert len(frames) == 2 * n  # every file twice: the emulator cycles through the folder
    assert [f["device_frame_id"] for f in frames] == list(range(2 * n))
    verdicts = {p.verdict for p in disk}
    assert verdicts == {"OK", "NG"}, "the demo images must exercise both verdicts"
    for f in frames:
        expected = disk[f["device_frame_id"] % n]
        assert f["verdict"] == expected.verdict
        assert f["score"] == pytest.approx(expected.score, rel=1e-6, abs=1e-6)
        assert f["device_serial"] == SERIAL and f["pixel_format"] == "BGR8Packed"
        assert isinstance(f["device_timestamp"], int)
    stop = events[-1]
    assert stop["event"] == "stop" and stop["source_lost"] == 0 and stop["frames"] == 2 * n


@needs_pypylon
def test_emulated_mono12_free_run(exported_onnx, parts, tmp_path) -> None:
    """Mono12 buffers (12-bit samples in uint16) go through the one 8-bit rule; the emulator
    widens a gray file pixel v to the 12-bit sample 16 * v."""
    folder = tmp_path / "gray"
    folder.mkdir()
    grays = []
    for i, path in enumerate(parts):
        gray = cv2.cvtColor(decode_bgr(path), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(folder / f"{i:02d}.png"), gray)
        grays.append(gray)
    spec = f"pylon://?image_files={folder}&width=64&height=64&pixel_format=Mono12&frame_rate=50"
    log = tmp_path / "mono12.jsonl"
    done = _stpm_camera(exported_onnx, spec, log, "--max-frames", "20")
    assert done.returncode == 0, done.stderr
    frames, events = frames_and_events(log)
    # written out here, independent of the image module: 12-bit 16 * v, full scale to full scale
    expected_frames = [
        cv2.cvtColor(np.round(g * 16.0 * 255 / 4095).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        for g in grays
    ]
    with AnomalyDetector(exported_onnx, threads=1) as det:
        expected = det.predict(expected_frames)
    assert len(frames) == 20 and all(f["pixel_format"] == "Mono12" for f in frames)
    for f in frames:
        want = expected[f["device_frame_id"] % len(parts)]
        assert f["verdict"] == want.verdict
        assert f["score"] == pytest.approx(want.score, rel=1e-6, abs=1e-6)
    # free-run, newest frame only: frames skipped on the host are not lost frames
    ids = [f["device_frame_id"] for f in frames]
    assert ids == sorted(ids)
    assert events[-1]["source_lost"] == 0


@needs_pypylon
def test_emulated_hardware_trigger_waits_and_stops_cleanly(fake_onnx, tmp_path) -> None:
    """No pulse on Line1: no frame and no error; --duration still ends the run on time."""
    log = tmp_path / "line1.jsonl"
    start = time.monotonic()
    done = _stpm_camera(
        fake_onnx, "pylon://?trigger=line1&timeout_ms=200", log, "--duration", "1.5"
    )
    assert done.returncode == 0, done.stderr
    frames, events = frames_and_events(log)
    assert frames == [] and [e["event"] for e in events] == ["start", "stop"]
    assert events[-1]["stopped_by"] == "duration" and events[-1]["reconnects"] == 0
    assert time.monotonic() - start < 30


def test_mono12_and_colour_buffers_follow_the_one_rule() -> None:
    ramp12 = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    mono12 = camera_to_bgr(ramp12, "Mono12")
    assert mono12.shape == (64, 64, 3) and mono12.dtype == np.uint8
    assert mono12[0, 0, 0] == 0 and mono12[-1, -1, 0] == 255  # full scale to full scale
    np.testing.assert_array_equal(
        mono12[..., 0], np.round(ramp12.astype(np.int64) * 255 / 4095).astype(np.uint8)
    )
    assert (mono12[..., 0] == mono12[..., 2]).all()
    # at 16 bits the rule is exactly the one 16-bit files follow
    ramp16 = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(bits_to_uint8(ramp16, 16), to_uint8(ramp16))
    # stray bits above bit 11 saturate instead of wrapping around
    assert bits_to_uint8(np.array([8191], np.uint16), 12)[0] == 255
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB order
    assert camera_to_bgr(rgb, "RGB8")[0, 0].tolist() == [0, 0, 200]
    assert camera_to_bgr(rgb, "BGR8Packed")[0, 0].tolist() == [200, 0, 0]
    with pytest.raises(DataError, match="BayerRG8"):
        camera_to_bgr(rgb[..., 0], "BayerRG8")


class ScriptedCamera(GenICamSource):
    """An SDK double: plays back a script of grabs, records the features set."""

    scheme = "scripted"

    def __init__(self, spec: str, grabs: list[Grab | None]) -> None:
        super().__init__(spec)
        self.grabs, self.features, self.triggers = list(grabs), {}, 0

    def _connect(self) -> None:
        self.serial = "S1"

    def _has(self, feature: str) -> bool:
        return feature != "ExposureTimeAbs"

    def _set(self, feature, value) -> None:
        self.features[feature] = value

    def _choices(self, feature: str) -> tuple[str, ...]:
        return ("Mono8", "Mono12", "BGR8")

    def _execute(self, feature: str) -> None:
        self.triggers += 1

    def _start(self) -> None:
        pass

    def _grab(self, timeout_ms: int) -> Grab | None:
        return self.grabs.pop(0)

    def _disconnect(self) -> None:
        pass


def _grab(block: int, skipped: int = 0, ok: bool = True) -> Grab:
    return Grab(ok, np.full((4, 4), block * 100, np.uint16), "Mono12", 1000 + block, block, skipped)


def test_lost_frames_timestamps_and_features_without_an_sdk() -> None:
    script = [_grab(0), _grab(1), _grab(4), _grab(5, ok=False), _grab(9, skipped=2), None]
    cam = ScriptedCamera("scripted://?pixel_format=Mono12&exposure_us=500&trigger=software", script)
    cam.open()
    got = [cam.read() for _ in range(4)]
    assert [f.meta["device_frame_id"] for f in got] == [0, 1, 4, 9]
    assert [f.meta["device_timestamp"] for f in got] == [1000, 1001, 1004, 1009]
    assert got[0].meta["device_serial"] == "S1" and got[2].image[0, 0, 0] == round(400 * 255 / 4095)
    # 2, 3 never arrived; 5 arrived broken; 6-8: 3 ids of which 2 skipped on purpose -> 1 lost
    assert cam.lost == 2 + 1 + 1
    assert cam.triggers == 5  # one software trigger per grab attempt
    assert cam.features["PixelFormat"] == "Mono12" and cam.features["ExposureTime"] == 500.0
    assert cam.features["ExposureAuto"] == "Off"
    assert (cam.features["TriggerMode"], cam.features["TriggerSource"]) == ("On", "Software")
    with pytest.raises(Exception, match="no frame within"):  # free-run/software: a timeout fails
        cam.read()
    hardware = ScriptedCamera("scripted://?trigger=line1", [None, _grab(3)])
    hardware.open()
    with pytest.raises(NoFrame):  # waiting for a part is not an error: the loop reads again
        hardware.read()
    assert hardware.read().meta["device_frame_id"] == 3
    assert hardware.features["TriggerSource"] == "Line1"


class IdleLine(ScriptedCamera):
    """A hardware-triggered camera that never sees a part."""

    def __init__(self, spec: str) -> None:
        super().__init__(spec, [])
        self.closed = False

    def _grab(self, timeout_ms: int) -> Grab | None:
        time.sleep(timeout_ms / 1000)
        return None

    def _disconnect(self) -> None:
        self.closed = True


def test_idle_hardware_trigger_lets_the_loop_stop_and_close(fake_onnx) -> None:
    sources: list[IdleLine] = []

    def factory() -> IdleLine:
        sources.append(IdleLine("scripted://?trigger=line2&timeout_ms=50"))
        return sources[-1]

    with AnomalyDetector(fake_onnx, threads=1) as det:
        stats = InspectionLoop(det, factory, LoopOptions(duration=0.5, stats_every=0)).run()
    assert stats.frames == 0 and stats.stopped_by == "duration" and stats.reconnects == 0
    opened = [s for s in sources if s.serial]
    assert len(opened) == 1 and opened[0].closed  # the capture thread ended and closed it


def test_camera_url_errors_are_user_errors(capsys) -> None:
    settings = parse_camera_url("pylon://40012345?gain_db=3.5&strategy=all&timeout_ms=200")
    assert (settings.device, settings.gain_db, settings.strategy) == ("40012345", 3.5, "all")
    for bad in ("pylon://?bogus=1", "pylon://?trigger=line9", "pylon://?exposure_us=fast",
                "pylon://?pixel_format=YUV422"):  # fmt: skip
        with pytest.raises(ConfigError):
            parse_camera_url(bad)
    assert main(["--model", "m.onnx", "--source", "pylon://?bogus=1"]) == 2
    assert "unknown camera setting 'bogus'" in capsys.readouterr().err
    if HAVE_PYPYLON:
        assert type(open_source("pylon://")).__name__ == "PylonSource"
