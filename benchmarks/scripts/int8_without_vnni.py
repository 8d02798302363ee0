"""Do INT8 graphs score the same on an x86 CPU without VNNI? This host against an emulated Haswell.

x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) add pairs of u8 x s8 products in int16
and saturate above 32767, which 8-bit weights reach (``stpm_edge.export.int8_weights.PAIR_SAFE_WEIGHT``).
For each checkpoint of a recipe folder this script prepares the test split's frames on this host,
runs the exported graph on them here and under QEMU's user-mode emulator with ``-cpu Haswell``
(AVX2, no VNNI: ONNX Runtime and OpenVINO pick their kernels from the emulated CPUID), and
computes everything else on this host: the largest map difference (relative to the map's peak)
and the image/pixel AUROC change from the PyTorch evaluation (``eval/metrics.json``).

Only the graph runs emulated: QEMU 7.2's AVX2 emulation mis-sorts (numpy's ``argsort`` returned
unsorted indices under it), so AUROC computed under emulation is wrong, though the graph's
outputs are not (a 7-bit graph's match this host's to the bit). Emulation is about 30x slower:
about 4 minutes per 110-image category on one core.

    python benchmarks/scripts/int8_without_vnni.py RECIPE --graph int8.onnx \\
        --pairs 0/brick 0/gear --out runs/int8_without_vnni

``--data DIR`` reads a run folder laid out as ``RECIPE/CATEGORY/{export,eval}`` with its data
under ``DIR/CATEGORY`` (``make demo``'s ``demo_out/latest`` and ``demo_out/data``); ``--pairs``
are then categories. ``--cpu`` names the emulated CPU (``qemu-x86_64 -cpu help``).

Needs ``qemu-x86_64`` (Debian: ``apt-get install qemu-user``). On a host with VNNI it measures
what a CPU without it changes. On an AVX2 host both sides saturate alike, so it checks the other
thing: that the emulator gives what the real CPU gives, to the bit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from stpm_edge.data.mvtec import MVTecCategory
from stpm_edge.errors import DataError, note
from stpm_edge.metrics import auroc
from stpm_edge.quality_parity import data_root
from stpm_edge.runtime.detector import NG_THRESHOLD

EMULATED_CPU = "Haswell"  # the default --cpu


def infer(graph: Path, frames: np.ndarray, backend: str) -> dict[str, np.ndarray]:
    """The graph's maps, raw and normalised scores on prepared frames, one frame per call, one
    thread."""
    from stpm_edge.runtime.runners import create_runner

    maps, scores, normalized = [], [], []
    with create_runner(graph, backend=backend, threads=1) as runner:
        name = next(iter(runner.input_spec()))
        for frame in frames:
            out = runner.infer({name: frame[None]})
            maps.append(out["anomaly_map"][0, 0])
            scores.append(float(out["score"][0]))
            normalized.append(float(out["score_normalized"][0]))
    return {
        "maps": np.stack(maps),
        "scores": np.asarray(scores),
        "normalized": np.asarray(normalized),
    }


def split(data: Path, category: str, graph: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, masks at the map size, prepared frames)`` of a checkpoint's test split."""
    from stpm_edge.runtime.image import decode_bgr, read_mask, resize_mask
    from stpm_edge.runtime.metadata import parse_metadata, read_model_metadata
    from stpm_edge.runtime.preprocess import prepare_batch

    info = parse_metadata(read_model_metadata(graph))
    samples = MVTecCategory(data, category).test()
    size = tuple(info.input_size)
    labels = np.asarray([s.label for s in samples])
    masks = np.stack(
        [
            resize_mask(read_mask(s.mask_path), size) if s.mask_path else np.zeros(size, bool)
            for s in samples
        ]
    )
    frames = np.concatenate([prepare_batch([decode_bgr(Path(s.path))], info) for s in samples])
    return labels, masks, frames


def infer_emulated(
    graph: Path, frames: np.ndarray, backend: str, cpu: str
) -> dict[str, np.ndarray]:
    """:func:`infer` in a child process on QEMU's emulated CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "frames.npy", Path(tmp) / "out.npz"
        np.save(source, frames)
        cmd = ["qemu-x86_64", "-cpu", cpu, sys.executable, __file__, "--child"]
        cmd += [str(graph), str(source), str(out), backend]
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        with np.load(out) as saved:
            return {k: saved[k] for k in saved.files}


def locate(args: argparse.Namespace, pair: str) -> tuple[int | None, str, Path, Path]:
    """``(seed, category, checkpoint folder, data root)`` of a ``--pairs`` entry."""
    if args.data is not None:
        return None, pair, args.recipe / pair, args.data
    seed, category = pair.split("/")
    return (
        int(seed),
        category,
        args.recipe / f"seed{seed}" / category,
        data_root(args.recipe, f"seed{seed}"),
    )


def row(args: argparse.Namespace, pair: str) -> dict:
    seed, category, folder, data = locate(args, pair)
    graph = folder / "export" / args.graph
    reference = json.loads((folder / "eval" / "metrics.json").read_text())
    labels, masks, frames = split(data, category, graph)
    host = infer(graph, frames, args.backend)
    emulated = infer_emulated(graph, frames, args.backend, args.cpu)
    peak = float(np.abs(host["maps"]).max())
    result = {
        "seed": seed,
        "category": category,
        "cpu": args.cpu,
        "bit_equal": bool(
            np.array_equal(host["maps"], emulated["maps"])
            and np.array_equal(host["scores"], emulated["scores"])
        ),
        "max_map_difference": float(np.abs(host["maps"] - emulated["maps"]).max()) / peak,
        "max_score_difference": float(
            np.max(np.abs(host["scores"] - emulated["scores"]) / np.abs(host["scores"]))
        ),
        # the deployed verdict: NG iff score_normalized >= NG_THRESHOLD (runtime.detector)
        "verdicts_differing": int(
            np.sum((host["normalized"] >= NG_THRESHOLD) != (emulated["normalized"] >= NG_THRESHOLD))
        ),
        "images": len(labels),
    }
    for where, out in (("host", host), ("emulated", emulated)):
        image, pixel = auroc(labels, out["scores"]), auroc(masks.ravel(), out["maps"].ravel())
        result[where] = {
            "image_change": image - reference["image_auroc"],
            "pixel_change": pixel - reference["pixel_auroc"],
        }
    print(json.dumps(result), flush=True)
    return result


def table(rows: list[dict], command: str, cpu: str) -> str:
    lines = [
        f"Made by `{command}`\n",
        "| seed | category | largest map difference (of peak) | largest score difference | "
        f"equal to the bit | verdicts differing | image change: host / {cpu} | "
        f"pixel change: host / {cpu} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        h, e = r["host"], r["emulated"]
        seed = "-" if r["seed"] is None else r["seed"]
        lines.append(
            f"| {seed} | {r['category']} | {r['max_map_difference']:.2%} | "
            f"{r['max_score_difference']:.2%} | {'yes' if r['bit_equal'] else 'no'} | "
            f"{r['verdicts_differing']} of {r['images']} | "
            f"{h['image_change']:+.4f} / "
            f"{e['image_change']:+.4f} | {h['pixel_change']:+.4f} / {e['pixel_change']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", type=Path, help="recipe folder (seedN/CATEGORY/export/GRAPH)")
    parser.add_argument("--graph", default="int8.onnx", help="graph file name under export/")
    parser.add_argument("--backend", default="ort-cpu", help="ort-cpu or openvino")
    parser.add_argument(
        "--pairs",
        nargs="+",
        required=True,
        help="SEED/CATEGORY (e.g. 0/brick); CATEGORY with --data",
    )
    parser.add_argument(
        "--data", type=Path, help="data root of a run folder RECIPE/CATEGORY (see the docstring)"
    )
    parser.add_argument("--cpu", default=EMULATED_CPU, help="the CPU QEMU emulates")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md/.json")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:  # under QEMU: GRAPH FRAMES.npy OUT.npz BACKEND
        graph, source, out, backend = argv[1:]
        np.savez(out, **infer(Path(graph), np.load(source), backend))
        return 0
    args = parse_args(argv)
    if shutil.which("qemu-x86_64") is None:
        raise DataError(note("qemu-x86_64 not found", "apt-get install qemu-user"))
    rows = [row(args, pair) for pair in args.pairs]
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/scripts/int8_without_vnni.py", *argv])
    (args.out / "report.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    (args.out / "report.md").write_text(table(rows, command, args.cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
