"""Does one failing camera slow the others down? FPS per camera alone vs in a station.

Cameras are synthetic live sources paced at ``--fps`` (a clock schedule, like a free-running
camera), so the figure is about stalls, not CPU saturation. The failing camera delivers frames,
then corrupt frames, then its connection drops and every reconnect blocks ``--open-timeout`` s
before failing (a TCP connect timeout), for the rest of the run.

    .venv/bin/python benchmarks/station_fps.py --seconds 15 --fps 15

Prints one JSON object: per good camera the FPS alone and in the station, and the change in %.
``--model`` defaults to the runtime tests' tiny stpm-contract test double (built on the fly).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from stpm_edge.runtime.camera import SkipFrame, SourceError, SourceFrame, register_source
from stpm_edge.runtime.camera.station import CameraConfig, StationResources, build_station

REPO = Path(__file__).resolve().parents[1]


class PacedSource:
    """``paced://NAME?fps=15[&fail_after=N&open_timeout=S]``: a live camera on a fixed clock."""

    live, lost = True, 0
    connections: dict[str, int] = {}

    def __init__(self, spec: str) -> None:
        url = urlsplit(spec)
        query = {k: float(v[0]) for k, v in parse_qs(url.query).items()}
        self.name, self.fps = spec, query.get("fps", 15.0)
        self.fail_after = int(query.get("fail_after", 0))
        self.open_timeout = query.get("open_timeout", 1.0)
        self._rng = np.random.default_rng(0)
        self._next, self._count = 0.0, 0

    def open(self) -> None:
        n = self.connections[self.name] = self.connections.get(self.name, 0) + 1
        if self.fail_after and n > 1:  # the camera is gone: each connect attempt times out
            time.sleep(self.open_timeout)
            raise SourceError(f"connect to {self.name} timed out")
        self._next = time.perf_counter()

    def read(self) -> SourceFrame:
        self._next += 1.0 / self.fps
        time.sleep(max(0.0, self._next - time.perf_counter()))
        self._count += 1
        if self.fail_after and self._count > self.fail_after + 10:
            raise SourceError(f"{self.name}: connection reset")
        if self.fail_after and self._count > self.fail_after:
            raise SkipFrame(f"{self.name}: corrupt frame")
        return SourceFrame(self._rng.integers(10, 40, (240, 320, 3), dtype=np.uint8))

    def close(self) -> None:
        pass


def _model(path: str | None, tmp: Path) -> str:
    if path:
        return path
    sys.path.insert(0, str(REPO / "tests" / "runtime"))
    from conftest import make_fake_stpm_onnx  # the runtime tests' contract double

    return str(make_fake_stpm_onnx(tmp / "model.onnx", size=64))


def _run(cameras: list[CameraConfig], args: argparse.Namespace) -> dict[str, dict]:
    ns = argparse.Namespace(
        backend=args.backend, threads=args.threads, batch=args.batch, stats_every=0,
        duration=args.seconds, batch_timeout_ms=args.batch_timeout_ms,
    )  # fmt: skip
    resources = StationResources()
    try:
        stats = build_station(cameras, ns, resources).run()
    finally:
        resources.close()
    return {
        name: {"fps": round(s.fps, 2), "frames": s.frames, "drops": s.drops,
               "corrupt": s.corrupt, "reconnects": s.reconnects,
               "e2e_p50_ms": round(s.e2e_p50_ms, 2), "e2e_p99_ms": round(s.e2e_p99_ms, 2)}
        for name, s in stats.items()
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="exported model.onnx (default: the tests' tiny test double)")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate of every camera")
    p.add_argument("--fail-after", type=int, default=30, help="good frames of the failing camera")
    p.add_argument("--open-timeout", type=float, default=1.0, help="failing reconnects block (s)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batch-timeout-ms", type=float, default=10.0)
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    register_source("paced", PacedSource)
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(args.model, Path(tmp))
        good = {n: f"paced://{n}?fps={args.fps}" for n in ("left", "right")}
        bad = f"paced://broken?fps={args.fps}&fail_after={args.fail_after}"
        bad += f"&open_timeout={args.open_timeout}"
        alone = {n: _run([CameraConfig(n, s, model)], args)[n] for n, s in good.items()}
        cams = [CameraConfig(n, s, model) for n, s in good.items()]
        cams.append(CameraConfig("broken", bad, model, reconnect_delay=0.2, max_reconnects=1000))
        station = _run(cams, args)
    change = {n: round(100.0 * (station[n]["fps"] / alone[n]["fps"] - 1.0), 2) for n in good}
    print(json.dumps({"alone": alone, "station": station, "fps_change_pct": change,
                      "settings": vars(args)}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
