"""stpm-camera --station: several cameras in one process (runtime/camera/station.py)."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import bright_frame, camera_process, dark_frame, log_records, sigterm

from stpm_edge.runtime.camera import SourceError, SourceFrame, main, open_source
from stpm_edge.runtime.camera.station import (
    CameraConfig,
    StationResources,
    build_station,
    parse_station,
)


def _folder(root: Path, frames: list[np.ndarray]) -> Path:
    root.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(root / f"{i:03d}.png"), frame)
    return root


def _args(**over) -> argparse.Namespace:
    base = dict(backend="ort-cpu", threads=1, batch=4, stats_every=0, duration=None,
                batch_timeout_ms=10.0, log=None, save_ng=None, model=None, realtime=False,
                on_end="stop", reconnect_delay=0.01, max_reconnects=2, max_frames=None)  # fmt: skip
    base.update(over)
    return argparse.Namespace(**base)


class FailsAfter:
    """A camera that delivers ``n`` frames, then breaks, and never opens again (cable cut)."""

    live, fps, lost = True, 0.0, 0
    opened = 0

    def __init__(self, spec: str, n: int = 3) -> None:
        self.name, self.n, self.reads = spec, n, 0

    def open(self) -> None:
        type(self).opened += 1
        if type(self).opened > 1:  # only the first connection works
            raise SourceError("cannot open source dead://cam")

    def read(self):
        if self.reads == self.n:
            raise SourceError("connection reset")
        self.reads += 1
        time.sleep(0.01)
        return SourceFrame(dark_frame(), None, {"device_frame_id": self.reads})

    def close(self) -> None:
        pass


def _run_station(cameras, args, factory=open_source):
    resources = StationResources()
    try:
        station = build_station(cameras, args, resources, factory)
        return station, station.run()
    finally:
        resources.close()


def test_three_cameras_one_fails_the_others_deliver_everything(fake_onnx, tmp_path) -> None:
    left = _folder(tmp_path / "left", [dark_frame(), bright_frame()] * 4)  # 8 frames
    right = _folder(tmp_path / "right", [bright_frame(90, 90)] + [dark_frame(90, 90)] * 5)
    log = tmp_path / "station.jsonl"
    FailsAfter.opened = 0
    cameras = [
        CameraConfig("left", str(left), str(fake_onnx), log=str(log)),
        CameraConfig(
            "right",
            str(right),
            str(fake_onnx),
            log=str(log),
            save_ng=str(tmp_path / "ng" / "right"),
        ),  # fmt: skip
        CameraConfig(
            "broken",
            "dead://cam",
            str(fake_onnx),
            log=str(log),
            reconnect_delay=0.01,
            max_reconnects=2,
        ),  # fmt: skip
    ]

    def factory(spec: str):
        return FailsAfter(spec) if spec.startswith("dead://") else open_source(spec)

    station, stats = _run_station(cameras, _args(), factory)
    records = log_records(log)  # one shared file: every line parses and names its camera
    assert all("camera" in r for r in records)
    frames = {c: [r for r in records if r.get("camera") == c and "verdict" in r] for c in stats}
    assert [f["verdict"] for f in frames["left"]] == ["OK", "NG"] * 4
    assert [Path(f["file"]).name for f in frames["left"]] == [f"{i:03d}.png" for i in range(8)]
    assert [f["verdict"] for f in frames["right"]] == ["NG"] + ["OK"] * 5
    assert [f["device_frame_id"] for f in frames["broken"]] == [1, 2, 3]
    broken_events = [r["event"] for r in records if r.get("camera") == "broken" and "event" in r]
    assert "read_failed" in broken_events and "gave_up" in broken_events
    assert (stats["left"].frames, stats["right"].frames, stats["broken"].frames) == (8, 6, 3)
    assert stats["left"].stopped_by == "end" and stats["broken"].stopped_by == "gave_up"
    assert stats["broken"].reconnects == 2 and stats["left"].reconnects == 0
    assert stats["right"].ng == 1 and len(list((tmp_path / "ng" / "right").glob("*.png"))) == 1
    stops = {r["camera"]: r for r in records if r.get("event") == "stop"}
    assert stops["left"]["frames"] == 8 and stops["broken"]["stopped_by"] == "gave_up"
    assert station.models == {"left": "model.onnx", "right": "model.onnx", "broken": "model.onnx"}


class Recorder:
    """Wraps the shared detector: records the frame shapes of every model call."""

    def __init__(self, detector) -> None:
        self.detector, self.calls = detector, []

    def predict(self, frames, *a, **k):
        if not self.calls:
            time.sleep(0.3)  # let both cameras queue frames
        self.calls.append([f.shape[:2] for f in frames])
        return self.detector.predict(frames, *a, **k)

    def __getattr__(self, name):
        return getattr(self.detector, name)


def test_cameras_sharing_a_model_are_batched_together_each_with_its_roi(
    fake_onnx, tmp_path
) -> None:
    half = np.concatenate([dark_frame(100, 80), bright_frame(100, 80)], axis=1)  # 100x160
    a = _folder(tmp_path / "a", [half] * 6)
    b = _folder(tmp_path / "b", [dark_frame(60, 60)] * 6)
    log = tmp_path / "s.jsonl"
    cameras = [
        CameraConfig("a", str(a), str(fake_onnx), roi="0,0,80,100", log=str(log)),  # dark half
        CameraConfig("b", str(b), str(fake_onnx), log=str(log)),
        CameraConfig("c", str(a), str(fake_onnx), log=str(log)),  # whole frame: NG
    ]
    resources = StationResources()
    try:
        station = build_station(cameras, _args(batch=8), resources)
        assert len(station.groups) == 1  # one model file: one runner, one batch scheduler
        recorder = Recorder(station.groups[0].detector)
        station.groups[0].detector = recorder
        stats = station.run()
    finally:
        resources.close()
    assert {c: s.frames for c, s in stats.items()} == {"a": 6, "b": 6, "c": 6}
    assert stats["a"].ng == 0 and stats["c"].ng == 6 and stats["b"].ng == 0
    mixed = [call for call in recorder.calls if len(set(call)) > 1]
    assert mixed, recorder.calls  # frames of different cameras went through one model call
    assert max(r["batch"] for r in log_records(log) if "batch" in r and "verdict" in r) > 1


def test_a_camera_whose_roi_does_not_fit_only_hurts_itself(fake_onnx, tmp_path) -> None:
    a = _folder(tmp_path / "a", [dark_frame()] * 4)
    log = tmp_path / "s.jsonl"
    cameras = [
        CameraConfig("good", str(a), str(fake_onnx), log=str(log)),
        CameraConfig("bad", str(a), str(fake_onnx), roi="0,0,500,500", log=str(log)),
    ]
    # a long batch wait: both cameras' frames land in one model call, which the bad ROI fails
    _, stats = _run_station(cameras, _args(batch=8, batch_timeout_ms=300.0))
    errors = [r for r in log_records(log) if r.get("event") == "frame_error"]
    assert stats["good"].frames == 4 and stats["bad"].frames == 0
    assert errors and {r["camera"] for r in errors} == {"bad"}


def test_a_hanging_camera_does_not_stall_the_others(fake_onnx, tmp_path) -> None:
    release = threading.Event()

    class Hangs:
        live, fps, lost, name = True, 0.0, 0, "hang://"

        def open(self) -> None:
            pass

        def read(self):
            release.wait(2.0)  # blocks the capture thread far longer than the others need
            return None

        def close(self) -> None:
            pass

    a = _folder(tmp_path / "a", [dark_frame()] * 5)
    cameras = [
        CameraConfig("a", str(a), str(fake_onnx)),
        CameraConfig("h", "hang://", str(fake_onnx)),
    ]
    done: list[float] = []

    class Clock:  # an observer: when did each of camera a's frames come out?
        def on_frame(self, camera, frame, prediction, record) -> None:
            if camera == "a":
                done.append(time.perf_counter())

        def on_event(self, camera, record) -> None:
            pass

    resources = StationResources()
    factory = lambda s: Hangs() if s == "hang://" else open_source(s)  # noqa: E731
    try:
        station = build_station(cameras, _args(duration=4.0), resources, factory)
        station.add_observer(Clock())
        start = time.perf_counter()
        stats = station.run()
    finally:
        release.set()
        resources.close()
    assert stats["a"].frames == 5 and stats["h"].frames == 0
    assert len(done) == 5 and done[-1] - start < 1.5  # while h still hung (2 s)
    assert stats["h"].stopped_by == "empty"


def test_station_file_through_the_cli(fake_onnx, tmp_path, capsys) -> None:
    a = _folder(tmp_path / "a", [dark_frame(), bright_frame()])
    b = _folder(tmp_path / "b", [bright_frame()] * 3)
    station = tmp_path / "station.yaml"
    station.write_text(f"cameras:\n  - name: left\n    source: {a}\n  - source: {b}\n")
    log = tmp_path / "cli.jsonl"
    argv = ["--station", str(station), "--model", str(fake_onnx), "--log", str(log),
            "--save-ng", str(tmp_path / "ng"), "--stats-every", "0", "--batch", "2"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    records = log_records(log)
    verdicts = {c: [r["verdict"] for r in records if r.get("camera") == c and "verdict" in r]
                for c in ("left", "cam1")}  # fmt: skip
    assert verdicts == {"left": ["OK", "NG"], "cam1": ["NG", "NG", "NG"]}
    assert len(list((tmp_path / "ng" / "cam1").glob("*.png"))) == 3  # --save-ng/<camera>
    final = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["final_stats"]
    assert final["left"]["frames"] == 2 and final["cam1"]["ng"] == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("cameras: []\n", "names []"),
        ("cameras:\n  - source: a\n    modle: x\n", "unknown keys ['modle']"),
        ("cameras:\n  - source: a\n    name: x\n  - source: b\n    name: x\n", "names ['x', 'x']"),
        ("cameras:\n  - name: x\n", "source and model are required"),
        ("camera:\n  - source: a\n", "no cameras list"),
    ],
)
def test_station_file_errors(text, message, fake_onnx, tmp_path, capsys) -> None:
    station = tmp_path / "s.yaml"
    station.write_text(text)
    assert main(["--station", str(station), "--model", str(fake_onnx)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Note:" in err


def test_station_and_source_together_is_an_error(fake_onnx, tmp_path, capsys) -> None:
    station = tmp_path / "s.yaml"
    station.write_text("cameras:\n  - source: a\n")
    assert main(["--station", str(station), "--source", "0", "--model", str(fake_onnx)]) == 2
    assert "--source and --station" in capsys.readouterr().err


def test_defaults_and_flags_fill_camera_keys() -> None:
    flags = argparse.Namespace(model="m.onnx", log="all.jsonl", save_ng="ng", realtime=True,
                               on_end="loop", reconnect_delay=1.0, max_reconnects=3,
                               max_frames=None)  # fmt: skip
    data = {
        "defaults": {"roi": "0,0,10,10"},
        "cameras": [{"source": "0"}, {"source": "1", "log": "b.jsonl", "model": "o.onnx"}],
    }
    one, two = parse_station(data, "s.yaml", flags)
    assert (one.name, one.model, one.roi, one.log, one.save_ng) == (
        "cam0",
        "m.onnx",
        "0,0,10,10",
        "all.jsonl",
        str(Path("ng") / "cam0"),
    )
    assert (two.model, two.log, two.on_end, two.realtime) == ("o.onnx", "b.jsonl", "loop", True)


def test_a_failing_observer_is_dropped_and_inspection_goes_on(fake_onnx, tmp_path, caplog) -> None:
    a = _folder(tmp_path / "a", [dark_frame(), bright_frame()] * 3)
    seen: list[str] = []

    class Broken:
        def on_frame(self, camera, frame, prediction, record) -> None:
            raise RuntimeError("page crashed")

        def on_event(self, camera, record) -> None:
            pass

    class Counts:
        def on_frame(self, camera, frame, prediction, record) -> None:
            assert prediction.verdict == record["verdict"] and frame.image.ndim == 3
            seen.append(record["verdict"])

        def on_event(self, camera, record) -> None:
            seen.append(record["event"])

    resources = StationResources()
    try:
        station = build_station([CameraConfig("a", str(a), str(fake_onnx))], _args(), resources)
        station.add_observer(Broken())
        station.add_observer(Counts())
        stats = station.run()
    finally:
        resources.close()
    assert stats["a"].frames == 6
    assert seen[0] == "start" and seen[-1] == "stop"
    assert [s for s in seen if s in ("OK", "NG")] == ["OK", "NG"] * 3
    assert (
        sum("page crashed" in r.getMessage() or r.exc_info is not None for r in caplog.records) == 1
    )


def test_sigterm_stops_every_camera_cleanly(fake_onnx, tmp_path) -> None:
    a = _folder(tmp_path / "a", [dark_frame(), bright_frame()])
    b = _folder(tmp_path / "b", [dark_frame()] * 3)
    station = tmp_path / "s.yaml"
    station.write_text(f"cameras:\n  - source: {a}\n  - source: {b}\n")
    log = tmp_path / "sig.jsonl"
    args = ["--station", str(station), "--model", str(fake_onnx), "--on-end", "loop",
            "--log", str(log)]  # fmt: skip
    with camera_process(*args) as proc:
        deadline = time.monotonic() + 30
        while not (log.exists() and len(log.read_text().splitlines()) >= 20):
            assert time.monotonic() < deadline, "no log lines"
            time.sleep(0.05)
        err = sigterm(proc)
    assert proc.returncode == 0, err
    stops = [r for r in log_records(log) if r.get("event") == "stop"]  # every line parses
    assert sorted(r["camera"] for r in stops) == ["cam0", "cam1"]
    assert {r["stopped_by"] for r in stops} == {"SIGTERM"}
