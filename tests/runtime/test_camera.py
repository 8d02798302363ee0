"""stpm-camera: the inspection loop and its CLI (the runtime/camera/ package)."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from conftest import bright_frame, camera_process, dark_frame, frames_and_events, sigterm

from stpm_edge.runtime import AnomalyDetector
from stpm_edge.runtime.camera import (
    InspectionLoop,
    LoopOptions,
    SourceError,
    SourceFrame,
    main,
    open_source,
)


@pytest.fixture
def detector(fake_onnx):
    with AnomalyDetector(fake_onnx, threads=1) as det:
        yield det


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i, frame in enumerate([dark_frame(), bright_frame(), dark_frame(), bright_frame()]):
        cv2.imwrite(str(root / f"{i:02d}.png"), frame)
    (root / "02b.png").write_bytes(b"not a png at all")  # corrupt, sorted between 02 and 03
    return root


def _run(detector, spec, **options) -> tuple:
    opts = LoopOptions(source_name=str(spec), stats_every=0, **options)
    return InspectionLoop(detector, lambda: open_source(str(spec)), opts).run()


def test_folder_with_corrupt_image(detector, folder, tmp_path) -> None:
    log = tmp_path / "run.jsonl"
    stats = _run(detector, folder, log=str(log), save_ng=str(tmp_path / "ng"))
    frames, events = frames_and_events(log)
    assert [Path(f["file"]).name for f in frames] == ["00.png", "01.png", "02.png", "03.png"]
    assert [f["frame"] for f in frames] == [0, 1, 2, 3]
    assert [f["verdict"] for f in frames] == ["OK", "NG", "OK", "NG"]
    for f in frames:
        assert {
            "timestamp",
            "source",
            "score",
            "score_normalized",
            "latency_ms",
            "e2e_ms",
        } <= f.keys()
        assert "event" not in f
    corrupt = [e for e in events if e["event"] == "corrupt"]
    assert len(corrupt) == 1 and "02b.png" in corrupt[0]["error"]
    assert events[0]["event"] == "start" and events[-1]["event"] == "stop"
    assert stats.frames == 4 and stats.ng == 2 and stats.corrupt == 1 and stats.stopped_by == "end"
    saved = sorted(p.name for p in (tmp_path / "ng").iterdir())
    assert len(saved) == 4 and sum(n.endswith("_overlay.jpg") for n in saved) == 2
    assert frames[1]["saved"].endswith("_00000001.png") and frames[1]["regions"]


class SlowFirstCall:
    """Test double around a real detector: its first predict() waits, so that the capture thread
    queues several frames and micro-batching is exercised whatever the machine's speed."""

    def __init__(self, detector) -> None:
        self.detector, self.calls = detector, 0

    def predict(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.3)
        return self.detector.predict(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.detector, name)


def test_video_file(detector, tmp_path) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    assert writer.isOpened()
    for i in range(10):
        writer.write(bright_frame() if i % 3 == 0 else dark_frame())
    writer.release()
    log = tmp_path / "v.jsonl"
    stats = _run(SlowFirstCall(detector), video, log=str(log), batch=4)
    frames, _ = frames_and_events(log)
    assert [f["frame"] for f in frames] == list(range(10))
    assert [f["verdict"] for f in frames] == ["NG" if i % 3 == 0 else "OK" for i in range(10)]
    assert max(f["batch"] for f in frames) > 1  # micro-batching took several frames at once
    assert stats.frames == 10 and stats.drops == 0


class FlakySource:
    """Yields frames from a shared counter; the first connection fails after 3 reads."""

    live = False
    fps = 0.0
    name = "flaky"

    def __init__(self, state: dict) -> None:
        self.state = state
        self.state["connections"] += 1
        self.reads = 0

    def open(self) -> None:
        pass

    def read(self):
        if self.state["connections"] == 2 and self.reads == 3:  # connection 1 is the loop's probe
            raise SourceError("connection reset")
        if self.state["next"] >= self.state["total"]:
            return None
        self.reads += 1
        i = self.state["next"]
        self.state["next"] += 1
        return SourceFrame(
            bright_frame() if i % 2 else dark_frame(), f"f{i}", {"device_frame_id": 100 + i}
        )

    def close(self) -> None:
        pass


def test_source_fails_mid_stream_is_reconnected(detector, tmp_path) -> None:
    state = {"connections": 0, "next": 0, "total": 8}
    log = tmp_path / "flaky.jsonl"
    opts = LoopOptions(log=str(log), reconnect_delay=0.01, stats_every=0, source_name="flaky")
    stats = InspectionLoop(detector, lambda: FlakySource(state), opts).run()
    frames, events = frames_and_events(log)
    assert [f["file"] for f in frames] == [f"f{i}" for i in range(8)]
    assert [f["device_frame_id"] for f in frames] == [100 + i for i in range(8)]  # source meta
    names = [e["event"] for e in events]
    assert "read_failed" in names and names.count("reconnect") == 1
    assert stats.reconnects == 1 and stats.frames == 8 and stats.stopped_by == "end"


def test_source_never_opens_gives_up(detector, tmp_path) -> None:
    class Dead(FlakySource):
        def open(self) -> None:
            raise SourceError("cannot open source dead")

    log = tmp_path / "dead.jsonl"
    opts = LoopOptions(log=str(log), reconnect_delay=0.001, max_reconnects=2, stats_every=0)
    stats = InspectionLoop(detector, lambda: Dead({"connections": 0}), opts).run()
    _, events = frames_and_events(log)
    names = [e["event"] for e in events]
    assert names.count("open_failed") == 3 and names.count("reconnect") == 2 and "gave_up" in names
    assert stats.frames == 0


def test_loop_with_max_frames_and_triggers(detector, folder, tmp_path, monkeypatch) -> None:
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("MARK_DIR", str(marks))
    cmd = f"{sys.executable} -c \"import os, pathlib; pathlib.Path(os.environ['MARK_DIR'], os.environ['STPM_FRAME']).touch()\""
    try:
        stats = _run(
            detector,
            folder,
            on_end="loop",
            max_frames=6,
            trigger_cmd=cmd,
            trigger_url=f"http://127.0.0.1:{server.server_port}/ng",
        )
    finally:
        server.shutdown()
    assert stats.frames == 6 and stats.stopped_by == "max_frames"
    assert stats.ng == 3  # 00 OK, 01 NG, 02 OK, 03 NG, (loop) 00 OK, 01 NG
    assert sorted(p.name for p in marks.iterdir()) == ["1", "3", "5"]
    assert sorted(r["frame"] for r in received) == [1, 3, 5]


def test_cli_config_and_errors(fake_onnx, folder, tmp_path, capsys) -> None:
    log = tmp_path / "cli.jsonl"
    config = tmp_path / "cfg.yaml"
    config.write_text(f"model: {fake_onnx}\nsource: {folder}\nmax-frames: 3\nstats_every: 0\n")
    assert main(["--config", str(config), "--log", str(log), "--max-frames", "2"]) == 0
    frames, _ = frames_and_events(log)
    assert len(frames) == 2  # the flag overrides the config
    assert "final_stats" in capsys.readouterr().err
    config.write_text("modle: x\n")
    assert main(["--config", str(config)]) == 2
    assert "unknown keys ['modle']" in capsys.readouterr().err
    assert main(["--model", str(fake_onnx), "--source", str(tmp_path / "missing.avi")]) == 2
    assert "source" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "x.onnx"), "--source", str(folder)]) == 2
    assert "error: model file" in capsys.readouterr().err


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--source", "--on-end", "--max-reconnects", "--trigger-cmd", "--roi"):
        assert flag in out
    assert "(default: 0.5)" in out


def test_sigterm_stops_cleanly(fake_onnx, folder, tmp_path) -> None:
    log = tmp_path / "sig.jsonl"
    args = ["--model", str(fake_onnx), "--source", str(folder), "--on-end", "loop",
            "--log", str(log), "--stats-every", "0.2"]  # fmt: skip
    with camera_process(*args) as proc:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= 5:
                time.sleep(0.4)  # long enough for at least one periodic stats line
                break
            time.sleep(0.05)
        else:
            pytest.fail("stpm-camera wrote no log lines")
        err = sigterm(proc)
    assert proc.returncode == 0, err
    frames, events = frames_and_events(log)  # every line parses
    assert len(frames) >= 4
    assert events[-1]["event"] == "stop" and events[-1]["stopped_by"] == "SIGTERM"
    assert "final_stats" in err and "stats:" in err


def test_unwritable_log_or_ng_folder_is_a_clear_error(fake_onnx, folder, tmp_path, capsys) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the log folder should go")
    for flag in ("--log", "--save-ng"):
        target = blocker / "sub" / ("run.jsonl" if flag == "--log" else "ng")
        code = main(["--model", str(fake_onnx), "--source", str(folder), flag, str(target)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("error: ") and flag in err and "Note:" in err
        assert not blocker.is_dir()


def _header_only_video(path: Path) -> Path:
    """A valid AVI container with zero frames (OpenCV opens it, the first read fails)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    assert writer.isOpened()
    writer.release()
    return path


def test_source_without_frames_is_a_clear_error(fake_onnx, tmp_path, capsys) -> None:
    corrupt_only = tmp_path / "corrupt"
    corrupt_only.mkdir()
    (corrupt_only / "a.png").write_bytes(b"not a png")
    zero_bytes = tmp_path / "zero.avi"
    zero_bytes.write_bytes(b"")
    cases = {
        _header_only_video(tmp_path / "empty.avi"): "no readable frame",
        corrupt_only: "no readable frame (1 corrupt)",
        zero_bytes: "cannot open source",
        tmp_path: "no images in",  # a folder without images
    }
    for source, message in cases.items():
        log = tmp_path / f"{Path(source).name}.jsonl"
        code = main(["--model", str(fake_onnx), "--source", str(source), "--log", str(log)])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (source, err)
        assert "Note:" in err


def test_empty_video_in_process_stops_as_empty(detector, tmp_path) -> None:
    log = tmp_path / "empty.jsonl"
    stats = _run(
        detector,
        _header_only_video(tmp_path / "empty.avi"),
        log=str(log),
        on_end="loop",
        duration=3,
    )
    _, events = frames_and_events(log)
    assert stats.stopped_by == "empty" and stats.frames == 0
    assert [e["event"] for e in events] == ["start", "empty", "stop"]  # no endless rewinds


class SdkLikeSource:
    """What an SDK camera source (issue 11: pypylon, GenTL) looks like to the loop: a registered
    URL scheme, device timestamps/frame ids in ``meta``, and frames the device reports lost."""

    live = False  # a finite test sequence: read in order, no drops
    fps = 0.0

    def __init__(self, spec: str) -> None:
        self.name, self.lost, self._i = spec, 0, 0

    def open(self) -> None:
        pass

    def read(self):
        if self._i == 3:
            self.lost = 2  # e.g. the camera's own counter skipped two frame ids
            return None
        self._i += 1
        meta = {"device_frame_id": 10 + self._i, "device_timestamp": 1000 * self._i}
        return SourceFrame(bright_frame() if self._i == 2 else dark_frame(), None, meta)

    def close(self) -> None:
        pass


def test_registered_scheme_source_through_the_cli(fake_onnx, tmp_path, monkeypatch) -> None:
    from stpm_edge.runtime.camera import sources

    monkeypatch.setitem(sources._SCHEMES, "fakecam", SdkLikeSource)
    log = tmp_path / "sdk.jsonl"
    argv = ["--model", str(fake_onnx), "--source", "fakecam://serial-123", "--log", str(log)]
    assert main(argv + ["--stats-every", "0"]) == 0
    frames, events = frames_and_events(log)
    assert [f["device_frame_id"] for f in frames] == [11, 12, 13]
    assert [f["verdict"] for f in frames] == ["OK", "NG", "OK"]
    assert frames[0]["source"] == "fakecam://serial-123" and "file" not in frames[0]
    assert events[-1]["event"] == "stop" and events[-1]["source_lost"] == 2
