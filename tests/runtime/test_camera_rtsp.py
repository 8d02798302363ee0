"""stpm-camera against a real RTSP server (GStreamer's gst-rtsp-server on 127.0.0.1, a separate
process under the system Python: tests/runtime/rtsp_server.py): the server is killed mid-stream
and restarted; the loop must reconnect with backoff and log every frame as complete JSON.

Needs Debian's python3-gi, gir1.2-gst-rtsp-server-1.0 and the GStreamer good/bad/ugly/libav
plugins (.ci/run installs them); skips with the reason where they are missing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from stpm_edge.runtime.image import synthetic_frames

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server.py")
ELEMENTS = ("avidemux", "jpegdec", "videoconvert", "x264enc", "rtph264pay")
FPS = 15


def _missing_gstreamer() -> str | None:
    """Why the RTSP server cannot run here, or None."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        f"print([e for e in {ELEMENTS!r} if Gst.ElementFactory.find(e) is None])"
    )
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return "python3-gi / gir1.2-gst-rtsp-server-1.0 missing: " + done.stderr.strip()[-200:]
    if done.stdout.strip() != "[]":
        return f"GStreamer elements missing (plugins good/ugly/libav): {done.stdout.strip()}"
    return None


@pytest.fixture(scope="module")
def gstreamer() -> None:
    reason = _missing_gstreamer()
    if reason:
        print(f"SKIP rtsp test: {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_video(path: Path, seconds: int = 20) -> None:
    """MJPEG AVI: blocks of 5 dark frames (OK for the test-double model) and 5 bright ones (NG)."""
    frames = synthetic_frames(FPS * seconds, 96, 128, seed=3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (128, 96))
    for i, frame in enumerate(frames):
        dark = (i // 5) % 2 == 0
        writer.write(frame // 4 if dark else np.uint8(200) + frame // 8)
    writer.release()


class Server:
    """The RTSP server process (system Python); ``start`` waits for its READY line."""

    def __init__(self, port: int, video: Path) -> None:
        self.url = f"rtsp://127.0.0.1:{port}/stream"
        self.argv = [SYSTEM_PYTHON, str(SERVER), "--port", str(port), "--video", str(video)]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> None:
        pipe = subprocess.PIPE
        self.proc = subprocess.Popen(self.argv, stdout=pipe, stderr=pipe, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("READY"):
            self.kill()
            pytest.fail(f"RTSP server did not start: {self.proc.stderr.read()[-500:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: the stream just stops, as when a camera loses power
            self.proc.wait(10)


def _lines(log: Path) -> list[str]:
    if not log.exists():
        return []
    text = log.read_text()
    return text.splitlines()[: text.count("\n")]  # complete lines only while it is written


def _wait(what: str, test: Callable[[list[dict]], bool], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test([json.loads(line) for line in _lines(log)]):
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; log tail: {_lines(log)[-5:]}")


def _frames(records: list[dict]) -> int:
    return sum("frame" in r for r in records)


def test_rtsp_server_killed_and_restarted(gstreamer, fake_onnx, tmp_path) -> None:
    started = time.monotonic()
    video = tmp_path / "clip.avi"
    _make_video(video)
    server = Server(_free_port(), video)
    log = tmp_path / "rtsp.jsonl"
    argv = ["--model", str(fake_onnx), "--source", server.url, "--log", str(log)]
    argv += ["--reconnect-delay", "0.4", "--max-reconnects", "30", "--stats-every", "0"]
    argv += ["--duration", "50", "--threads", "1"]
    code = "import sys; from stpm_edge.runtime.camera import main; sys.exit(main(sys.argv[1:]))"
    camera = None
    try:
        server.start()
        camera = subprocess.Popen(
            [sys.executable, "-c", code, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        _wait("12 frames", lambda r: _frames(r) >= 12, log, 25)
        server.kill()
        # down long enough for at least two failed attempts: the backoff must grow
        _wait(
            "a second reconnect attempt",
            lambda r: any(x.get("event") == "reconnect" and x["attempt"] >= 3 for x in r),
            log,
            15,
        )
        before = _frames([json.loads(line) for line in _lines(log)])
        server.start()
        _wait("12 frames after the restart", lambda r: _frames(r) >= before + 12, log, 25)
        camera.send_signal(signal.SIGTERM)
        out, err = camera.communicate(timeout=15)
    finally:
        server.kill()
        if camera is not None and camera.poll() is None:
            camera.kill()
    assert camera.returncode == 0, err[-2000:]
    text = log.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]  # every line complete JSON
    frames = [r for r in records if "frame" in r]
    events = [r for r in records if "event" in r]
    assert len(frames) + len(events) == len(records)
    # no frame line lost or broken: ids increase, and every id missing below the last one was
    # dropped on purpose (a live source keeps only the newest frames) and counted as a drop
    ids = [f["frame"] for f in frames]
    assert ids == sorted(set(ids))
    assert ids[-1] + 1 - len(ids) <= events[-1]["drops"]
    names = [e["event"] for e in events]
    assert names[0] == "start" and names[-1] == "stop"
    first_fail = next(i for i, r in enumerate(records) if r.get("event") == "read_failed")
    last_reconnect = max(i for i, r in enumerate(records) if r.get("event") == "reconnect")
    head = [r for r in records[:first_fail] if "frame" in r]
    tail = [r for r in records[last_reconnect:] if "frame" in r]
    assert len(head) >= 12 and len(tail) >= 12
    for part in (head, tail):  # real pictures on both sides: both verdicts of the test double
        assert {f["verdict"] for f in part} == {"OK", "NG"}
    delays = [e["delay_s"] for e in events if e["event"] == "reconnect"]
    assert len(delays) >= 3 and delays[:3] == [0.4, 0.8, 1.6]  # exponential backoff
    stop = events[-1]
    assert stop["reconnects"] == len(delays) and stop["stopped_by"] == "SIGTERM"
    assert stop["frames"] == len(frames)
    final = json.loads(err.strip().splitlines()[-1])["final_stats"]
    assert final["reconnects"] == len(delays)
    took = time.monotonic() - started
    print(f"rtsp test: {len(frames)} frames, {len(delays)} reconnects, {took:.1f} s")
    assert took < 60
