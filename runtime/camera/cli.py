"""``stpm-camera``: the command line of the inspection loop.

Parsing, ``--config`` merging, logging and error handling are the ones every stpm command
shares (:mod:`stpm_edge.cli.args`, :func:`stpm_edge.cli.common.run_cli`): a user mistake prints
``error: ...`` with a ``Note:`` line and exits 2. A source with no readable frame, or one that
stays unreachable after ``--max-reconnects``, also exits 2 (after the final stats line).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stpm_edge.cli.args import (
    add_backend_args,
    add_batch_args,
    add_config_args,
    add_logging_args,
    add_model_args,
)
from stpm_edge.cli.common import HelpFormatter, run_cli
from stpm_edge.errors import note

from .config import check_required, loop_options
from .loop import InspectionLoop, LoopStats
from .monitor import HIGH, LOW, attach_monitoring, parse_band
from .sinks import prepare_outputs
from .sources import SourceError, open_source
from .station import Station, StationResources, build_station, load_station
from .web import attach_web

DESCRIPTION = """Inspect frames from a camera, stream, video or image folder with an exported STPM
model; log one JSON line per frame (plus "event" lines) and act on NG frames.

examples:
  stpm-camera --model brick.onnx --source 0 --log run.jsonl --save-ng ng/
  stpm-camera --model brick.onnx --source parts/ --log parts.jsonl
  stpm-camera --config station.yaml --max-frames 100
  stpm-camera --station cameras.yaml --model brick.onnx --log station.jsonl --metrics-port 9100
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stpm-camera", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    add_config_args(p)
    add_model_args(p)
    s = p.add_argument_group("source")
    s.add_argument(
        "--source",
        help="camera index (0), rtsp/http URL, video file, image folder or glob, a GStreamer "
        "pipeline ending in appsink (contains '!'), or a Basler camera: pylon://SERIAL with "
        "settings such as ?pixel_format=Mono12&trigger=line1 (pypylon; README); required",
    )
    s.add_argument(
        "--station",
        metavar="FILE.yaml",
        help="several cameras in one process: a YAML file with a `cameras:` list (each: name, "
        "source, model, roi, save_ng, log, trigger_cmd, ...); replaces --source",
    )
    s.add_argument("--roi", help="fixed crop x,y,w,h in frame pixels, applied before resizing")
    s.add_argument(
        "--realtime",
        action="store_true",
        help="treat a file/folder like a live source: pace a video at its FPS, drop frames when "
        "inference is slower (default: process every frame in order)",
    )
    s.add_argument(
        "--on-end", default="stop", choices=("stop", "loop"), help="at the end of a file/folder"
    )
    s.add_argument(
        "--reconnect-delay",
        type=float,
        default=0.5,
        help="first reconnect wait (s); doubles each try, max 30 s",
    )
    s.add_argument(
        "--max-reconnects",
        type=int,
        default=10,
        help="consecutive failed reconnects before giving up",
    )
    add_backend_args(p)
    add_batch_args(p)
    p.add_argument_group("backend").add_argument(
        "--batch-timeout-ms",
        type=float,
        default=10.0,
        help="--station: how long a batch waits for frames of other cameras after its first",
    )
    r = p.add_argument_group("run")
    r.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    r.add_argument("--duration", type=float, help="stop after this many seconds")
    r.add_argument(
        "--stats-every",
        type=float,
        default=5.0,
        help="seconds between stats lines on stderr (0 = off)",
    )
    o = p.add_argument_group("results")
    o.add_argument("--log", help="JSONL log (appended): one line per frame plus 'event' lines")
    o.add_argument("--save-ng", help="folder for NG frames (PNG) and their overlays (JPEG)")
    o.add_argument(
        "--display", action="store_true", help="show frames and NG overlays in a window (q quits)"
    )
    o.add_argument(
        "--trigger-cmd", help="command run on every NG frame (no shell; record in $STPM_EVENT)"
    )
    o.add_argument("--trigger-url", help="URL that receives an HTTP POST of each NG record (JSON)")
    m = p.add_argument_group("monitoring")
    m.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (needs prometheus-client)",
    )
    m.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics bind to")
    m.add_argument(
        "--drift-band",
        metavar="LOW,HIGH",
        help="drift alarm bounds of the OK-score median on the calibration scale (0 = score_min, "
        f"1 = threshold); default {LOW},{HIGH}",
    )
    m.add_argument(
        "--http",
        type=int,
        metavar="PORT",
        help="serve the operator's live page on http://HOST:PORT/ (frames, verdicts, NG frames "
        "to mark good/ng into SAVE_NG/../review; needs --save-ng to review)",
    )
    m.add_argument("--http-host", default="127.0.0.1", help="address the live page binds to")
    add_logging_args(p)
    return p


def _preflight(spec: str) -> None:
    """Build the source now (a typo is a user error, not a reconnect loop); a file or folder is
    also opened once, because failing to open it will not get better by retrying."""
    probe = open_source(spec)
    if not probe.live:
        probe.open()
        probe.close()


def _run_with_signals(loop: InspectionLoop | Station) -> Any:
    """Run the loop; SIGINT/SIGTERM finish the current batch, flush the log and stop."""
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: loop.stop(signal.Signals(signum).name))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        return loop.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_served(
    target: InspectionLoop | Station,
    loops: dict[str, InspectionLoop],
    models: dict[str, str],
    args: argparse.Namespace,
) -> Any:
    """Attach the drift watch, ``--metrics-port`` and ``--http`` to ``loops``, run ``target``
    (one loop or a station) with signals, and close whatever was served, error or not."""
    servers: list[Any] = []
    try:
        servers.append(
            attach_monitoring(
                loops, models, args.metrics_port, args.metrics_host, parse_band(args.drift_band)
            )
        )
        servers.append(attach_web(loops, args.http, args.http_host))
        return _run_with_signals(target)
    finally:
        for server in servers:
            if server is not None:
                server.close()


def _check_outcome(stats: LoopStats, source: str) -> None:
    if stats.stopped_by == "empty":
        raise SourceError(
            note(
                f"--source {source}: no readable frame ({stats.corrupt} corrupt)",
                "the video has zero frames or no image could be decoded; check the file",
            )
        )
    if stats.stopped_by == "gave_up":
        raise SourceError(
            note(
                f"--source {source}: gave up after {stats.reconnects} reconnects",
                "check the camera/stream; raise --max-reconnects for flaky networks",
            )
        )


def _run(args: argparse.Namespace) -> int:
    # a service's log wants wall-clock times; the shared set-up chose the level
    level = logging.getLogger().level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)  # fmt: skip
    check_required(args)
    if args.station:
        return _run_station(args)
    source = str(args.source)
    _preflight(source)
    options = loop_options(args)
    prepare_outputs(options.log, options.save_ng)
    from stpm_edge.runtime.detector import AnomalyDetector  # after parsing: --help stays instant

    with AnomalyDetector(
        args.model, backend=args.backend, threads=args.threads, roi=args.roi
    ) as det:
        loop = InspectionLoop(det, lambda: open_source(source), options)
        stats = _run_served(loop, {loop.camera: loop}, {loop.camera: Path(args.model).name}, args)
    print(json.dumps({"final_stats": stats.summary()}), file=sys.stderr)
    _check_outcome(stats, source)
    return 0


def _run_station(args: argparse.Namespace) -> int:
    """``--station``: every camera of the file in this process (see :mod:`.station`)."""
    cameras = load_station(args.station, args)
    for camera in cameras:
        _preflight(camera.source)
    resources = StationResources()
    try:
        station = build_station(cameras, args, resources)
        stats = _run_served(station, station.loops, station.models, args)
    finally:
        resources.close()
    summary = {name: s.summary() for name, s in stats.items()}
    print(json.dumps({"final_stats": summary}), file=sys.stderr)
    for camera in cameras:
        _check_outcome(stats[camera.name], f"{camera.source} (camera {camera.name})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``stpm-camera``; returns the exit code (0 ok, 2 user or source error)."""
    return run_cli(_run, build_parser(), argv)
