"""Does the camera's drift alarm fire on a lighting change, and stay quiet on the normal test set?

Runs ``stpm-camera`` on a category's labelled test set (repeated, so the OK window fills) and on
its good test images shifted in brightness by each ``--shifts`` value, and prints one row per run:
OK/NG counts and the first ``drift`` event. Reproduces the figures quoted in the README::

    python -m stpm_edge.benchmarks.drift_check demo_out/latest/brick/export/model_fp32.onnx \
        --data demo_out/data --category brick --out /tmp/drift
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from stpm_edge.runtime.image import list_images, read_image


def write_set(images: list[Path], out: Path, shift: int, repeats: int) -> Path:
    """``images`` with ``shift`` added to every channel (clipped), ``repeats`` times, as BGR PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(images):  # each image decoded and shifted once, written per pass
        rgb = np.clip(read_image(path).astype(np.int16) + shift, 0, 255).astype(np.uint8)
        for rep in range(repeats):
            cv2.imwrite(str(out / f"{rep:02d}_{i:04d}.png"), rgb[..., ::-1])
    return out


def run_camera(model: Path, source: Path, log: Path) -> dict:
    cmd = [sys.executable, "-m", "stpm_edge.runtime.camera", "--model", str(model)]
    subprocess.run([*cmd, "--source", str(source), "--log", str(log), "-q"], check=True)
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    frames = [r for r in rows if "frame" in r and "verdict" in r]
    drift = next((r for r in rows if r.get("event") == "drift"), None)
    return {
        "ok": sum(r["verdict"] == "OK" for r in frames),
        "ng": sum(r["verdict"] == "NG" for r in frames),
        "drift_at_frame": None if drift is None else drift.get("frame"),
        "drift_statistic": None if drift is None else drift.get("drift"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="drift_check", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--data", type=Path, required=True, help="MVTec-layout root")
    p.add_argument("--category", required=True)
    p.add_argument("--shifts", default="10,20,30,-20,-40", help="brightness shifts (grey levels)")
    p.add_argument("--repeats", type=int, default=4, help="passes over each image set")
    p.add_argument("--out", type=Path, required=True, help="scratch folder for images and logs")
    args = p.parse_args(argv)
    test = args.data / args.category / "test"
    labelled = [img for d in sorted(test.iterdir()) if d.is_dir() for img in list_images(d)]
    runs = {"normal test set": write_set(labelled, args.out / "normal", 0, args.repeats)}
    good = list_images(test / "good")
    for shift in (int(s) for s in args.shifts.split(",") if s):
        folder = args.out / f"shift{shift}"
        runs[f"good {shift:+d} grey levels"] = write_set(good, folder, shift, args.repeats)
    print("| frames | OK | NG | drift event (frame, statistic) |\n|---|---|---|---|")
    for name, folder in runs.items():
        r = run_camera(args.model, folder, folder.with_suffix(".jsonl"))
        at, stat = r["drift_at_frame"], r["drift_statistic"]
        event = "none" if at is None else f"frame {at}, {stat}"
        print(f"| {name} | {r['ok']} | {r['ng']} | {event} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
